//! Prometheus metrics (`GET /metrics`, OpenMetrics text), one process-wide
//! registry. Counters and histograms are updated where things happen (the
//! HTTP layer, the workers, the store error path); gauges that describe
//! state (tasks by status, queue, plugins) are read when scraped.

use crate::model::RunReport;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::OnceLock;

/// One label: a route, a stage, an outcome, a status, a tag.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Route {
    /// The route's pattern (`/api/v1/tasks/{task_id}/status`).
    pub route: String,
}

/// Route and status of an answered request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteStatus {
    /// The route's pattern.
    pub route: String,
    /// The HTTP status code.
    pub status: u16,
}

/// A single `name` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Named {
    /// The value.
    pub name: String,
}

/// A `tag_id` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Tag {
    /// The tag.
    pub tag_id: u32,
}

fn histogram() -> Histogram {
    // 1 ms to about 9 min.
    Histogram::new(exponential_buckets(0.001, 2.0, 20))
}

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    /// Requests answered, by route and status.
    pub http_requests: Family<RouteStatus, Counter>,
    /// Request latency, by route.
    pub http_duration: Family<Route, Histogram, fn() -> Histogram>,
    /// Tasks that ended, by outcome (completed, failed, cancelled).
    pub tasks_finished: Family<Named, Counter>,
    /// Task wall time, by outcome.
    pub task_duration: Family<Named, Histogram, fn() -> Histogram>,
    /// Stage time of completed runs, by stage.
    pub stage_duration: Family<Named, Histogram, fn() -> Histogram>,
    /// `user_tags` rows written (inserted, updated or deleted).
    pub rows_written: Counter,
    /// Users evaluated, by tag.
    pub users_evaluated: Family<Tag, Counter>,
    /// Users matched, by tag.
    pub tags_matched: Family<Tag, Counter>,
    /// Store errors answered by the API.
    pub store_errors: Counter,
    /// Tasks in the store, by status (set when scraped).
    pub tasks: Family<Named, Gauge>,
    /// Tasks waiting in this process's queue (set when scraped).
    pub queue_depth: Gauge,
    /// Tasks running in this process (set when scraped).
    pub running_tasks: Gauge,
    /// Plugin files of the last scan, by status (set when scraped).
    pub plugin_files: Family<Named, Gauge>,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tag_server");
        let m = Metrics {
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(histogram),
            tasks_finished: Family::default(),
            task_duration: Family::new_with_constructor(histogram),
            stage_duration: Family::new_with_constructor(histogram),
            rows_written: Counter::default(),
            users_evaluated: Family::default(),
            tags_matched: Family::default(),
            store_errors: Counter::default(),
            tasks: Family::default(),
            queue_depth: Gauge::default(),
            running_tasks: Gauge::default(),
            plugin_files: Family::default(),
            registry: Registry::default(),
        };
        m.register(&mut registry);
        Metrics { registry, ..m }
    }

    /// Registers every metric under `registry` (prefix `tag_server_`).
    fn register(&self, r: &mut Registry) {
        r.register(
            "http_requests",
            "HTTP requests answered",
            self.http_requests.clone(),
        );
        r.register(
            "http_request_duration_seconds",
            "HTTP request latency",
            self.http_duration.clone(),
        );
        r.register(
            "tasks_finished",
            "Tasks that ended, by outcome",
            self.tasks_finished.clone(),
        );
        r.register(
            "task_duration_seconds",
            "Task wall time, by outcome",
            self.task_duration.clone(),
        );
        r.register(
            "stage_duration_seconds",
            "Stage time of completed runs",
            self.stage_duration.clone(),
        );
        r.register(
            "rows_written",
            "user_tags rows inserted, updated or deleted",
            self.rows_written.clone(),
        );
        r.register(
            "users_evaluated",
            "Users evaluated, by tag",
            self.users_evaluated.clone(),
        );
        r.register(
            "tags_matched",
            "Users matching, by tag",
            self.tags_matched.clone(),
        );
        r.register(
            "store_errors",
            "Store errors answered by the API",
            self.store_errors.clone(),
        );
        r.register("tasks", "Tasks in the store, by status", self.tasks.clone());
        r.register(
            "queue_depth",
            "Tasks waiting in this process's queue",
            self.queue_depth.clone(),
        );
        r.register(
            "running_tasks",
            "Tasks running in this process",
            self.running_tasks.clone(),
        );
        r.register(
            "plugin_files",
            "Plugin files of the last scan, by status",
            self.plugin_files.clone(),
        );
    }

    /// The exposition text.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// Records a finished task from its outcome and report.
    pub fn task_finished(&self, outcome: &str, seconds: f64, result: Option<&RunReport>) {
        let named = Named {
            name: outcome.into(),
        };
        self.tasks_finished.get_or_create(&named).inc();
        self.task_duration.get_or_create(&named).observe(seconds);
        let Some(result) = result else { return };
        self.rows_written
            .inc_by((result.rows_upserted + result.rows_deleted) as u64);
        for (stage, ms) in &result.timings {
            self.stage_finished(stage.trim_end_matches("_ms"), *ms);
        }
        for tag in &result.tags {
            let Some(counts) = tag.counts else { continue };
            let label = Tag { tag_id: tag.tag_id };
            self.users_evaluated
                .get_or_create(&label)
                .inc_by(counts.evaluated_users as u64);
            self.tags_matched
                .get_or_create(&label)
                .inc_by(counts.matched as u64);
        }
    }

    /// Records how long a stage of a run took.
    pub fn stage_finished(&self, stage: &str, ms: u64) {
        self.stage_duration
            .get_or_create(&Named { name: stage.into() })
            .observe(ms as f64 / 1000.0);
    }
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}
