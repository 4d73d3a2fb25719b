//! Logging: human-readable text locally, one JSON object per line in
//! sandbox/production with the field names Cloud Logging understands
//! (`severity`, `message`, `time`, `logging.googleapis.com/trace`, …).
//!
//! The per-message span (`message_id`, `subscription`, `ordering_key`,
//! `fingerprint`) is flattened into every line logged while handling the
//! message. When the message carried a W3C trace context (the
//! `googclient_traceparent` attribute the Google client libraries add with
//! OpenTelemetry on, or a plain `traceparent`; see
//! [`crate::pubsub::trace_context::trace_context`]) the line is linked to that
//! trace. Payload bodies are only ever logged at debug level, and secrets never.

use std::fmt;

use chrono::{SecondsFormat, Utc};
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{fmt as tfmt, EnvFilter};

use crate::config::{LogFormat, Settings};

/// Installs the global subscriber (once; later calls are ignored, which
/// keeps tests that boot several applications working).
pub fn init(settings: &Settings) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "{},sqlx=warn,h2=warn,hyper=warn",
            settings.log.level
        ))
    });
    let _ = match settings.log.format {
        LogFormat::Json => tracing::subscriber::set_global_default(cloud_logging_subscriber(
            Some(settings.pubsub.project_id.clone()),
            filter,
            std::io::stderr,
        ))
        .map_err(|e| e.to_string()),
        LogFormat::Text => tfmt()
            .with_env_filter(filter)
            .with_ansi(colour(
                std::io::IsTerminal::is_terminal(&std::io::stderr()),
                std::env::var_os("NO_COLOR"),
            ))
            .with_writer(std::io::stderr)
            .try_init()
            .map_err(|e| e.to_string()),
    };
}

/// Colour codes only for a person at a terminal: a log redirected to a file
/// or read through a pipe stays plain text. A non-empty `NO_COLOR` turns
/// colour off even there (no-color.org).
fn colour(stderr_is_terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// The JSON subscriber; `project_id` names the project traces belong to.
pub fn cloud_logging_subscriber<W>(
    project_id: Option<String>,
    filter: EnvFilter,
    writer: W,
) -> impl Subscriber + Send + Sync
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    tfmt()
        // Span fields are kept as JSON so the formatter can flatten them.
        .fmt_fields(JsonFields::new())
        .event_format(CloudLogging { project_id })
        .with_env_filter(filter)
        .with_writer(writer)
        .finish()
}

/// Formats one event as a Cloud Logging structured-log line.
pub struct CloudLogging {
    project_id: Option<String>,
}

/// Keys with a meaning to Cloud Logging (or to us): fields of the same name
/// from spans or events are renamed rather than allowed to overwrite them.
const RESERVED: &[&str] = &[
    "severity",
    "message",
    "time",
    "target",
    "logging.googleapis.com/trace",
    "logging.googleapis.com/spanId",
    "logging.googleapis.com/sourceLocation",
];

/// GCP `LogSeverity` names.
fn severity(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARNING",
        Level::INFO => "INFO",
        Level::DEBUG | Level::TRACE => "DEBUG",
    }
}

fn put(obj: &mut Map<String, Value>, key: String, value: Value) {
    if RESERVED.contains(&key.as_str()) {
        obj.insert(format!("{key}_field"), value);
    } else {
        obj.insert(key, value);
    }
}

/// Collects an event's fields as JSON values.
#[derive(Default)]
struct Fields(Map<String, Value>);

