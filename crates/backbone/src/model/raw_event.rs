//! Raw events (docs/spec.md §3.1) and their validation (docs/spec.md §10). Every rejection
//! names the offending field so the dlq `invalid` entry is actionable.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, TimeZone, Timelike, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::model::limits;

/// Maximum object/array nesting depth of a raw event document (docs/spec.md §10);
/// `changes` is held to the stricter [`limits::CHANGES_MAX_DEPTH`].
pub const MAX_NESTING: usize = limits::DOCUMENT_MAX_DEPTH;

/// `record_id` limit in bytes (docs/spec.md §3.1): within the column's 191
/// characters, and what an InnoDB index prefix of 767 bytes can hold.
const MAX_RECORD_ID_BYTES: usize = limits::RECORD_ID_MAX;

/// The system a raw event came from.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Netsuite,
    Suitex,
}

impl Source {
    /// Every source, which is also every delivery target (each system
    /// receives what the other changed), in the order listings show them.
    pub const ALL: [Source; 2] = [Source::Netsuite, Source::Suitex];

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Netsuite => "netsuite",
            Source::Suitex => "suitex",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error of [`Source::from_str`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown source `{0}` (expected `suitex` or `netsuite`)")]
pub struct UnknownSource(pub String);

impl FromStr for Source {
    type Err = UnknownSource;

    /// Exact, lowercase match only: the wire contract has one spelling.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "netsuite" => Ok(Source::Netsuite),
            "suitex" => Ok(Source::Suitex),
            other => Err(UnknownSource(other.to_owned())),
        }
    }
}

/// A validated raw event.
#[derive(Debug, Clone, PartialEq)]
pub struct RawEvent {
    /// Publisher-assigned id; `None` when absent (the merge stage assigns a v7).
    pub id: Option<Uuid>,
    pub record_type: String,
    pub record_id: String,
    pub source: Source,
    /// Converted to UTC; microseconds kept exactly (see `parse_timestamp`).
    pub timestamp: DateTime<Utc>,
    pub base_version: i64,
    pub changes: Map<String, Value>,
    pub full_snapshot_ref: Option<String>,
}

impl RawEvent {
    /// Pub/Sub ordering key (docs/spec.md §2): `{record_type}:{record_id}`.
    pub fn ordering_key(&self) -> String {
        ordering_key(&self.record_type, &self.record_id)
    }
}

/// Pub/Sub ordering key (docs/spec.md §2): `{record_type}:{record_id}`.
pub fn ordering_key(record_type: &str, record_id: &str) -> String {
    format!("{record_type}:{record_id}")
}

/// Why a raw event was rejected; `field` is `data` for document-level problems.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid raw event: field `{field}` {reason}")]
pub struct ValidationError {
    pub field: String,
    pub reason: String,
}

impl ValidationError {
    fn new(field: &str, reason: impl Into<String>) -> Self {
        Self {
            field: field.to_owned(),
            reason: reason.into(),
        }
    }
}

