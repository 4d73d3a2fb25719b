//! Error envelope and dead-letter attributes (SPEC §3.4). The data of such a
//! message is always the original data, unchanged.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

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
];

pub const LAST_ERROR_MAX: usize = 1024;
const HISTORY_MAX: usize = 8 * 1024;

/// Truncates on a char boundary so the attribute stays valid UTF-8.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

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

/// Builds the attributes of an error-topic message from the attributes of the
/// message that failed (which may itself be an envelope from an earlier try).
pub fn error_attributes(
    original: &HashMap<String, String>,
    message_id: &str,
    ordering_key: &str,
    f: &FailureInfo<'_>,
) -> HashMap<String, String> {
    let mut out: HashMap<String, String> = original
        .iter()
        .filter(|(k, _)| !OURS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
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
    let mut history = original.get(ERROR_HISTORY).cloned().unwrap_or_default();
    let line = format!(
        "{} #{}: {}",
        rfc3339(&f.now),
        f.attempt,
        truncate(f.error, 256).replace('\n', " ")
    );
    history = if history.is_empty() {
        line
    } else {
        format!("{history}\n{line}")
    };
    while history.len() > HISTORY_MAX {
        match history.find('\n') {
            Some(i) => history = history[i + 1..].to_string(),
            None => history = truncate(&history, HISTORY_MAX),
        }
    }
    out.insert(STAGE.into(), f.stage.to_string());
    out.insert(ATTEMPT.into(), f.attempt.to_string());
    out.insert(FIRST_FAILED_AT.into(), first_failed);
    out.insert(LAST_ERROR.into(), truncate(f.error, LAST_ERROR_MAX));
    out.insert(ORIGIN_MESSAGE_ID.into(), origin);
    out.insert(FINGERPRINT.into(), f.fingerprint.to_string());
    out.insert(ERROR_HISTORY.into(), history);
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
    let mut out = error_attributes(original, message_id, ordering_key, f);
    out.insert(DEAD_REASON.into(), reason.to_string());
    out.insert(DEAD_AT.into(), rfc3339(&f.now));
    out
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

    #[test]
    fn last_error_is_bounded_on_a_char_boundary() {
        let long = "é".repeat(1000);
        let a = error_attributes(&HashMap::new(), "m", "", &info(1, &long));
        assert!(a[LAST_ERROR].len() <= LAST_ERROR_MAX);
        assert!(a[LAST_ERROR].chars().all(|c| c == 'é'));
    }
}
