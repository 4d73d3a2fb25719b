//! Every limit the event store puts on what it stores, in one place. The
//! raw-event validator, the park stage's truncation and the docs use these;
//! a test parses the MySQL migrations and fails when a column width and
//! its constant disagree, so a schema change cannot drift from validation.
//!
//! MySQL 8 / MariaDB are the binding backend: SQLite's TEXT columns have no
//! width, and its JSON functions accept 1000 levels of nesting.

/// `events.record_type VARCHAR(64)` (and every other `record_type` column).
pub const RECORD_TYPE_MAX: usize = 64;

/// `events.record_id VARCHAR(191)`: 191 is the longest utf8mb4 string an
/// InnoDB index prefix of 767 bytes can hold. The column counts characters;
/// the validator counts bytes (docs/spec.md §3.1), which is stricter.
pub const RECORD_ID_MAX: usize = 191;

/// `events.source VARCHAR(16)`.
pub const SOURCE_MAX: usize = 16;

/// `events.id CHAR(36)`: a hyphenated UUID.
pub const EVENT_ID_LEN: usize = 36;

/// `events.full_snapshot_ref VARCHAR(1024)` (characters).
pub const SNAPSHOT_REF_MAX: usize = 1024;

/// `fingerprint CHAR(64)`: lowercase hex SHA-256.
pub const FINGERPRINT_LEN: usize = 64;

/// `message_id` / `dlq_message_id` / `origin_message_id VARCHAR(128)`.
pub const MESSAGE_ID_MAX: usize = 128;

/// `stage VARCHAR(32)` (audit log and dead letters).
pub const STAGE_MAX: usize = 32;

/// `dead_letters.reason` and `event_audit_log.processing_outcome VARCHAR(32)`.
pub const REASON_MAX: usize = 32;

/// `ordering_key VARCHAR(300)` (outbox, dead letters); holds
/// `{record_type}:{record_id}` at their maximum widths.
pub const ORDERING_KEY_MAX: usize = 300;

/// `dead_letters.source_subscription VARCHAR(255)`.
pub const SUBSCRIPTION_MAX: usize = 255;

/// `dead_letters.last_error TEXT`: 65,535 bytes.
pub const TEXT_MAX_BYTES: usize = 65_535;

/// Deepest JSON document MariaDB's `JSON` columns accept: their implicit
/// `CHECK (json_valid(…))` refuses 32 nested arrays/objects (error 4025).
/// Counted as containers: a scalar is 0, `{}` is 1, `{"a":[1]}` is 2.
/// (MySQL 8 allows 100, SQLite 1000.)
pub const DB_JSON_MAX_DEPTH: usize = 31;

/// `record_state.state` wraps every changed value in two objects
/// (`{"fields": {name: {"value": …}}}` around the value, where `changes`
/// has one): a value nested `n` deep in `changes` is `n + 2` deep there.
pub const STATE_EXTRA_DEPTH: usize = 2;

/// Deepest `changes` object the store accepts, the object itself counting
/// as level 1: MariaDB's limit less what the record state adds.
pub const CHANGES_MAX_DEPTH: usize = DB_JSON_MAX_DEPTH - STATE_EXTRA_DEPTH;

/// Nesting limit of a whole raw event document (docs/spec.md §10). Fields the
/// daemon ignores are never stored as JSON, so only `changes` is held to
/// the stricter [`CHANGES_MAX_DEPTH`].
pub const DOCUMENT_MAX_DEPTH: usize = 64;

/// Pub/Sub's limit on a message (data plus attributes): 10 MB.
pub const PUBSUB_MESSAGE_MAX_BYTES: usize = 10_000_000;

/// MariaDB's default `max_allowed_packet` (16 MiB), the smallest a
/// supported server ships with (MySQL 8: 64 MiB). One statement — one
/// event row, one record state, one merged event — must fit in it.
pub const MIN_MAX_ALLOWED_PACKET: usize = 16 * 1024 * 1024;

/// Largest `changes` (inline or from a snapshot ref), as compact JSON:
/// half a packet, so the event row and a merged event carrying these
/// changes plus the values they conflicted with each fit in one statement.
pub const CHANGES_MAX_BYTES: usize = MIN_MAX_ALLOWED_PACKET / 2;

/// Bytes of bound values a multi-row statement carries before the rest of
/// a batch goes into another statement (well inside one packet).
pub const STATEMENT_MAX_BYTES: usize = MIN_MAX_ALLOWED_PACKET / 4;

