//! Start-up and shutdown of the server, shared with the one-shot runner.

use crate::config::{Config, Environment};
use crate::data::gen::{gen_data_with, GenOptions};
use crate::data::source::DataSource;
use crate::engine::{Engine, UNIVERSE_TABLE};
use crate::http::{self, AppState};
use crate::plugins;
use crate::registry::TagRegistry;
use crate::scheduler::Scheduler;
use crate::store::{self, Store};
use anyhow::Context;
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, RwLock};

/// The parts every entry point needs: store, tags and engine.
pub struct Core {
    /// The store.
    pub store: Arc<dyn Store>,
    /// The loaded tags.
    pub registry: Arc<RwLock<TagRegistry>>,
    /// The engine.
    pub engine: Arc<Engine>,
}

impl Core {
    /// Opens the store, loads the plugins (logging each file's outcome) and
    /// seeds each tag's rule from its plugin's default.
    pub fn open(config: &Config) -> anyhow::Result<Core> {
        let store: Arc<dyn Store> =
            Arc::from(store::open(&config.store_url()).context("opening the store")?);
        let dir = config.plugins_dir();
        let (registry, report) = plugins::load_dir(&dir).context("loading plugins")?;
        for (file, plugin) in report.loaded() {
            tracing::info!(file = %file.path.display(), sha256 = %file.sha256, plugin = %plugin.name, version = %plugin.version,
                tags = ?plugin.tags.iter().map(|t| t.tag_id).collect::<Vec<_>>(), "plugin loaded");
        }
        for (file, reason) in report.rejected() {
            tracing::warn!(file = %file.path.display(), reason = %reason, "plugin rejected");
        }
        if registry.is_empty() {
            tracing::warn!(dir = %dir.display(), "no tags loaded: every trigger will be refused");
        }
        for tag in registry.iter() {
            store
                .seed_rule(tag.info.tag_id, &tag.info.default_rule)
                .context("seeding rules")?;
        }
        let registry = Arc::new(RwLock::new(registry));
        let data = DataSource::open(&config.data_dir, &config.s3_cache_dir())
            .context("opening the data location")?;
        let engine = Arc::new(Engine::new(
            Arc::clone(&store),
            Arc::clone(&registry),
            data,
            config.batch_rows as usize,
        ));
        Ok(Core {
            store,
            registry,
            engine,
        })
    }
}

/// With `--env local`, writes a default sample dataset when the data
/// directory has no universe table yet, so a fresh checkout just runs.
pub fn prepare_local_data(config: &Config) -> anyhow::Result<()> {
    let Some(dir) = config.data_dir.local() else {
        return Ok(());
    };
    if config.env != Environment::Local || has_table(dir, UNIVERSE_TABLE) {
        return Ok(());
    }
    let options = GenOptions {
        users: 100_000,
        reference_date: tag_plugin_api::Date::today_utc().days(),
        ..GenOptions::default()
    };
    tracing::info!(dir = %dir.display(), users = options.users, "no source data: generating a sample dataset");
    let summary = gen_data_with(dir, &options).context("generating sample data")?;
    tracing::info!(
        elapsed_ms = summary.elapsed.as_millis() as u64,
        "sample data written"
    );
    Ok(())
}

fn has_table(dir: &Path, table: &str) -> bool {
    dir.join(format!("{table}.parquet")).is_file() || dir.join(table).is_dir()
}

/// Serves the API on `listener` until `shutdown` resolves, then stops the
/// workers (tasks not finished stay queued for the next start).
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Opening the store and re-queueing tasks block (a network store's
    // client runs its own I/O): off the async threads.
    let (config, core, scheduler) = tokio::task::spawn_blocking(move || {
        let core = Core::open(&config)?;
        let scheduler = Scheduler::start(
            Arc::clone(&core.store),
            core.engine.clone(),
            config.max_concurrent_tasks as usize,
            config.queue_capacity as usize,
            std::time::Duration::from_secs(config.task_lease_secs.into()),
        )
        .context("starting the workers")?;
        Ok::<_, anyhow::Error>((config, core, scheduler))
    })
    .await
    .context("starting up")??;
    let state = AppState {
        environment: config.env.as_str().to_string(),
        store: Arc::clone(&core.store),
        scheduler: scheduler.clone(),
        registry: Arc::clone(&core.registry),
        max_user_ids: config.max_user_ids,
    };
    let addr = listener
        .local_addr()
        .context("reading the listener's address")?;
    tracing::info!(%addr, environment = config.env.as_str(), workers = config.max_concurrent_tasks, "tag-server listening");
    axum::serve(listener, http::router(state))
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving HTTP")?;
    tracing::info!("shutting down: waiting for running tasks to reach a safe point");
    tokio::task::spawn_blocking(move || scheduler.shutdown())
        .await
        .context("stopping the workers")?;
    Ok(())
}
