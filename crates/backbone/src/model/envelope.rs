//! Error envelope and dead-letter attributes (docs/spec.md §3.4). The data of such a
//! message is always the original data, unchanged.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::message_limits;
// Where callers have always found it; it lives with the limits it serves.
pub use super::message_limits::truncate;

pub const STAGE: &str = "stage";
pub const ATTEMPT: &str = "attempt";
pub const FIRST_FAILED_AT: &str = "first_failed_at";
pub const LAST_ERROR: &str = "last_error";
pub const ORIGIN_MESSAGE_ID: &str = "origin_message_id";
pub const FINGERPRINT: &str = "fingerprint";
pub const DEAD_REASON: &str = "dead_reason";
pub const DEAD_AT: &str = "dead_at";
pub const REPLAY: &str = "replay";
/// The ordering key of the original message, kept so a retried stage can
/// republish with it (error and dlq topics are not ordered).
pub const ORDERING_KEY: &str = "ordering_key";
/// Error history: one line per failed execution, newest last (bounded).
pub const ERROR_HISTORY: &str = "error_history";
/// A lower bound for the next try (a sink's `Retry-After`), set only by the
/// failure that asked for it.
pub const RETRY_AFTER_MS: &str = "retry_after_ms";

/// Attributes the broker adds when it dead-letters a message itself.
pub const BROKER_DLQ_SOURCE_SUBSCRIPTION: &str = "CloudPubSubDeadLetterSourceSubscription";
pub const BROKER_DLQ_DELIVERY_COUNT: &str = "CloudPubSubDeadLetterSourceDeliveryCount";

/// How many of the original message's attributes an envelope left out to
/// stay within Pub/Sub's limits (absent when none), counting those an
/// earlier envelope of the same message left out.
pub const ATTRIBUTES_DROPPED: &str = "attributes_dropped";
/// Set by a DLQ replay on the message it republishes: the `dead_letters`
/// row to reopen if the message dies again. Carried by every later envelope.
pub const REPLAY_OF: &str = "replay_of";

/// Attributes of our own envelope: dropped from the original attributes
/// before a new envelope is written, so they never pile up.
const OURS: &[&str] = &[
    STAGE,
    ATTEMPT,
    FIRST_FAILED_AT,
    LAST_ERROR,
    ORIGIN_MESSAGE_ID,
    FINGERPRINT,
    DEAD_REASON,
    DEAD_AT,
    REPLAY,
    ORDERING_KEY,
    ERROR_HISTORY,
    RETRY_AFTER_MS,
    ATTRIBUTES_DROPPED,
];

/// The original's attributes kept before any other: the replay link and
/// the publisher's trace context.
const CARRIED_FIRST: &[&str] = &[REPLAY_OF, "googclient_traceparent", "traceparent"];

/// Room kept for what we set ourselves (every attribute in [`OURS`] plus
/// [`REPLAY_OF`]): the original's attributes get the rest of Pub/Sub's 100.
pub const RESERVED_ATTRIBUTES: usize = OURS.len() + 1;

/// The most of the original's attributes an envelope carries.
pub const MAX_CARRIED_ATTRIBUTES: usize = message_limits::MAX_ATTRIBUTES - RESERVED_ATTRIBUTES;

pub const LAST_ERROR_MAX: usize = 1024;
/// `error_history`: at most one attribute value, newest lines kept.
pub const HISTORY_MAX: usize = message_limits::ATTRIBUTE_VALUE_MAX_BYTES;
/// The error's excerpt in one history line: five lines (the default
/// attempts) of a long error still fit in [`HISTORY_MAX`].
const HISTORY_LINE_ERROR_MAX: usize = 160;

fn rfc3339(t: &DateTime<Utc>) -> String {
    crate::model::fingerprint::format_timestamp(t)
}

/// What is known about a failed execution.
#[derive(Debug, Clone)]
pub struct FailureInfo<'a> {
    pub stage: &'a str,
    /// Failed executions so far, including this one (1-based).
    pub attempt: u32,
    pub error: &'a str,
    pub fingerprint: &'a str,
    pub now: DateTime<Utc>,
}

/// Builds a message's attributes within Pub/Sub's limits: `ours` (each
/// value cut to the limit) plus as many of `original`'s other attributes as
/// leave room for ours — the replay link and trace context first, then by
/// key; one that is too long on its own is left out. How many were left out
/// (with those an earlier envelope left out) goes in [`ATTRIBUTES_DROPPED`].
pub fn within_limits(
    ours: HashMap<String, String>,
    original: &HashMap<String, String>,
) -> HashMap<String, String> {
    let mut theirs: Vec<(&String, &String)> = original
        .iter()
        .filter(|(k, _)| !OURS.contains(&k.as_str()) && !ours.contains_key(k.as_str()))
        .collect();
    theirs.sort_by(|a, b| {
        let rank = |k: &str| {
            CARRIED_FIRST
                .iter()
                .position(|c| *c == k)
                .unwrap_or(CARRIED_FIRST.len())
        };
        (rank(a.0), a.0).cmp(&(rank(b.0), b.0))
    });
    let mut dropped: usize = original
        .get(ATTRIBUTES_DROPPED)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut out = HashMap::with_capacity(message_limits::MAX_ATTRIBUTES);
    for (k, v) in theirs {
        if out.len() < MAX_CARRIED_ATTRIBUTES && message_limits::attribute_fits(k, v) {
            out.insert(k.clone(), v.clone());
        } else {
            dropped += 1;
        }
    }
    for (k, v) in ours {
        let v = truncate(&v, message_limits::ATTRIBUTE_VALUE_MAX_BYTES);
        out.insert(k, v);
    }
    if dropped > 0 {
        out.insert(ATTRIBUTES_DROPPED.into(), dropped.to_string());
    }
    out
}

