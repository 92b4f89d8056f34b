//! Start-up and shutdown of the server, shared with the one-shot runner.

use crate::catalog::Catalog;
use crate::config::{Config, Environment};
use crate::console;
use crate::data::gen::{gen_data_with, GenOptions};
use crate::data::source::DataSource;
use crate::engine::{Engine, UNIVERSE_TABLE};
use crate::http::{self, AppState};
use crate::store::{self, Store};
use crate::tasks::Scheduler;
use anyhow::Context;
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, RwLock};
use tag_plugin_loader::TagRegistry;

/// The parts every entry point needs: store, plugins and engine.
pub struct Core {
    /// The store.
    pub store: Arc<dyn Store>,
    /// The plugins (and their reloads).
    pub catalog: Arc<Catalog>,
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
        let catalog = Arc::new(Catalog::open(
            config.plugins_dir(),
            config.plugin_copies_dir(),
            store.as_ref(),
        )?);
        let registry = catalog.registry();
        let data = DataSource::open(&config.data_dir, &config.s3_cache_dir())
            .context("opening the data location")?;
        let stale = crate::engine::spill::remove_stale(&config.spill_dir());
        if stale > 0 {
            tracing::info!(runs = stale, dir = %config.spill_dir().display(),
                "removed the spill files of runs whose process was killed");
        }
        let engine = Engine::new(
            Arc::clone(&store),
            Arc::clone(&registry),
            data,
            config.batch_rows as usize,
        )
        .with_memory(config.memory_limit().bytes(), config.spill_dir())
        .with_partition_users(config.partition_users);
        let engine = match config.executor {
            crate::config::Executor::Local => engine,
            crate::config::Executor::Spark => engine.with_spark(spark_executor(config)),
        };
        let engine = Arc::new(engine);
        Ok(Core {
            store,
            catalog,
            registry,
            engine,
        })
    }
}

/// What runs with `--executor spark` submit: the `[spark]` settings, the
/// plugins and tables as the executors reach them (by default where
/// tag-server has them, local paths made absolute), staged under the
/// spill directory unless the settings say where.
fn spark_executor(config: &Config) -> crate::engine::spark::SparkExecutor {
    let absolute = |p: std::path::PathBuf| std::fs::canonicalize(&p).unwrap_or(p);
    let data_dir = config
        .spark
        .data_dir
        .clone()
        .unwrap_or_else(|| match &config.data_dir {
            crate::data::source::DataLocation::Local(dir) => {
                absolute(dir.clone()).display().to_string()
            }
            s3 => crate::spark::settings::executor_data_dir(&s3.to_string()),
        });
    let executor = crate::engine::spark::SparkExecutor {
        settings: config.spark.clone(),
        host_plugins: absolute(config.plugins_dir()),
        data_dir,
        staging_root: config.spill_dir().join("spark"),
    };
    let staging = config
        .spark
        .staging_dir
        .clone()
        .unwrap_or_else(|| executor.staging_root.clone());
    let stale = crate::engine::spill::remove_stale(&staging);
    if stale > 0 {
        tracing::info!(runs = stale, dir = %staging.display(),
            "removed the Spark staging of runs whose process was killed");
    }
    if let Err(e) = executor.settings.launch() {
        tracing::warn!(error = %e, "runs with --executor spark will fail until this is fixed");
    }
    tracing::info!(master = executor.settings.master(), data = %executor.data_dir,
        "runs are evaluated in Spark (--executor spark)");
    executor
}

