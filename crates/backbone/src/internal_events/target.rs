//! Pacing a delivery target (docs/spec.md §4.2): throttled answers, probes of an
//! open circuit, the circuit opening and closing.

use std::time::Duration;

use super::InternalEvent;
use crate::metrics::metrics;

/// The target answered 429, or 503 with `Retry-After`: the delivery is sent
/// again when the target allows, without consuming an attempt.
pub struct TargetThrottled<'a> {
    pub target: &'a str,
    pub status: u16,
    /// The pause it asked for, after the cap.
    pub pause: Option<Duration>,
}

impl InternalEvent for TargetThrottled<'_> {
    fn emit(self) {
        metrics()
            .target_throttled
            .with_label_values(&[self.target])
            .inc();
        match self.pause {
            Some(pause) => tracing::info!(
                target = self.target,
                status = self.status,
                pause = ?pause,
                "The target asked us to wait (Retry-After): pausing every delivery to it."
            ),
            None => tracing::debug!(
                target = self.target,
                status = self.status,
                "The target throttled a request; it is sent again at a lower concurrency."
            ),
        }
    }
}

/// One probe request went to a target whose circuit is open.
pub struct TargetProbed<'a> {
    pub target: &'a str,
}

impl InternalEvent for TargetProbed<'_> {
    fn emit(self) {
        metrics()
            .target_probes
            .with_label_values(&[self.target])
            .inc();
        tracing::info!(target = self.target, "Probing the target (circuit open).");
    }
}

/// An idle replica took a record's delivery over from the store
/// (`stages/deliver/takeover`).
pub struct RecordTakenOver<'a> {
    pub target: &'a str,
    /// `delivered`, `nothing_to_send` (covered or nothing routed), or
    /// `left` (busy, throttled, failed: its message does the rest).
    pub outcome: &'a str,
    pub record_type: &'a str,
    pub record_id: &'a str,
}

impl InternalEvent for RecordTakenOver<'_> {
    fn emit(self) {
        metrics()
            .target_taken_over
            .with_label_values(&[self.target, self.outcome])
            .inc();
        tracing::debug!(
            target = self.target,
            outcome = self.outcome,
            record_type = self.record_type,
            record_id = self.record_id,
            "Took a record's delivery over from the store."
        );
    }
}

/// The target failed every request: its deliveries are held from now on.
pub struct CircuitOpened<'a> {
    pub target: &'a str,
    /// `outage`, `auth` or `config`.
    pub cause: &'a str,
    pub error: &'a str,
}

impl InternalEvent for CircuitOpened<'_> {
    fn emit(self) {
        let why = match self.cause {
            "auth" => "The target refuses our credentials (revoked, expired, wrong account or clock)",
            "config" => "The target's answers say its configuration is wrong (a redirect, an unreadable credential)",
            _ => "The target fails every request",
        };
        tracing::warn!(
            target = self.target,
            cause = self.cause,
            error = self.error,
            "{why}: circuit open. Its deliveries are held (no attempt consumed, nothing dead-lettered) and one probe at a time tests it."
        );
    }
}

/// A probe (or a straggler) succeeded: held deliveries resume.
pub struct CircuitClosed<'a> {
    pub target: &'a str,
    pub open_for: Duration,
    pub limit: usize,
}

impl InternalEvent for CircuitClosed<'_> {
    fn emit(self) {
        tracing::info!(
            target = self.target,
            open_for = ?self.open_for,
            limit = self.limit,
            "The target answers again: circuit closed; its held deliveries resume."
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::{emit, test_support::logged};
    use super::*;

    #[test]
    fn throttled_and_probes_count_per_target() {
        let t = || {
            metrics()
                .target_throttled
                .with_label_values(&["netsuite"])
                .get()
        };
        let p = || {
            metrics()
                .target_probes
                .with_label_values(&["netsuite"])
                .get()
        };
        let (t0, p0) = (t(), p());
        let lines = logged(|| {
            emit(TargetThrottled {
                target: "netsuite",
                status: 429,
                pause: Some(Duration::from_secs(2)),
            });
            emit(TargetProbed { target: "netsuite" });
        });
        assert_eq!((t() - t0, p() - p0), (1, 1));
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0]["level"], "INFO");
    }
}