/// The history with this failure's line appended, cut to [`HISTORY_MAX`]
/// bytes: the oldest lines go first.
fn grown_history(previous: Option<&String>, f: &FailureInfo<'_>) -> String {
    let line = format!(
        "{} #{}: {}",
        rfc3339(&f.now),
        f.attempt,
        truncate(f.error, HISTORY_LINE_ERROR_MAX).replace('\n', " ")
    );
    let mut lines: Vec<&str> = previous
        .map(|h| h.lines().filter(|l| !l.is_empty()).collect())
        .unwrap_or_default();
    lines.push(&line);
    let mut kept: Vec<&str> = Vec::new();
    let mut len = 0;
    for l in lines.iter().rev() {
        let add = l.len() + usize::from(!kept.is_empty());
        if len + add > HISTORY_MAX {
            break;
        }
        len += add;
        kept.push(l);
    }
    if kept.is_empty() {
        // The newest line alone is too long (cannot happen with the
        // excerpt bound above, kept safe all the same).
        return truncate(&line, HISTORY_MAX);
    }
    kept.reverse();
    kept.join("\n")
}

/// Builds the attributes of an error-topic message from the attributes of the
/// message that failed (which may itself be an envelope from an earlier try).
pub fn error_attributes(
    original: &HashMap<String, String>,
    message_id: &str,
    ordering_key: &str,
    f: &FailureInfo<'_>,
) -> HashMap<String, String> {
    within_limits(ours(original, message_id, ordering_key, f), original)
}

/// Our envelope attributes for this failure (without the original's).
fn ours(
    original: &HashMap<String, String>,
    message_id: &str,
    ordering_key: &str,
    f: &FailureInfo<'_>,
) -> HashMap<String, String> {
    let first_failed = original
        .get(FIRST_FAILED_AT)
        .filter(|_| original.get(REPLAY).map(String::as_str) != Some("true"))
        .cloned()
        .unwrap_or_else(|| rfc3339(&f.now));
    let origin = original
        .get(ORIGIN_MESSAGE_ID)
        .cloned()
        .unwrap_or_else(|| message_id.to_string());
    let key = original
        .get(ORDERING_KEY)
        .cloned()
        .unwrap_or_else(|| ordering_key.to_string());
    let mut out = HashMap::new();
    out.insert(STAGE.into(), f.stage.to_string());
    out.insert(ATTEMPT.into(), f.attempt.to_string());
    out.insert(FIRST_FAILED_AT.into(), first_failed);
    out.insert(LAST_ERROR.into(), truncate(f.error, LAST_ERROR_MAX));
    out.insert(ORIGIN_MESSAGE_ID.into(), origin);
    out.insert(FINGERPRINT.into(), f.fingerprint.to_string());
    out.insert(
        ERROR_HISTORY.into(),
        grown_history(original.get(ERROR_HISTORY), f),
    );
    if !key.is_empty() {
        out.insert(ORDERING_KEY.into(), key);
    }
    out
}