/// `TIMESTAMP(6)`: 1970-01-01T00:00:01Z, in seconds since the epoch.
pub const TIMESTAMP_MIN_SECS: i64 = 1;
/// `TIMESTAMP(6)`: 2038-01-19T03:14:07.999999Z (the signed 32-bit limit).
pub const TIMESTAMP_MAX_SECS: i64 = i32::MAX as i64;
pub const TIMESTAMP_MAX_MICROS: u32 = 999_999;
/// The bounds as the docs and error messages spell them.
pub const TIMESTAMP_MIN: &str = "1970-01-01T00:00:01Z";
pub const TIMESTAMP_MAX: &str = "2038-01-19T03:14:07.999999Z";

/// Nesting depth of a JSON value as [`DB_JSON_MAX_DEPTH`] counts it,
/// stopping once `cap` is exceeded (the result is then `cap + 1`), so a
/// hostile document costs no more than `cap` levels of recursion.
pub fn json_depth(v: &serde_json::Value, cap: usize) -> usize {
    use serde_json::Value;
    fn deepest<'a>(children: impl Iterator<Item = &'a Value>, cap: usize) -> usize {
        if cap == 0 {
            return 1;
        }
        let mut max = 0;
        for c in children {
            max = max.max(json_depth(c, cap - 1));
            if max >= cap {
                break;
            }
        }
        1 + max
    }
    match v {
        Value::Array(a) => deepest(a.iter(), cap),
        Value::Object(o) => deepest(o.values(), cap),
        _ => 0,
    }
}

/// Compact JSON length of `v` (what `serde_json::to_string` would
/// produce), without building the string.
pub fn json_len<T: serde::Serialize + ?Sized>(v: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    // Writing JSON values to an infallible sink cannot fail.
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

/// The longest prefix of `s` with at most `max` characters (a VARCHAR
/// width counts characters).
pub fn truncate_chars(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((end, _)) => &s[..end],
        None => s,
    }
}

/// The longest prefix of `s` with at most `max` bytes, cut on a char
/// boundary (TEXT widths count bytes).
pub fn truncate_bytes(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn derived_limits_fit_their_columns() {
        // The ordering key of the widest record fits the ordering_key column.
        const { assert!(RECORD_TYPE_MAX + 1 + RECORD_ID_MAX <= ORDERING_KEY_MAX) };
        assert!("netsuite".len() <= SOURCE_MAX && "suitex".len() <= SOURCE_MAX);
        assert_eq!(uuid::Uuid::nil().to_string().len(), EVENT_ID_LEN);
        assert_eq!(CHANGES_MAX_DEPTH, 29);
        const { assert!(CHANGES_MAX_BYTES < PUBSUB_MESSAGE_MAX_BYTES) };
        const { assert!(STATEMENT_MAX_BYTES + CHANGES_MAX_BYTES < MIN_MAX_ALLOWED_PACKET) };
    }

    #[test]
    fn timestamp_bounds_spelled_as_computed() {
        let parse = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap();
        assert_eq!(parse(TIMESTAMP_MIN).timestamp(), TIMESTAMP_MIN_SECS);
        let max = parse(TIMESTAMP_MAX);
        assert_eq!(max.timestamp(), TIMESTAMP_MAX_SECS);
        assert_eq!(max.timestamp_subsec_micros(), TIMESTAMP_MAX_MICROS);
    }

    #[test]
    fn depth_counts_containers() {
        assert_eq!(json_depth(&json!(1), 64), 0);
        assert_eq!(json_depth(&json!({}), 64), 1);
        assert_eq!(json_depth(&json!({"a": [1, {"b": []}]}), 64), 4);
        assert_eq!(json_depth(&json!({"a": [1, {"b": 2}]}), 64), 3);
        let deep: serde_json::Value =
            serde_json::from_str(&format!("{}{}", "[".repeat(100), "]".repeat(100))).unwrap();
        assert_eq!(json_depth(&deep, 200), 100);
        assert_eq!(json_depth(&deep, 10), 11, "stops past the cap");
    }

    #[test]
    fn length_and_truncation() {
        let v = json!({"a": "é\n", "b": [1, 2.5, null]});
        assert_eq!(json_len(&v), serde_json::to_string(&v).unwrap().len());
        assert_eq!(truncate_chars("héllo", 2), "hé");
        assert_eq!(truncate_chars("hé", 5), "hé");
        assert_eq!(truncate_bytes("hé", 2), "h");
        assert_eq!(truncate_bytes("hé", 3), "hé");
    }
}