/// Writes a sample dataset (100,000 users) where the user asked for one:
/// into the default data directory with `--env local`, or into any local
/// `--data-dir` with `--sample-data`, when it has no universe table yet,
/// so a fresh checkout just runs. A data directory the user named is never
/// filled unasked: one that does not exist is an error naming the setting
/// and the path, and one without tables is served with a warning.
pub fn prepare_local_data(config: &Config) -> anyhow::Result<()> {
    let Some(dir) = config.data_dir.local() else {
        return Ok(());
    };
    if has_table(dir, UNIVERSE_TABLE) {
        return Ok(());
    }
    let by_default = config.env == Environment::Local && !config.data_dir_given();
    if !config.sample_data && !by_default {
        require_data_dir(config)?;
        tracing::warn!(dir = %dir.display(), "{} has no {UNIVERSE_TABLE} table ({UNIVERSE_TABLE}.parquet or {UNIVERSE_TABLE}/): runs fail until it is there (--sample-data writes a sample dataset into it)", config.origins.of("data_dir"));
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

/// Fails, naming the setting and the path, when the local data directory
/// does not exist (a mistyped `--data-dir`).
pub fn require_data_dir(config: &Config) -> anyhow::Result<()> {
    match config.data_dir.local() {
        Some(dir) if !dir.is_dir() => {
            let origin = config.origins.of("data_dir");
            anyhow::bail!(
                "{origin} is {}, which does not exist: {} to the directory that holds your source tables ({UNIVERSE_TABLE}.parquet or {UNIVERSE_TABLE}/ and the others), or add --sample-data to create it with a sample dataset",
                dir.display(),
                origin.how_to_set()
            )
        }
        _ => Ok(()),
    }
}

fn has_table(dir: &Path, table: &str) -> bool {
    dir.join(format!("{table}.parquet")).is_file() || dir.join(table).is_dir()
}

/// The parts a serving process runs on.
struct Started {
    core: Core,
    scheduler: Scheduler,
    /// With `--watch-plugins`: the directory watch (dropped, it stops).
    _watch: Option<notify::RecommendedWatcher>,
    /// Dropped, it stops the retention thread.
    _retention: Option<std::sync::mpsc::Sender<()>>,
}

/// Opens the store and plugins and starts the workers (blocking: a network
/// store's client runs its own I/O).
fn start(config: &Config) -> anyhow::Result<Started> {
    let core = Core::open(config)?;
    let scheduler = Scheduler::start(
        Arc::clone(&core.store),
        core.engine.clone(),
        config.max_concurrent_tasks as usize,
        config.queue_capacity as usize,
        std::time::Duration::from_secs(config.task_lease_secs.into()),
    )
    .context("starting the workers")?;
    let watch = if config.watch_plugins {
        Some(watch_plugins(&core).context("watching the plugins directory")?)
    } else {
        None
    };
    let retention = purge_old(
        &core,
        config.task_retention_days,
        config.change_retention_days,
    )?;
    Ok(Started {
        core,
        scheduler,
        _watch: watch,
        _retention: retention,
    })
}

/// Deletes finished tasks older than `task_days` and change feeds older
/// than `change_days` (0: kept forever) now (before serving) and every hour
/// after, on a thread that ends when the returned sender is dropped.
fn purge_old(
    core: &Core,
    task_days: u32,
    change_days: u32,
) -> anyhow::Result<Option<std::sync::mpsc::Sender<()>>> {
    if task_days == 0 && change_days == 0 {
        return Ok(None);
    }
    let store = Arc::clone(&core.store);
    let before = |days: u32| {
        (chrono::Utc::now() - chrono::Duration::days(days.into()))
            .format("%Y-%m-%dT%H:%M:%S")
            .to_string()
    };
    let purge = move || {
        if task_days > 0 {
            let before = before(task_days);
            match store.purge_finished(&before) {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(tasks = n, before = %before, "finished tasks past retention deleted")
                }
                Err(e) => tracing::warn!(error = %e, "cannot delete old tasks"),
            }
        }
        if change_days > 0 {
            let before = before(change_days);
            match store.purge_changes(&before) {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(changes = n, before = %before, "change feeds past retention deleted")
                }
                Err(e) => tracing::warn!(error = %e, "cannot delete old change feeds"),
            }
        }
    };
    purge();
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("task-retention".into())
        .spawn(move || {
            let hour = std::time::Duration::from_secs(3600);
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(hour) {
                purge();
            }
        })
        .context("starting the retention thread")?;
    Ok(Some(stop))
}

/// Reloads the plugins after changes in their directory settle (half a
/// second without another event), on a thread of its own.
fn watch_plugins(core: &Core) -> anyhow::Result<notify::RecommendedWatcher> {
    use notify::Watcher;
    let (changed, changes) = std::sync::mpsc::channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
            let _ = changed.send(());
        }
    })?;
    watcher.watch(core.catalog.dir(), notify::RecursiveMode::NonRecursive)?;
    let (catalog, store) = (Arc::clone(&core.catalog), Arc::clone(&core.store));
    std::thread::Builder::new()
        .name("plugin-watch".into())
        .spawn(move || {
            let settle = std::time::Duration::from_millis(500);
            // Ends when the watcher (and with it the sender) is dropped.
            while changes.recv().is_ok() {
                while changes.recv_timeout(settle).is_ok() {}
                match catalog.reload(store.as_ref()) {
                    Ok(report) => tracing::info!(
                        loaded = report.loaded().count(),
                        rejected = report.rejected().count(),
                        "plugins reloaded: the directory changed"
                    ),
                    Err(e) => tracing::error!(error = %format!("{e:#}"), "plugin reload after a change failed; the previous plugins stay"),
                }
            }
        })?;
    tracing::info!(dir = %core.catalog.dir().display(), "watching the plugins directory");
    Ok(watcher)
}

