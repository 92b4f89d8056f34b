//! `--log-format json`: one flat JSON object per line. Besides
//! `timestamp`, `level`, `target` and the event's own fields (`message`
//! among them), every line carries the fields of the spans it happened in,
//! at the top level: `request_id` while serving a request, `task_id` while
//! running a task. A log shipper can then index and filter on them without
//! unpacking nested span lists.

use serde_json::{Map, Value};
use std::fmt;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

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