impl Visit for Fields {
    fn record_str(&mut self, f: &Field, v: &str) {
        self.0.insert(f.name().into(), Value::from(v));
    }
    fn record_i64(&mut self, f: &Field, v: i64) {
        self.0.insert(f.name().into(), Value::from(v));
    }
    fn record_u64(&mut self, f: &Field, v: u64) {
        self.0.insert(f.name().into(), Value::from(v));
    }
    fn record_f64(&mut self, f: &Field, v: f64) {
        self.0.insert(f.name().into(), Value::from(v));
    }
    fn record_bool(&mut self, f: &Field, v: bool) {
        self.0.insert(f.name().into(), Value::from(v));
    }
    fn record_error(&mut self, f: &Field, v: &(dyn std::error::Error + 'static)) {
        self.0.insert(f.name().into(), Value::from(v.to_string()));
    }
    fn record_debug(&mut self, f: &Field, v: &dyn fmt::Debug) {
        self.0
            .insert(f.name().into(), Value::from(format!("{v:?}")));
    }
}

impl<S> FormatEvent<S, JsonFields> for CloudLogging
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
        let mut obj = Map::new();
        // Span fields, outermost first so an inner span's value wins.
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let ext = span.extensions();
                let Some(stored) = ext.get::<FormattedFields<JsonFields>>() else {
                    continue;
                };
                if let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(&stored.fields) {
                    for (k, v) in fields {
                        put(&mut obj, k, v);
                    }
                }
            }
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let message = fields.0.remove("message");
        // Events bridged from the `log` crate carry their origin as fields.
        let target = match fields.0.remove("log.target") {
            Some(Value::String(t)) => t,
            _ => meta.target().to_string(),
        };
        fields.0.retain(|k, _| !k.starts_with("log."));
        for (k, v) in fields.0 {
            put(&mut obj, k, v);
        }
        // The trace link replaces the raw ids; without a project it cannot
        // be formed, so the ids stay as plain fields then.
        if let (Some(project), Some(Value::String(trace))) =
            (&self.project_id, obj.get("trace_id").cloned())
        {
            obj.remove("trace_id");
            obj.insert(
                "logging.googleapis.com/trace".into(),
                Value::from(format!("projects/{project}/traces/{trace}")),
            );
            if let Some(span_id) = obj.remove("span_id") {
                obj.insert("logging.googleapis.com/spanId".into(), span_id);
            }
        }
        obj.insert("severity".into(), Value::from(severity(meta.level())));
        obj.insert("message".into(), message.unwrap_or(Value::from("")));
        obj.insert(
            "time".into(),
            Value::from(Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true)),
        );
        obj.insert("target".into(), Value::from(target));
        if let (Some(file), Some(line)) = (meta.file(), meta.line()) {
            obj.insert(
                "logging.googleapis.com/sourceLocation".into(),
                serde_json::json!({"file": file, "line": line.to_string()}),
            );
        }
        let line = serde_json::to_string(&Value::Object(obj)).map_err(|_| fmt::Error)?;
        writeln!(writer, "{line}")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::io;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::pubsub::trace_context::trace_context;

    #[test]
    fn colour_only_at_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some("".into())));
        assert!(!colour(true, Some("1".into())));
        assert!(!colour(false, None), "a file or a pipe gets plain text");
    }

    /// Collects what the subscriber writes.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).extend(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Buf {
        fn lines(&self) -> Vec<Value> {
            let bytes = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
            String::from_utf8(bytes)
                .expect("UTF-8 output")
                .lines()
                .map(|l| serde_json::from_str(l).expect("each line is one JSON object"))
                .collect()
        }
    }

    fn capture(project: Option<&str>, f: impl FnOnce()) -> Vec<Value> {
        let buf = Buf::default();
        let w = buf.clone();
        let sub = cloud_logging_subscriber(
            project.map(str::to_string),
            EnvFilter::new("debug"),
            move || w.clone(),
        );
        tracing::subscriber::with_default(sub, f);
        buf.lines()
    }

    fn message_span() -> tracing::Span {
        tracing::info_span!(
            "message",
            message_id = "1234",
            subscription = "sync-merge-sub-local",
            ordering_key = "customer:42",
            fingerprint = tracing::field::Empty,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        )
    }

    #[test]
    fn telemetry_json_line_has_cloud_logging_names_and_span_fields() {
        let lines = capture(Some("acme-prod"), || {
            let span = message_span();
            span.record("fingerprint", "ab".repeat(32).as_str());
            let _in = span.enter();
            tracing::warn!(
                stage = "merge",
                attempt = 3_u32,
                "Message failed; sent to the retry path."
            );
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        let l = &lines[0];
        assert_eq!(l["severity"], "WARNING");
        assert_eq!(l["message"], "Message failed; sent to the retry path.");
        assert_eq!(l["message_id"], "1234");
        assert_eq!(l["subscription"], "sync-merge-sub-local");
        assert_eq!(l["ordering_key"], "customer:42");
        assert_eq!(l["fingerprint"], "ab".repeat(32));
        assert_eq!(l["stage"], "merge");
        assert_eq!(l["attempt"], 3);
        assert_eq!(l["target"], module_path!());
        assert!(l.get("logging.googleapis.com/trace").is_none());
        assert!(l.get("fields").is_none() && l.get("level").is_none());
        let t = l["time"].as_str().expect("time is a string");
        assert!(chrono::DateTime::parse_from_rfc3339(t).is_ok(), "{t}");
        assert!(l["logging.googleapis.com/sourceLocation"]["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("telemetry.rs")));
    }

    #[test]
    fn telemetry_trace_context_becomes_the_cloud_trace_link() {
        let attrs = HashMap::from([(
            "googclient_traceparent".to_string(),
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01".to_string(),
        )]);
        let (trace, span_id) = trace_context(&attrs).expect("valid traceparent");
        let lines = capture(Some("acme-prod"), || {
            let span = message_span();
            span.record("trace_id", trace.as_str());
            span.record("span_id", span_id.as_str());
            let _in = span.enter();
            tracing::error!("Could not route a failed message; nacking it.");
        });
        let l = &lines[0];
        assert_eq!(l["severity"], "ERROR");
        assert_eq!(
            l["logging.googleapis.com/trace"],
            "projects/acme-prod/traces/4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(l["logging.googleapis.com/spanId"], "00f067aa0ba902b7");
        assert!(l.get("trace_id").is_none());
    }

    #[test]
    fn telemetry_levels_map_to_gcp_severities_and_fields_cannot_spoof_them() {
        let lines = capture(None, || {
            tracing::info!(severity = "ERROR", "Started.");
            tracing::debug!("Detail.");
            tracing::trace!("Filtered out by the debug filter.");
        });
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0]["severity"], "INFO");
        assert_eq!(lines[0]["severity_field"], "ERROR");
        assert_eq!(lines[1]["severity"], "DEBUG");
        assert_eq!(lines[1]["message"], "Detail.");
    }

    #[test]
    fn telemetry_trace_context_rejects_malformed_headers() {
        let one = |v: &str| HashMap::from([("traceparent".to_string(), v.to_string())]);
        assert!(trace_context(&HashMap::new()).is_none());
        assert!(trace_context(&one("garbage")).is_none());
        assert!(trace_context(&one("00-xyz-00f067aa0ba902b7-01")).is_none());
        assert!(trace_context(&one(
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01"
        ))
        .is_none());
        assert!(trace_context(&one(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ))
        .is_some());
    }
}