/// Whether start-up failed only because the store cannot be reached now.
fn store_unreachable(error: &anyhow::Error) -> Option<String> {
    error
        .chain()
        .find_map(|cause| match cause.downcast_ref::<store::StoreError>() {
            Some(store::StoreError::Unreachable(message)) => Some(message.clone()),
            _ => None,
        })
}

/// What a started process serves: the API and, beside it, the console,
/// both behind the API's edge (request ids, authentication, limits).
fn api(config: &Config, started: &Started) -> axum::Router {
    let state = AppState::new(http::AppParts {
        environment: config.env.as_str().to_string(),
        store: Arc::clone(&started.core.store),
        scheduler: started.scheduler.clone(),
        registry: Arc::clone(&started.core.registry),
        catalog: Arc::clone(&started.core.catalog),
        tokens: Arc::new(config.tokens.clone()),
        throttle: Arc::new(crate::throttle::Throttle::new(config.auth_failure_burst)),
        max_user_ids: config.max_user_ids,
        max_body_bytes: config.max_body_bytes as usize,
        request_timeout: std::time::Duration::from_secs(config.request_timeout_secs.into()),
        sessions: http::sessions::Settings {
            lifetime_secs: config.console_session_secs.into(),
            secure: config.secure_cookies,
        },
        live: Arc::new(crate::members::live::Live::new()),
    });
    let routes = http::routes(&state).merge(console::router(state.clone()));
    http::serve(routes, state)
}

/// What the serving process shares with the store retry thread.
struct Serving {
    app: http::swap::SwapRouter,
    started: Arc<std::sync::Mutex<Option<Started>>>,
    stopping: Arc<std::sync::atomic::AtomicBool>,
}

/// Serves the API on `listener` until `shutdown` resolves, then stops the
/// workers (tasks not finished stay queued for the next start).
///
/// A store that cannot be reached at start does not stop the process at
/// once: it serves `/health` (503, naming the store) and answers every
/// other request 503 while it retries for up to `--store-wait-secs`, then
/// serves the API once the store answers, or stops with an error saying
/// that the store never answered.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let first = {
        let config = Arc::clone(&config);
        tokio::task::spawn_blocking(move || start(&config))
            .await
            .context("starting up")?
    };
    let serving = Serving {
        app: http::swap::SwapRouter::default(),
        started: Arc::new(std::sync::Mutex::new(None::<Started>)),
        stopping: Arc::new(std::sync::atomic::AtomicBool::new(false)),
    };
    let (gave_up, given_up) = tokio::sync::oneshot::channel::<String>();
    match first {
        Ok(parts) => {
            serving.app.set(api(&config, &parts));
            *serving.started.lock().unwrap_or_else(|p| p.into_inner()) = Some(parts);
        }
        Err(e) => wait_for_store(&config, &serving, e, gave_up)?,
    }
    reload_on_hangup(Arc::clone(&serving.started));
    announce(&config, &listener)?;
    let failure = Arc::new(std::sync::Mutex::new(None::<String>));
    let stop = {
        let failure = Arc::clone(&failure);
        async move {
            tokio::select! {
                () = shutdown => {}
                Ok(reason) = given_up => {
                    *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
                }
            }
        }
    };
    let app = serving
        .app
        .router()
        .into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
        .context("serving HTTP")?;
    serving
        .stopping
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let parts = serving
        .started
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    if let Some(parts) = parts {
        tracing::info!("shutting down: waiting for running tasks to reach a safe point");
        tokio::task::spawn_blocking(move || parts.scheduler.shutdown())
            .await
            .context("stopping the workers")?;
    }
    let failure = failure.lock().unwrap_or_else(|p| p.into_inner()).take();
    match failure {
        Some(reason) => Err(anyhow::anyhow!(reason)),
        None => Ok(()),
    }
}