/// Dead-letter attributes: the error envelope plus `dead_reason` and `dead_at`.
pub fn dead_letter_attributes(
    original: &HashMap<String, String>,
    message_id: &str,
    ordering_key: &str,
    f: &FailureInfo<'_>,
    reason: &str,
) -> HashMap<String, String> {
    let mut o = ours(original, message_id, ordering_key, f);
    o.insert(DEAD_REASON.into(), reason.to_string());
    o.insert(DEAD_AT.into(), rfc3339(&f.now));
    within_limits(o, original)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(attempt: u32, err: &str) -> FailureInfo<'_> {
        FailureInfo {
            stage: "merge",
            attempt,
            error: err,
            fingerprint: "ab",
            now: Utc::now(),
        }
    }

    #[test]
    fn an_earlier_retry_after_is_not_carried_into_a_later_envelope() {
        // Execution 1 failed with a Retry-After; the runtime added it to
        // its envelope. Execution 2 failed without one: its envelope must
        // not make execution 3 wait on the stale value.
        let mut first = error_attributes(&HashMap::new(), "m1", "k", &info(1, "429"));
        first.insert(RETRY_AFTER_MS.into(), "60000".into());
        let second = error_attributes(&first, "m2", "k", &info(2, "503"));
        assert_eq!(second.get(RETRY_AFTER_MS), None);
        assert_eq!(second.get(ATTEMPT).map(String::as_str), Some("2"));
    }

    #[test]
    fn first_failure_sets_every_attribute() {
        let orig = HashMap::from([("x".to_string(), "1".to_string())]);
        let a = error_attributes(&orig, "m1", "project:42", &info(1, "boom"));
        assert_eq!(a["x"], "1");
        assert_eq!(a[STAGE], "merge");
        assert_eq!(a[ATTEMPT], "1");
        assert_eq!(a[ORIGIN_MESSAGE_ID], "m1");
        assert_eq!(a[LAST_ERROR], "boom");
        assert_eq!(a[ORDERING_KEY], "project:42");
        assert!(a[FIRST_FAILED_AT].ends_with('Z'));
    }

    #[test]
    fn later_failures_keep_origin_and_first_failure_and_grow_history() {
        let orig = HashMap::new();
        let a1 = error_attributes(&orig, "m1", "k", &info(1, "one"));
        let a2 = error_attributes(&a1, "m2", "", &info(2, "two"));
        assert_eq!(a2[ORIGIN_MESSAGE_ID], "m1");
        assert_eq!(a2[FIRST_FAILED_AT], a1[FIRST_FAILED_AT]);
        assert_eq!(a2[ORDERING_KEY], "k");
        assert_eq!(a2[ERROR_HISTORY].lines().count(), 2);
        let d = dead_letter_attributes(&a2, "m3", "", &info(3, "three"), "exhausted");
        assert_eq!(d[DEAD_REASON], "exhausted");
        assert_eq!(d[ATTEMPT], "3");
    }

    fn within_pubsub_limits(a: &HashMap<String, String>) {
        if let Err(e) = message_limits::check(0, a, "") {
            panic!("{e}: {a:?}");
        }
    }

    #[test]
    fn a_message_with_many_attributes_gets_an_envelope_pubsub_accepts() {
        // Issue 31: 101 attributes on the failed message used to become 111
        // on its envelope, which real Pub/Sub refuses (held forever).
        let mut orig: HashMap<String, String> = (0..101)
            .map(|i| (format!("attr{i:03}"), "v".repeat(10)))
            .collect();
        orig.insert("traceparent".into(), "00-ab-cd-01".into());
        orig.insert("long".into(), "x".repeat(2000));
        let a = error_attributes(&orig, "m1", "k", &info(1, "boom"));
        within_pubsub_limits(&a);
        assert_eq!(a.len(), MAX_CARRIED_ATTRIBUTES + 9, "{}", a.len());
        assert_eq!(a[STAGE], "merge");
        assert_eq!(a["traceparent"], "00-ab-cd-01", "trace context first");
        assert!(a.contains_key("attr000") && !a.contains_key("long"));
        let carried = a
            .keys()
            .filter(|k| k.starts_with("attr") && *k != ATTRIBUTES_DROPPED)
            .count();
        assert_eq!(carried, MAX_CARRIED_ATTRIBUTES - 1);
        let dropped: usize = a[ATTRIBUTES_DROPPED].parse().unwrap();
        assert_eq!(dropped, 103 - MAX_CARRIED_ATTRIBUTES);
        // The next envelopes stay within the limits and keep the count.
        let d = dead_letter_attributes(&a, "m2", "", &info(2, "again"), "exhausted");
        within_pubsub_limits(&d);
        assert_eq!(d[ATTRIBUTES_DROPPED], a[ATTRIBUTES_DROPPED]);
        assert_eq!(d[DEAD_REASON], "exhausted");
        // Nothing dropped, nothing said.
        let small = error_attributes(&HashMap::new(), "m", "", &info(1, "x"));
        assert!(!small.contains_key(ATTRIBUTES_DROPPED));
    }

    #[test]
    fn error_history_keeps_the_newest_lines_within_one_attribute_value() {
        // Issue 31: a ~900-byte 502 page five times made 1,444 bytes.
        let page = format!("HTTP 502: <html>{}</html>", "Bad Gateway ".repeat(75));
        let mut a = HashMap::new();
        for attempt in 1..=5 {
            a = error_attributes(&a, "m", "k", &info(attempt, &page));
            within_pubsub_limits(&a);
            assert!(a[ERROR_HISTORY].len() <= HISTORY_MAX);
        }
        assert_eq!(
            a[ERROR_HISTORY].lines().count(),
            5,
            "one line per execution"
        );
        for attempt in 6..=12 {
            a = error_attributes(&a, "m", "k", &info(attempt, &page));
            assert!(a[ERROR_HISTORY].len() <= HISTORY_MAX);
        }
        let lines: Vec<&str> = a[ERROR_HISTORY].lines().collect();
        assert!(
            lines.last().unwrap().contains("#12: HTTP 502"),
            "newest kept"
        );
        assert!(!a[ERROR_HISTORY].contains("#1: "), "oldest gone");
    }

    #[test]
    fn last_error_is_bounded_on_a_char_boundary() {
        let long = "é".repeat(1000);
        let a = error_attributes(&HashMap::new(), "m", "", &info(1, &long));
        assert!(a[LAST_ERROR].len() <= LAST_ERROR_MAX);
        assert!(a[LAST_ERROR].chars().all(|c| c == 'é'));
    }
}
