//! The log format: `--log-format text` (the default: tracing's readable
//! lines, coloured only when stderr is a terminal and `NO_COLOR` is unset)
//! or `json` (one object a line).
//!
//! A JSON line has `time` (RFC 3339, UTC, microseconds), `level`, `target`
//! and `message`, then every field of the event at the top level under its
//! own name: for a call's `berthd::request` line `method`, `service`,
//! `subject`, `code` and `duration` (seconds); for an audit line
//! `subject`, `method`, `service`, `decision`, `reason`. Numbers and
//! booleans stay JSON numbers and booleans. Secrets are never fields of
//! any event (tokens are not logged, only their ids).

use std::fmt;
use std::io::IsTerminal as _;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object a line.
    Json,
}

/// Installs the global subscriber writing to stderr. `level` wins over
/// `RUST_LOG`; the default is `info`.
pub fn init(level: Option<&str>, format: LogFormat) {
    let filter = match level {
        Some(level) => EnvFilter::new(level),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(colour()).init(),
        LogFormat::Json => builder.with_ansi(false).event_format(JsonLines).init(),
    }
}

/// Colour only for a person at a terminal who has not asked for none.
fn colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Formats each event as one JSON object (see the module documentation).
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut fields = Fields(Map::new());
        event.record(&mut fields);
        // The four fixed keys first, in this order, then the fields in
        // name order.
        let message = fields
            .0
            .remove("message")
            .unwrap_or(Value::String(String::new()));
        let json = |v: &Value| serde_json::to_string(v).map_err(|_| fmt::Error);
        let mut text = format!(
            "{{\"time\":{},\"level\":{},\"target\":{},\"message\":{}",
            json(&Value::String(
                humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string()
            ))?,
            json(&Value::String(meta.level().to_string()))?,
            json(&Value::String(meta.target().to_owned()))?,
            json(&message)?,
        );
        for (k, v) in &fields.0 {
            // A field may not repeat the four above.
            if matches!(k.as_str(), "time" | "level" | "target") {
                continue;
            }
            text.push(',');
            text.push_str(&json(&Value::String(k.clone()))?);
            text.push(':');
            text.push_str(&json(v)?);
        }
        text.push('}');
        writeln!(writer, "{text}")
    }
}

/// Collects an event's fields as JSON values.
struct Fields(Map<String, Value>);

impl Visit for Fields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        let v = serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number);
        self.0.insert(field.name().into(), v);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), Value::String(format!("{value:?}")));
    }
}