/// Logs where the server listens, and the console's address.
fn announce(config: &Config, listener: &tokio::net::TcpListener) -> anyhow::Result<()> {
    if !config.tokens.enabled() {
        tracing::warn!("no API tokens configured: the API is open to anyone who can reach the port (set TAG_API_TOKENS or --tokens-file)");
    }
    let addr = listener
        .local_addr()
        .context("reading the listener's address")?;
    tracing::info!(%addr, environment = config.env.as_str(), workers = config.max_concurrent_tasks, "tag-server listening");
    tracing::info!(
        memory_limit = %config.memory_limit(),
        spill_dir = %config.spill_dir().display(),
        "runs keep within the memory limit (--memory-limit): a larger one is partitioned and spilled"
    );
    // A wildcard address is reached as localhost from this machine.
    let host = match addr.ip() {
        ip if ip.is_unspecified() => "localhost".to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    tracing::info!(
        "console: http://{host}:{}/ (the API is under /api/v1)",
        addr.port()
    );
    Ok(())
}

/// After a first start that failed: if only because the store cannot be
/// reached, serves 503 and retries on a thread of its own (which gives up
/// through `gave_up` after `--store-wait-secs`); otherwise the error.
fn wait_for_store(
    config: &Arc<Config>,
    serving: &Serving,
    error: anyhow::Error,
    gave_up: tokio::sync::oneshot::Sender<String>,
) -> anyhow::Result<()> {
    let Some(reason) = store_unreachable(&error) else {
        return Err(error);
    };
    let wait = std::time::Duration::from_secs(config.store_wait_secs.into());
    tracing::error!(error = %reason, "the store cannot be reached: serving /health 503 and retrying for up to {} s (--store-wait-secs)", wait.as_secs());
    serving
        .app
        .set(http::swap::waiting(config.env.as_str(), &reason));
    let retry = Retry {
        config: Arc::clone(config),
        app: serving.app.clone(),
        started: Arc::clone(&serving.started),
        stopping: Arc::clone(&serving.stopping),
        deadline: std::time::Instant::now() + wait,
        gave_up,
    };
    std::thread::Builder::new()
        .name("store-retry".into())
        .spawn(move || retry.run())
        .context("starting the store retry thread")?;
    Ok(())
}

/// SIGHUP reloads the plugins, as `POST /api/v1/plugins/reload` does.
fn reload_on_hangup(started: Arc<std::sync::Mutex<Option<Started>>>) {
    let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => signal,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP: reload plugins through the API");
            return;
        }
    };
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            let parts = started
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .map(|s| (Arc::clone(&s.core.catalog), Arc::clone(&s.core.store)));
            let Some((catalog, store)) = parts else {
                tracing::warn!("SIGHUP before start-up finished: nothing to reload");
                continue;
            };
            match tokio::task::spawn_blocking(move || catalog.reload(store.as_ref())).await {
                Ok(Ok(report)) => tracing::info!(
                    loaded = report.loaded().count(),
                    rejected = report.rejected().count(),
                    "plugins reloaded on SIGHUP"
                ),
                Ok(Err(e)) => {
                    tracing::error!(error = %format!("{e:#}"), "plugin reload on SIGHUP failed; the previous plugins stay")
                }
                Err(e) => tracing::error!(error = %e, "plugin reload on SIGHUP aborted"),
            }
        }
    });
}

/// Retries start-up while the store cannot be reached, until `deadline`.
struct Retry {
    config: Arc<Config>,
    app: http::swap::SwapRouter,
    started: Arc<std::sync::Mutex<Option<Started>>>,
    stopping: Arc<std::sync::atomic::AtomicBool>,
    deadline: std::time::Instant,
    /// Stops the server with the reason when the store never answered.
    gave_up: tokio::sync::oneshot::Sender<String>,
}

impl Retry {
    fn run(self) {
        let mut pause = std::time::Duration::from_millis(500);
        loop {
            std::thread::sleep(pause);
            pause = (pause * 2).min(std::time::Duration::from_secs(5));
            if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            let e = match start(&self.config) {
                Ok(parts) => return self.serve(parts),
                Err(e) => e,
            };
            let Some(reason) = store_unreachable(&e) else {
                tracing::error!(error = %format!("{e:#}"), "start-up failed once the store answered; serving 503 until restarted");
                self.app.set(http::swap::waiting(
                    self.config.env.as_str(),
                    &format!("start-up failed: {e:#}"),
                ));
                return;
            };
            if std::time::Instant::now() >= self.deadline {
                return self.give_up(&reason);
            }
            tracing::warn!(error = %reason, "the store still cannot be reached");
            self.app
                .set(http::swap::waiting(self.config.env.as_str(), &reason));
        }
    }

    /// Stops the server: the store never answered.
    fn give_up(self, reason: &str) {
        let origin = self.config.origins.of("store");
        let message = format!(
            "the store ({origin}) did not answer within {} s of start-up: {reason}: start it or make it reachable from here, or {} to a store that answers; --store-wait-secs (TAG_STORE_WAIT_SECS) sets how long to wait",
            self.config.store_wait_secs,
            origin.how_to_set()
        );
        tracing::error!("{message}");
        let _ = self.gave_up.send(message);
    }

    fn serve(self, parts: Started) {
        let mut started = self.started.lock().unwrap_or_else(|p| p.into_inner());
        if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            drop(started);
            parts.scheduler.shutdown();
            return;
        }
        tracing::info!("the store answers: serving the API");
        self.app.set(api(&self.config, &parts));
        *started = Some(parts);
    }
}