/// Parses and validates a raw event message body (docs/spec.md §3.1).
///
/// Unknown top-level fields are ignored so publishers can add fields
/// without breaking older daemons. Optional fields given as `null` count as
/// absent (PHP serialises unset properties that way).
pub fn parse_raw_event(data: &[u8]) -> Result<RawEvent, ValidationError> {
    let text = std::str::from_utf8(data)
        .map_err(|e| ValidationError::new("data", format!("is not valid UTF-8: {e}")))?;
    let doc: Value = serde_json::from_str(text).map_err(|e| {
        // serde_json stops at 128 levels (protecting the stack) with this
        // error; anything that deep is over our own limit too.
        if e.to_string().starts_with("recursion limit exceeded") {
            nesting_error()
        } else {
            ValidationError::new("data", format!("is not valid JSON: {e}"))
        }
    })?;
    if limits::json_depth(&doc, MAX_NESTING) > MAX_NESTING {
        return Err(nesting_error());
    }
    let Value::Object(mut obj) = doc else {
        return Err(ValidationError::new(
            "data",
            format!("must be a JSON object (got {})", type_name(&doc)),
        ));
    };

    let id = match optional_string(&obj, "id")? {
        None => None,
        Some(s) => Some(
            Uuid::parse_str(s)
                .map_err(|e| ValidationError::new("id", format!("is not a valid UUID: {e}")))?,
        ),
    };
    let record_type = required_string(&obj, "record_type")?;
    check_record_type(record_type)?;
    let record_id = required_string(&obj, "record_id")?;
    check_record_id(record_id)?;
    let source = required_string(&obj, "source")?
        .parse::<Source>()
        .map_err(|e| ValidationError::new("source", format!("is invalid: {e}")))?;
    let timestamp = parse_timestamp(required_string(&obj, "timestamp")?)?;
    let base_version = parse_base_version(obj.get("base_version"))?;
    let full_snapshot_ref = match optional_string(&obj, "full_snapshot_ref")? {
        None => None,
        Some(s) => {
            check_snapshot_ref(s)?;
            Some(s.to_owned())
        }
    };
    let (record_type, record_id) = (record_type.to_owned(), record_id.to_owned());

    let changes = match obj.remove("changes") {
        None => return Err(ValidationError::new("changes", "is required")),
        Some(Value::Object(m)) => m,
        Some(other) => {
            return Err(ValidationError::new(
                "changes",
                format!("must be an object (got {})", type_name(&other)),
            ))
        }
    };
    if changes.is_empty() && full_snapshot_ref.is_none() {
        return Err(ValidationError::new(
            "changes",
            "must not be empty unless `full_snapshot_ref` is set",
        ));
    }
    check_changes(&changes).map_err(|reason| ValidationError::new("changes", reason))?;

    Ok(RawEvent {
        id,
        record_type,
        record_id,
        source,
        timestamp,
        base_version,
        changes,
        full_snapshot_ref,
    })
}

fn nesting_error() -> ValidationError {
    ValidationError::new(
        "data",
        format!("is nested deeper than {MAX_NESTING} levels"),
    )
}

/// Whether a change set fits the event store (inline `changes`, or the
/// changes a `full_snapshot_ref` resolved to): at most
/// [`limits::CHANGES_MAX_DEPTH`] levels deep and
/// [`limits::CHANGES_MAX_BYTES`] long as JSON. The error is the reason,
/// for the caller to attach to the field it checked.
pub fn check_changes(changes: &Map<String, Value>) -> Result<(), String> {
    const MAX: usize = limits::CHANGES_MAX_DEPTH;
    // The map itself is level 1; the cap bounds the walk on hostile input.
    let depth = 1 + changes
        .values()
        .map(|v| limits::json_depth(v, MAX))
        .max()
        .unwrap_or(0);
    if depth > MAX {
        return Err(format!(
            "is nested deeper than {MAX} levels (the changes object is level 1): \
             the event store's JSON columns hold {} levels and the record state \
             wraps each value in {} more",
            limits::DB_JSON_MAX_DEPTH,
            limits::STATE_EXTRA_DEPTH
        ));
    }
    let len = limits::json_len(changes);
    if len > limits::CHANGES_MAX_BYTES {
        return Err(format!(
            "is {len} bytes as JSON; the event store takes at most {} bytes of changes",
            limits::CHANGES_MAX_BYTES
        ));
    }
    Ok(())
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn required_string<'a>(
    obj: &'a Map<String, Value>,
    field: &str,
) -> Result<&'a str, ValidationError> {
    match obj.get(field) {
        None => Err(ValidationError::new(field, "is required")),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(ValidationError::new(
            field,
            format!("must be a string (got {})", type_name(other)),
        )),
    }
}

fn optional_string<'a>(
    obj: &'a Map<String, Value>,
    field: &str,
) -> Result<Option<&'a str>, ValidationError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(ValidationError::new(
            field,
            format!("must be a string (got {})", type_name(other)),
        )),
    }
}

/// `^[a-z][a-z0-9_]{0,63}$`, checked by hand (no regex dependency).
pub fn check_record_type(s: &str) -> Result<(), ValidationError> {
    let b = s.as_bytes();
    let ok = matches!(b.first(), Some(b'a'..=b'z'))
        && b.len() <= limits::RECORD_TYPE_MAX
        && b.iter()
            .all(|c| matches!(c, b'a'..=b'z' | b'0'..=b'9' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(
            "record_type",
            format!(
                "must match ^[a-z][a-z0-9_]{{0,{}}}$ (at most {} characters)",
                limits::RECORD_TYPE_MAX - 1,
                limits::RECORD_TYPE_MAX
            ),
        ))
    }
}

