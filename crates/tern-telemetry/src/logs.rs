//! Log lines: `text` (one readable line per event) or `json` (one JSON object per event), on standard error,
//! filtered by `telemetry.log_level` (the `RUST_LOG` syntax).
//!
//! The JSON lines are made here rather than by `tracing-subscriber`'s JSON formatter, which writes every
//! field of an event next to the event's text under the same key space: an event with a field named
//! `message` (or `level`, `target`...) produced a line with that key twice, and a JSON parser keeps only one
//! of them. Here every key of a line is unique: the event's own `timestamp`, `level`, `target` and
//! `message` come first, and a field whose name is taken is written as `fields.<name>` instead, so nothing is
//! lost. The spans the event happened in follow as `span` (the innermost) and `spans` (outermost first),
//! each with its name and fields.
//!
//! Colour codes are written only when standard error is a terminal.

use std::fmt;
use std::io::IsTerminal;

use serde_json::{Map, Value};
use tern_config::sections::LogFormat;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Keys every JSON line has for itself; an event field of one of these names is written as `fields.<name>`.
const RESERVED: [&str; 6] = ["timestamp", "level", "target", "message", "span", "spans"];

/// The log layer for `format`, writing to `writer` (standard error in the binary, a buffer in tests).
pub fn layer<S, W>(format: LogFormat, writer: W, ansi: bool) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    match format {
        LogFormat::Text => Box::new(
            tracing_subscriber::fmt::layer()
                .with_writer(writer)
                .with_ansi(ansi),
        ),
        LogFormat::Json => Box::new(
            tracing_subscriber::fmt::layer()
                .with_writer(writer)
                .with_ansi(false)
                .fmt_fields(JsonFields::new())
                .event_format(JsonLines),
        ),
    }
}

/// Whether colour codes may be written to standard error: only to a terminal.
pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// The JSON line format (see the module docs).
#[derive(Clone, Copy, Debug, Default)]
pub struct JsonLines;

impl<S> FormatEvent<S, JsonFields> for JsonLines
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
        line.insert("timestamp".into(), Value::String(timestamp()));
        line.insert("level".into(), Value::String(meta.level().to_string()));
        line.insert("target".into(), Value::String(meta.target().to_string()));
        let mut fields = EventFields::default();
        event.record(&mut fields);
        line.insert(
            "message".into(),
            Value::String(fields.message.unwrap_or_default()),
        );
        for (name, value) in fields.others {
            let key = if RESERVED.contains(&name.as_str()) || line.contains_key(&name) {
                unique_key(&line, &format!("fields.{name}"))
            } else {
                name
            };
            line.insert(key, value);
        }
        if let Some(scope) = ctx.event_scope() {
            let spans: Vec<Value> = scope.from_root().map(|span| span_object(&span)).collect();
            if let Some(innermost) = spans.last() {
                line.insert("span".into(), innermost.clone());
            }
            line.insert("spans".into(), Value::Array(spans));
        }
        let text = serde_json::to_string(&Value::Object(line)).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

/// `key`, or `key.2`, `key.3`... if it is taken.
fn unique_key(line: &Map<String, Value>, key: &str) -> String {
    if !line.contains_key(key) {
        return key.to_string();
    }
    (2..)
        .map(|n| format!("{key}.{n}"))
        .find(|k| !line.contains_key(k))
        .unwrap_or_else(|| key.to_string())
}

/// A span as `{"name": ..., <its fields>}`; a field named `name` is written as `fields.name`.
fn span_object<S>(span: &tracing_subscriber::registry::SpanRef<'_, S>) -> Value
where
    S: for<'a> LookupSpan<'a>,
{
    let mut object = Map::new();
    object.insert("name".into(), Value::String(span.name().to_string()));
    let extensions = span.extensions();
    if let Some(formatted) = extensions.get::<FormattedFields<JsonFields>>()
        && let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(&formatted.fields)
    {
        for (name, value) in fields {
            let key = if object.contains_key(&name) {
                unique_key(&object, &format!("fields.{name}"))
            } else {
                name
            };
            object.insert(key, value);
        }
    }
    Value::Object(object)
}

/// The current time, RFC 3339 in UTC with microseconds.
fn timestamp() -> String {
    tern_core::time::rfc3339_micros(std::time::SystemTime::now())
}

/// An event's fields in the order given: the first `message` is the event's text (tracing puts it first).
#[derive(Default)]
struct EventFields {
    message: Option<String>,
    others: Vec<(String, Value)>,
}

impl EventFields {
    fn add(&mut self, field: &Field, value: Value) {
        if field.name() == "message" && self.message.is_none() {
            self.message = Some(match value {
                Value::String(s) => s,
                other => other.to_string(),
            });
        } else {
            self.others.push((field.name().to_string(), value));
        }
    }
}

impl Visit for EventFields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        let v = serde_json::Number::from_f64(value)
            .map_or_else(|| Value::String(value.to_string()), Value::Number);
        self.add(field, v);
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.add(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.add(field, Value::from(value));
    }
    fn record_i128(&mut self, field: &Field, value: i128) {
        self.add(field, Value::String(value.to_string()));
    }
    fn record_u128(&mut self, field: &Field, value: u128) {
        self.add(field, Value::String(value.to_string()));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.add(field, Value::Bool(value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.add(field, Value::String(value.to_string()));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.add(field, Value::String(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.add(field, Value::String(format!("{value:?}")));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// A writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    fn capture(format: LogFormat, ansi: bool, emit: impl FnOnce()) -> String {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::registry().with(layer(format, buffer.clone(), ansi));
        tracing::subscriber::with_default(subscriber, emit);
        let bytes = buffer.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn a_field_named_like_a_json_key_is_kept_under_its_own_key() {
        let out = capture(LogFormat::Json, false, || {
            let span = tracing::info_span!("smtp_session", peer = "127.0.0.1", name = "x");
            let _entered = span.enter();
            tracing::info!(message = "01HID", level = 3, key = "app", "queued via gRPC");
        });
        let line: Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(line["message"], "queued via gRPC", "{out}");
        assert_eq!(line["fields.message"], "01HID", "{out}");
        assert_eq!(line["fields.level"], 3, "{out}");
        assert_eq!(line["level"], "INFO", "{out}");
        assert_eq!(line["key"], "app", "{out}");
        assert_eq!(line["span"]["name"], "smtp_session", "{out}");
        assert_eq!(line["span"]["peer"], "127.0.0.1", "{out}");
        assert_eq!(line["span"]["fields.name"], "x", "{out}");
        assert_eq!(line["spans"].as_array().map(Vec::len), Some(1), "{out}");
    }

    #[test]
    fn json_lines_carry_an_rfc3339_utc_timestamp() {
        let out = capture(LogFormat::Json, false, || tracing::info!("tick"));
        let line: Value = serde_json::from_str(out.trim()).unwrap();
        let stamp = line["timestamp"].as_str().unwrap_or_default();
        // 2026-11-28T13:26:49.123456Z
        assert_eq!(stamp.len(), 27, "{stamp}");
        assert!(stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T', "{stamp}");
        assert!(stamp.as_bytes()[19] == b'.', "{stamp}");
    }

    #[test]
    fn text_lines_carry_colour_only_when_asked() {
        let plain = capture(LogFormat::Text, false, || tracing::warn!(n = 1, "hello"));
        assert!(plain.contains("hello") && !plain.contains('\u{1b}'), "{plain:?}");
        let coloured = capture(LogFormat::Text, true, || tracing::warn!(n = 1, "hello"));
        assert!(coloured.contains('\u{1b}'), "{coloured:?}");
    }
}
