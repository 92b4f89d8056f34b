//! Logging: where log lines go ([`init`]), panics logged as errors
//! ([`log_panics`]), and the `--log-format json` line format ([`FlatJson`]).
//!
//! `--log-format json` writes one flat JSON object per line. Besides
//! `timestamp`, `level`, `target` and the event's own fields (`message`
//! among them), every line carries the fields of the spans it happened in,
//! at the top level: `request_id` while serving a request, `task_id` while
//! running a task. A log shipper can then index and filter on them without
//! unpacking nested span lists.

use crate::config::{Config, LogFormat};
use serde_json::{Map, Value};
use std::fmt;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::writer::MakeWriterExt;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Where log lines go besides the log file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Console {
    /// The server: the console is its output.
    Stdout,
    /// `tag-server run`: stdout holds the task JSON.
    Stderr,
}

/// Installs the global subscriber, filtered by `RUST_LOG` or else by the
/// configuration's level. With a `console`, lines go to it and are appended
/// to the log file (created 0640) in the configured format; without one
/// (`plugins`, `gen-data`, which keep stdout for their output) they go to
/// stderr only. Fails only when the log file cannot be opened.
pub fn init(config: &Config, console: Option<Console>) -> std::io::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(config.log_filter()));
    let Some(console) = console else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
        return Ok(());
    };
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        // Owner read-write, group read: logs name tasks, users and callers.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(&config.log_file)?
    };
    let file = std::sync::Mutex::new(file);
    let console = move || -> Box<dyn std::io::Write> {
        match console {
            Console::Stdout => Box::new(std::io::stdout()),
            Console::Stderr => Box::new(std::io::stderr()),
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(console.and(file))
        .with_ansi(false);
    match config.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .fmt_fields(JsonFields::new())
            .event_format(FlatJson)
            .init(),
    }
    Ok(())
}

/// Logs panics (so they reach the log file, with thread and location)
/// before the default hook prints them; the task a panic happens in fails
/// with its message. Call it after [`init`].
pub fn log_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = crate::tasks::control::panic_message(info.payload());
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let thread = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_string();
        tracing::error!(panic = %message, %location, %thread, "panic");
        default(info);
    }));
}

/// The event formatter; pair it with [`JsonFields`] for span fields
/// (`fmt().fmt_fields(JsonFields::new()).event_format(FlatJson)`).
#[derive(Debug, Clone, Copy, Default)]
pub struct FlatJson;

/// Collects an event's fields as JSON values.
struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), Value::from(value));
    }
}

impl<S> FormatEvent<S, JsonFields> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut line = Map::new();
        let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ");
        line.insert("timestamp".into(), Value::String(now.to_string()));
        line.insert("level".into(), Value::from(meta.level().as_str()));
        line.insert("target".into(), Value::from(meta.target()));
        // Outer spans first, so an inner span's field wins a name clash.
        for span in ctx.event_scope().into_iter().flat_map(|s| s.from_root()) {
            let extensions = span.extensions();
            let Some(fields) = extensions.get::<FormattedFields<JsonFields>>() else {
                continue;
            };
            if let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(&fields.fields) {
                line.extend(fields);
            }
        }
        event.record(&mut Fields(&mut line));
        writeln!(writer, "{}", Value::Object(line))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn span_fields_and_event_fields_sit_at_the_top_level() {
        let buffer = Buffer::default();
        let out = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(JsonFields::new())
            .event_format(FlatJson)
            .with_writer(move || out.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let request = tracing::info_span!("request", request_id = "r-1");
            let _in_request = request.enter();
            let task = tracing::info_span!("task", task_id = "t-9");
            let _in_task = task.enter();
            tracing::warn!(rows = 42_u64, ok = true, tag = "高净值", "written");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        let line: Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(line["request_id"], "r-1");
        assert_eq!(line["task_id"], "t-9");
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["message"], "written");
        assert_eq!(line["rows"], 42);
        assert_eq!(line["ok"], true);
        assert_eq!(line["tag"], "高净值");
        assert!(line["target"].as_str().unwrap().contains("logging"));
        assert!(line["timestamp"].as_str().unwrap().ends_with('Z'));
    }
}