pub fn check_record_id(s: &str) -> Result<(), ValidationError> {
    if s.is_empty() {
        return Err(ValidationError::new("record_id", "must not be empty"));
    }
    if s.len() > MAX_RECORD_ID_BYTES {
        return Err(ValidationError::new(
            "record_id",
            format!(
                "must be at most {MAX_RECORD_ID_BYTES} bytes (got {})",
                s.len()
            ),
        ));
    }
    // C0, DEL and C1 controls: they break logs, ordering keys and URLs.
    if s.chars().any(char::is_control) {
        return Err(ValidationError::new(
            "record_id",
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// RFC 3339 → UTC, keeping microseconds exactly.
///
/// The event store column is `TIMESTAMP(6)`: anything finer than a
/// microsecond would be silently truncated on insert, and the stored event
/// would then disagree with its fingerprint. So up to 9 (or more) fractional
/// digits are accepted only when every digit past the sixth is zero.
fn parse_timestamp(s: &str) -> Result<DateTime<Utc>, ValidationError> {
    let parsed = DateTime::parse_from_rfc3339(s).map_err(|e| {
        ValidationError::new(
            "timestamp",
            format!("is not a valid RFC 3339 timestamp: {e}"),
        )
    })?;
    // chrono ignores digits past the ninth, so inspect the text itself. A
    // successful parse guarantees `YYYY-MM-DDTHH:MM:SS` in the first 19 bytes.
    if let Some(frac) = s.get(19..).and_then(|r| r.strip_prefix('.')) {
        let digits = frac.bytes().take_while(u8::is_ascii_digit);
        if digits.skip(6).any(|d| d != b'0') {
            return Err(ValidationError::new(
                "timestamp",
                "has sub-microsecond precision (would be truncated)",
            ));
        }
    }
    let ts = parsed.with_timezone(&Utc);
    // chrono represents `:60` as nanoseconds >= 1e9; MySQL cannot store it.
    if ts.nanosecond() >= 1_000_000_000 {
        return Err(ValidationError::new(
            "timestamp",
            "must not be a leap second",
        ));
    }
    // The event store's TIMESTAMP(6) range (docs/: the 2038 limit).
    let min = Utc.timestamp_opt(limits::TIMESTAMP_MIN_SECS, 0).single();
    let max = Utc
        .timestamp_opt(
            limits::TIMESTAMP_MAX_SECS,
            limits::TIMESTAMP_MAX_MICROS * 1_000,
        )
        .single();
    let in_range = matches!((min, max), (Some(min), Some(max)) if ts >= min && ts <= max);
    if !in_range {
        return Err(ValidationError::new(
            "timestamp",
            format!(
                "must be between {} and {} (the event store's TIMESTAMP range)",
                limits::TIMESTAMP_MIN,
                limits::TIMESTAMP_MAX
            ),
        ));
    }
    Ok(ts)
}

fn parse_base_version(v: Option<&Value>) -> Result<i64, ValidationError> {
    const F: &str = "base_version";
    let n = match v {
        None => return Err(ValidationError::new(F, "is required")),
        Some(Value::Number(n)) => n,
        Some(other) => {
            return Err(ValidationError::new(
                F,
                format!("must be an integer (got {})", type_name(other)),
            ))
        }
    };
    if let Some(i) = n.as_i64() {
        if i < 0 {
            return Err(ValidationError::new(F, format!("must be >= 0 (got {i})")));
        }
        return Ok(i);
    }
    if n.is_u64() {
        return Err(ValidationError::new(F, "is out of range"));
    }
    // Floats (including `7.0`) are refused: the publisher's version counter is
    // an integer and a float spelling hints at a serialisation bug.
    Err(ValidationError::new(
        F,
        format!("must be an integer (got {n})"),
    ))
}

/// `gs://bucket/object` or `file://path`; which one is allowed in which env,
/// and whether the bucket is ours, is decided when the ref is resolved.
fn check_snapshot_ref(s: &str) -> Result<(), ValidationError> {
    const F: &str = "full_snapshot_ref";
    if s.chars().count() > limits::SNAPSHOT_REF_MAX {
        return Err(ValidationError::new(
            F,
            format!("must be at most {} characters", limits::SNAPSHOT_REF_MAX),
        ));
    }
    if let Some(rest) = s.strip_prefix("gs://") {
        match rest.split_once('/') {
            Some((bucket, object)) if !bucket.is_empty() && !object.is_empty() => Ok(()),
            _ => Err(ValidationError::new(
                F,
                "must have the form gs://bucket/object",
            )),
        }
    } else if let Some(path) = s.strip_prefix("file://") {
        if path.is_empty() {
            Err(ValidationError::new(F, "must name a file after file://"))
        } else {
            Ok(())
        }
    } else {
        Err(ValidationError::new(F, "must start with gs:// or file://"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn valid() -> Map<String, Value> {
        match json!({
            "id": "0195f0a2-7b3c-7d4e-8f00-123456789abc",
            "source": "suitex",
            "record_type": "project",
            "record_id": "42",
            "base_version": 7,
            "timestamp": "2026-03-13T21:00:00.123456+01:00",
            "changes": {"status": "open"},
        }) {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    fn parse_map(m: &Map<String, Value>) -> Result<RawEvent, ValidationError> {
        parse_raw_event(serde_json::to_string(m).expect("ser").as_bytes())
    }

    fn with(field: &str, v: Value) -> Result<RawEvent, ValidationError> {
        let mut m = valid();
        m.insert(field.into(), v);
        parse_map(&m)
    }

    fn without(field: &str) -> Result<RawEvent, ValidationError> {
        let mut m = valid();
        m.remove(field);
        parse_map(&m)
    }

    #[track_caller]
    fn assert_err(r: Result<RawEvent, ValidationError>, field: &str, reason_contains: &str) {
        let e = r.expect_err("expected a validation error");
        assert_eq!(e.field, field, "{e}");
        assert!(
            e.reason.contains(reason_contains),
            "reason {:?} should contain {:?}",
            e.reason,
            reason_contains
        );
        assert!(e.to_string().contains(&format!("`{field}`")));
    }

    fn ts(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("ts")
            .with_timezone(&Utc)
    }

    // ---- happy paths ----

    #[test]
    fn spec_example_parses() {
        let data = r#"{"source":"suitex","record_type":"project","record_id":"42","base_version":7,
 "timestamp":"2026-03-13T21:00:00.123456+01:00",
 "changes":{"status":"open","name":"Nouveau café","budget":1200,"tags":["a","b"],"owner":null}}"#;
        let ev = parse_raw_event(data.as_bytes()).expect("valid");
        assert_eq!(ev.id, None);
        assert_eq!(ev.source, Source::Suitex);
        assert_eq!(ev.record_type, "project");
        assert_eq!(ev.record_id, "42");
        assert_eq!(ev.base_version, 7);
        assert_eq!(ev.timestamp, ts("2026-03-13T20:00:00.123456Z"));
        assert_eq!(ev.changes.len(), 5);
        assert_eq!(ev.changes["name"], json!("Nouveau café"));
        assert_eq!(ev.changes["owner"], Value::Null);
        assert_eq!(ev.full_snapshot_ref, None);
        assert_eq!(ev.ordering_key(), "project:42");
    }

    #[test]
    fn id_is_parsed() {
        let ev = parse_map(&valid()).expect("valid");
        assert_eq!(
            ev.id,
            Some(Uuid::parse_str("0195f0a2-7b3c-7d4e-8f00-123456789abc").expect("uuid"))
        );
    }

    #[test]
    fn microseconds_preserved() {
        let ev = with("timestamp", json!("2026-03-13T20:00:00.123456Z")).expect("valid");
        assert_eq!(ev.timestamp.nanosecond(), 123_456_000);
        assert_eq!(
            ev.timestamp
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "2026-03-13T20:00:00.123456Z"
        );
        let ev = with("timestamp", json!("2026-03-13T20:00:00.000001Z")).expect("valid");
        assert_eq!(ev.timestamp.nanosecond(), 1_000);
    }

    #[test]
    fn offset_converted_to_utc() {
        let ev = with("timestamp", json!("2026-03-13T15:30:00.5-05:30")).expect("valid");
        assert_eq!(ev.timestamp, ts("2026-03-13T21:00:00.5Z"));
        let ev = with("timestamp", json!("2026-01-01T00:30:00+01:00")).expect("valid");
        assert_eq!(ev.timestamp, ts("2025-12-31T23:30:00Z"));
    }

    #[test]
    fn trailing_zero_digits_beyond_micros_accepted() {
        let ev = with("timestamp", json!("2026-03-13T20:00:00.123456000Z")).expect("valid");
        assert_eq!(ev.timestamp.nanosecond(), 123_456_000);
        let ev = with("timestamp", json!("2026-03-13T20:00:00.1234560000000Z")).expect("valid");
        assert_eq!(ev.timestamp.nanosecond(), 123_456_000);
    }

    #[test]
    fn timestamp_range_bounds_inclusive() {
        with("timestamp", json!("1970-01-01T00:00:01Z")).expect("min");
        with("timestamp", json!("2038-01-19T03:14:07.999999Z")).expect("max");
        with("timestamp", json!("2038-01-19T04:14:07.999999+01:00")).expect("max via offset");
    }

    #[test]
    fn unknown_fields_ignored() {
        let mut m = valid();
        m.insert("extra".into(), json!({"x": [1, 2]}));
        m.insert("attributes".into(), json!("whatever"));
        let ev = parse_map(&m).expect("valid");
        assert_eq!(ev.record_id, "42");
    }

    #[test]
    fn null_optional_fields_are_absent() {
        let ev = with("id", Value::Null).expect("valid");
        assert_eq!(ev.id, None);
        let ev = with("full_snapshot_ref", Value::Null).expect("valid");
        assert_eq!(ev.full_snapshot_ref, None);
    }

    #[test]
    fn empty_changes_with_snapshot_ref() {
        let mut m = valid();
        m.insert("changes".into(), json!({}));
        m.insert(
            "full_snapshot_ref".into(),
            json!("gs://bucket/snapshots/abc.json"),
        );
        let ev = parse_map(&m).expect("valid");
        assert!(ev.changes.is_empty());
        assert_eq!(
            ev.full_snapshot_ref.as_deref(),
            Some("gs://bucket/snapshots/abc.json")
        );
        m.insert("full_snapshot_ref".into(), json!("file:///tmp/snap.json"));
        parse_map(&m).expect("file ref valid");
    }

    #[test]
    fn record_type_boundaries() {
        with("record_type", json!("a")).expect("single letter");
        with("record_type", json!("sales_order_2")).expect("letters digits underscore");
        let max = format!("a{}", "b".repeat(63));
        with("record_type", json!(max)).expect("64 chars");
    }

    #[test]
    fn record_id_boundaries() {
        with("record_id", json!("x")).expect("1 byte");
        with("record_id", json!("é".repeat(95))).expect("190 bytes");
        with("record_id", json!("a".repeat(191))).expect("191 bytes");
        with("record_id", json!("ext-ID/42 café")).expect("spaces, punctuation, unicode");
    }

    #[test]
    fn base_version_zero_and_large() {
        assert_eq!(with("base_version", json!(0)).expect("0").base_version, 0);
        assert_eq!(
            with("base_version", json!(i64::MAX))
                .expect("max")
                .base_version,
            i64::MAX
        );
    }

    /// A raw event whose `changes` is `{"a": <n nested arrays around 1>}`.
    fn with_changes_depth(depth: usize) -> String {
        let n = depth - 1;
        let inner = format!("{}1{}", "[".repeat(n), "]".repeat(n));
        format!(
            r#"{{"source":"suitex","record_type":"t","record_id":"1","base_version":0,"timestamp":"2026-01-01T00:00:00Z","changes":{{"a":{inner}}}}}"#
        )
    }

    #[test]
    fn nesting_at_limit_accepted() {
        // An ignored field may nest up to the document limit (64, the top
        // level counting as 1)…
        let inner = format!("{}1{}", "[".repeat(63), "]".repeat(63));
        let data = format!(
            r#"{{"source":"suitex","record_type":"t","record_id":"1","base_version":0,"timestamp":"2026-01-01T00:00:00Z","changes":{{"a":1}},"extra":{inner}}}"#
        );
        parse_raw_event(data.as_bytes()).expect("document depth 64 ok");
        // …`changes` up to what the event store holds.
        parse_raw_event(with_changes_depth(limits::CHANGES_MAX_DEPTH).as_bytes())
            .expect("changes at the store's depth limit");
    }

    #[test]
    fn rejects_changes_deeper_than_the_store_holds() {
        for depth in [limits::CHANGES_MAX_DEPTH + 1, 33, 63] {
            assert_err(
                parse_raw_event(with_changes_depth(depth).as_bytes()),
                "changes",
                "nested deeper than 29 levels",
            );
        }
    }

    #[test]
    fn rejects_changes_larger_than_the_store_takes() {
        let big = "x".repeat(limits::CHANGES_MAX_BYTES);
        assert_err(
            with("changes", json!({ "a": big })),
            "changes",
            "bytes of changes",
        );
        let fits = "x".repeat(limits::CHANGES_MAX_BYTES - 16);
        with("changes", json!({ "a": fits })).expect("just under the limit");
    }

    #[test]
    fn rejects_long_snapshot_ref() {
        let long = format!("gs://b/{}", "o".repeat(limits::SNAPSHOT_REF_MAX));
        let mut m = valid();
        m.insert("full_snapshot_ref".into(), json!(long));
        assert_err(
            parse_map(&m),
            "full_snapshot_ref",
            "at most 1024 characters",
        );
        let fits = format!("gs://b/{}", "ö".repeat(limits::SNAPSHOT_REF_MAX - 7));
        m.insert("full_snapshot_ref".into(), json!(fits));
        parse_map(&m).expect("1024 characters (more bytes) fit");
    }

    #[test]
    fn source_round_trip() {
        for s in Source::ALL {
            assert_eq!(s.as_str().parse::<Source>(), Ok(s));
            assert_eq!(s.to_string(), s.as_str());
            assert_eq!(
                serde_json::to_string(&s).expect("ser"),
                format!("\"{}\"", s.as_str())
            );
        }
        assert_eq!(
            "SuiteX".parse::<Source>(),
            Err(UnknownSource("SuiteX".into()))
        );
    }

    #[test]
    fn ordering_key_format() {
        assert_eq!(ordering_key("customer", "C-9"), "customer:C-9");
    }

    // ---- document-level failures ----

    #[test]
    fn rejects_non_utf8() {
        assert_err(
            parse_raw_event(b"{\"a\":\"\xff\"}"),
            "data",
            "is not valid UTF-8",
        );
    }

    #[test]
    fn rejects_non_json() {
        assert_err(parse_raw_event(b"not json"), "data", "is not valid JSON");
        assert_err(parse_raw_event(b""), "data", "is not valid JSON");
        assert_err(parse_raw_event(b"{\"a\":1"), "data", "is not valid JSON");
        assert_err(parse_raw_event(b"{} trailing"), "data", "is not valid JSON");
    }

    #[test]
    fn rejects_non_object() {
        assert_err(parse_raw_event(b"[1,2]"), "data", "must be a JSON object");
        assert_err(parse_raw_event(b"\"str\""), "data", "must be a JSON object");
        assert_err(parse_raw_event(b"null"), "data", "must be a JSON object");
        assert_err(parse_raw_event(b"42"), "data", "must be a JSON object");
    }

    #[test]
    fn rejects_nesting_65() {
        let inner = format!("{}1{}", "[".repeat(63), "]".repeat(63));
        let data = format!(
            r#"{{"source":"suitex","record_type":"t","record_id":"1","base_version":0,"timestamp":"2026-01-01T00:00:00Z","changes":{{"a":{inner}}}}}"#
        );
        assert_err(
            parse_raw_event(data.as_bytes()),
            "data",
            "nested deeper than 64",
        );
    }

    #[test]
    fn rejects_nesting_in_ignored_field() {
        let mut m = valid();
        let deep: Value =
            serde_json::from_str(&format!("{}{}", "[".repeat(70), "]".repeat(70))).expect("json");
        m.insert("extra".into(), deep);
        assert_err(parse_map(&m), "data", "nested deeper than 64");
    }

    #[test]
    fn rejects_nesting_beyond_serde_limit() {
        let data = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert_err(
            parse_raw_event(data.as_bytes()),
            "data",
            "nested deeper than 64",
        );
    }

    #[test]
    fn rejects_10000_deep_without_crashing() {
        let data = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert_err(
            parse_raw_event(data.as_bytes()),
            "data",
            "nested deeper than 64",
        );
        let data = "{\"a\":".repeat(10_000) + "1" + &"}".repeat(10_000);
        assert_err(
            parse_raw_event(data.as_bytes()),
            "data",
            "nested deeper than 64",
        );
    }

    // ---- id ----

    #[test]
    fn rejects_bad_id() {
        assert_err(with("id", json!("not-a-uuid")), "id", "is not a valid UUID");
        assert_err(with("id", json!("")), "id", "is not a valid UUID");
        assert_err(with("id", json!(123)), "id", "must be a string");
    }

    // ---- record_type ----

    #[test]
    fn rejects_missing_record_type() {
        assert_err(without("record_type"), "record_type", "is required");
    }

    #[test]
    fn rejects_record_type_wrong_type() {
        assert_err(
            with("record_type", json!(5)),
            "record_type",
            "must be a string",
        );
        assert_err(
            with("record_type", Value::Null),
            "record_type",
            "must be a string",
        );
    }

    #[test]
    fn rejects_bad_record_type() {
        for bad in [
            "",
            "Project",
            "1project",
            "_project",
            "pro-ject",
            "pro ject",
            "projét",
            "project\n",
        ] {
            assert_err(with("record_type", json!(bad)), "record_type", "must match");
        }
        let long = format!("a{}", "b".repeat(64));
        assert_err(
            with("record_type", json!(long)),
            "record_type",
            "at most 64 characters",
        );
    }

    // ---- record_id ----

    #[test]
    fn rejects_missing_record_id() {
        assert_err(without("record_id"), "record_id", "is required");
    }

    #[test]
    fn rejects_record_id_wrong_type() {
        assert_err(
            with("record_id", json!(42)),
            "record_id",
            "must be a string",
        );
    }

    #[test]
    fn rejects_empty_record_id() {
        assert_err(
            with("record_id", json!("")),
            "record_id",
            "must not be empty",
        );
    }

    #[test]
    fn rejects_long_record_id() {
        assert_err(
            with("record_id", json!("a".repeat(192))),
            "record_id",
            "at most 191 bytes",
        );
        // 96 two-byte chars = 192 bytes: the limit is bytes, not chars.
        assert_err(
            with("record_id", json!("é".repeat(96))),
            "record_id",
            "at most 191 bytes",
        );
    }

    #[test]
    fn rejects_control_chars_in_record_id() {
        for bad in ["a\nb", "a\u{0}b", "tab\t", "del\u{7f}", "c1\u{85}"] {
            assert_err(
                with("record_id", json!(bad)),
                "record_id",
                "control characters",
            );
        }
    }

    // ---- source ----

    #[test]
    fn rejects_missing_source() {
        assert_err(without("source"), "source", "is required");
    }

    #[test]
    fn rejects_unknown_source() {
        assert_err(
            with("source", json!("salesforce")),
            "source",
            "unknown source",
        );
        assert_err(with("source", json!("SuiteX")), "source", "unknown source");
        assert_err(with("source", json!("")), "source", "unknown source");
    }

    #[test]
    fn rejects_source_wrong_type() {
        assert_err(
            with("source", json!(["suitex"])),
            "source",
            "must be a string",
        );
    }

    // ---- timestamp ----

    #[test]
    fn rejects_missing_timestamp() {
        assert_err(without("timestamp"), "timestamp", "is required");
    }

    #[test]
    fn rejects_timestamp_wrong_type() {
        assert_err(
            with("timestamp", json!(1_700_000_000)),
            "timestamp",
            "must be a string",
        );
    }

    #[test]
    fn rejects_non_rfc3339_timestamp() {
        for bad in [
            "",
            "yesterday",
            "2026-03-13",
            "2026-03-13T20:00:00",
            "2026-13-13T20:00:00Z",
            "2026-02-30T20:00:00Z",
            "2026-03-13T25:00:00Z",
            "13/03/2026 20:00",
            "2026-03-13T20:00:00Z extra",
        ] {
            assert_err(with("timestamp", json!(bad)), "timestamp", "RFC 3339");
        }
    }

    #[test]
    fn rejects_sub_microsecond_timestamp() {
        assert_err(
            with("timestamp", json!("2026-03-13T20:00:00.1234567Z")),
            "timestamp",
            "sub-microsecond",
        );
        assert_err(
            with("timestamp", json!("2026-03-13T20:00:00.123456001Z")),
            "timestamp",
            "sub-microsecond",
        );
        // Digits past the ninth, which chrono would silently drop.
        assert_err(
            with("timestamp", json!("2026-03-13T20:00:00.1234560000001Z")),
            "timestamp",
            "sub-microsecond",
        );
    }

    #[test]
    fn rejects_leap_second() {
        assert_err(
            with("timestamp", json!("2016-12-31T23:59:60Z")),
            "timestamp",
            "leap second",
        );
    }

    #[test]
    fn rejects_timestamp_out_of_mysql_range() {
        for bad in [
            "1970-01-01T00:00:00.999999Z",
            "1969-12-31T23:59:59Z",
            "1970-01-01T01:00:00+01:00",
            "2038-01-19T03:14:08Z",
            "2038-01-19T02:14:08-01:00",
            "9999-12-31T23:59:59Z",
            "0001-01-01T00:00:00Z",
        ] {
            assert_err(
                with("timestamp", json!(bad)),
                "timestamp",
                "must be between",
            );
        }
    }

    // ---- base_version ----

    #[test]
    fn rejects_missing_base_version() {
        assert_err(without("base_version"), "base_version", "is required");
    }

    #[test]
    fn rejects_negative_base_version() {
        assert_err(
            with("base_version", json!(-1)),
            "base_version",
            "must be >= 0",
        );
    }

    #[test]
    fn rejects_float_base_version() {
        assert_err(
            with("base_version", json!(7.0)),
            "base_version",
            "must be an integer",
        );
        assert_err(
            with("base_version", json!(7.5)),
            "base_version",
            "must be an integer",
        );
        // Raw text, so the float spelling survives to the parser.
        let data = r#"{"source":"suitex","record_type":"t","record_id":"1","base_version":1e2,"timestamp":"2026-01-01T00:00:00Z","changes":{"a":1}}"#;
        assert_err(
            parse_raw_event(data.as_bytes()),
            "base_version",
            "must be an integer",
        );
    }

    #[test]
    fn rejects_string_base_version() {
        assert_err(
            with("base_version", json!("7")),
            "base_version",
            "must be an integer",
        );
        assert_err(
            with("base_version", Value::Null),
            "base_version",
            "must be an integer",
        );
    }

    #[test]
    fn rejects_base_version_beyond_i64() {
        assert_err(
            with("base_version", json!(u64::MAX)),
            "base_version",
            "out of range",
        );
    }

    // ---- changes ----

    #[test]
    fn rejects_missing_changes() {
        assert_err(without("changes"), "changes", "is required");
    }

    #[test]
    fn rejects_changes_wrong_type() {
        assert_err(with("changes", json!([1])), "changes", "must be an object");
        assert_err(with("changes", json!("x")), "changes", "must be an object");
        assert_err(with("changes", Value::Null), "changes", "must be an object");
    }

    #[test]
    fn rejects_empty_changes_without_ref() {
        assert_err(with("changes", json!({})), "changes", "must not be empty");
    }

    #[test]
    fn rejects_missing_changes_even_with_ref() {
        let mut m = valid();
        m.remove("changes");
        m.insert("full_snapshot_ref".into(), json!("gs://b/o"));
        assert_err(parse_map(&m), "changes", "is required");
    }

    // ---- full_snapshot_ref ----

    #[test]
    fn rejects_snapshot_ref_wrong_type() {
        assert_err(
            with("full_snapshot_ref", json!(1)),
            "full_snapshot_ref",
            "must be a string",
        );
    }

    #[test]
    fn rejects_snapshot_ref_bad_scheme() {
        for bad in [
            "",
            "s3://b/o",
            "https://storage.googleapis.com/b/o",
            "GS://b/o",
            "/tmp/x",
        ] {
            assert_err(
                with("full_snapshot_ref", json!(bad)),
                "full_snapshot_ref",
                "must start with gs:// or file://",
            );
        }
    }

    #[test]
    fn rejects_malformed_gs_ref() {
        for bad in ["gs://", "gs://bucket", "gs://bucket/", "gs:///object"] {
            assert_err(
                with("full_snapshot_ref", json!(bad)),
                "full_snapshot_ref",
                "gs://bucket/object",
            );
        }
    }

    #[test]
    fn rejects_empty_file_ref() {
        assert_err(
            with("full_snapshot_ref", json!("file://")),
            "full_snapshot_ref",
            "must name a file",
        );
    }
}
