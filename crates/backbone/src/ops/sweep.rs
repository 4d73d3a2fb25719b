//! The daemon's operator upkeep (docs/spec.md §7.1), one task per process:
//!
//! - every [`CONTROLS_EVERY`], the targets' pauses are read from the
//!   database and applied to this process's pacers, so every replica obeys
//!   a `targets pause` within seconds;
//! - replays another process recorded (the CLI's) are counted into this
//!   process's `backbone_dlq_replayed_total`, and the parked gauge is
//!   recounted (a discard elsewhere lowers it);
//! - every [`RESOLVE_EVERY`], parked delivery dead letters whose target has
//!   since acknowledged a later position of their record are marked
//!   `superseded` (actor `auto`): convergent delivery made them obsolete.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Actor;
use crate::internal_events::{emit, DeadLettersReplayedElsewhere, DeadLettersSuperseded};
use crate::stages::deliver::pacing::{OperatorPause, Pacer};
use crate::store::dlq_status::{DlqStatus, SupersedeCandidate};
use crate::store::{Store, StoreError};

pub const CONTROLS_EVERY: Duration = Duration::from_secs(2);
pub const RESOLVE_EVERY: Duration = Duration::from_secs(10);
/// A kept failed request whose dead letter never came (the delivery
/// succeeded on a retry) is forgotten after this long.
const FAILURES_KEPT: chrono::Duration = chrono::Duration::days(7);
/// Candidates looked at per auto-resolve pass.
const RESOLVE_BATCH: i64 = 500;

/// Runs until `shutdown`.
pub async fn run(store: Store, pacers: Vec<Arc<Pacer>>, shutdown: CancellationToken) {
    let mut watermark = match store.audit_max_id().await {
        Ok(id) => id,
        Err(e) => {
            tracing::warn!(error = %e, "Could not read the audit log's position; replays by other processes are counted from the first one seen.");
            0
        }
    };
    let mut last_resolve = tokio::time::Instant::now();
    loop {
        if let Err(e) = apply_controls(&store, &pacers).await {
            tracing::warn!(error = %e, "Could not read the targets' pauses; keeping the last ones read.");
        }
        match store.replays_recorded_after(watermark).await {
            Ok((max, n)) => {
                watermark = watermark.max(max);
                if n > 0 {
                    emit(DeadLettersReplayedElsewhere { count: n as u64 });
                }
            }
            Err(e) => tracing::debug!(error = %e, "Could not read replays from the audit log."),
        }
        if last_resolve.elapsed() >= RESOLVE_EVERY {
            last_resolve = tokio::time::Instant::now();
            match resolve(&store).await {
                Ok(0) => {}
                Ok(count) => emit(DeadLettersSuperseded { count }),
                Err(e) => {
                    tracing::warn!(error = %e, "Auto-resolve of dead letters failed; trying again later.")
                }
            }
            if let Err(e) = store.forget_old_delivery_failures(FAILURES_KEPT).await {
                tracing::debug!(error = %e, "Could not forget old failed requests.");
            }
        }
        if let Ok(n) = store.pending_dead_letters().await {
            crate::metrics::set_dead_letters_parked(n);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(CONTROLS_EVERY) => {}
        }
    }
}

/// Applies the stored pauses to this process's pacers.
pub async fn apply_controls(store: &Store, pacers: &[Arc<Pacer>]) -> Result<(), StoreError> {
    let controls = store.target_controls().await?;
    for p in pacers {
        let pause = controls
            .iter()
            .find(|c| c.target == p.target() && c.paused)
            .map(|c| OperatorPause {
                actor: c.actor.clone(),
                reason: c.reason.clone(),
                since: c.changed_at.clone(),
            });
        if pause.is_some() != p.operator_pause().is_some() {
            tracing::warn!(
                target = p.target(),
                paused = pause.is_some(),
                "Applying an operator's pause or resume of the target."
            );
        }
        p.set_operator_pause(pause);
    }
    Ok(())
}

/// Whether the target's acknowledged position is past the dead letter's.
pub fn superseded(c: &SupersedeCandidate) -> bool {
    let attrs: HashMap<String, String> = serde_json::from_str(&c.attributes).unwrap_or_default();
    let num = |k: &str| attrs.get(k).and_then(|v| v.parse::<i64>().ok());
    match (num("sequence_num"), num("version")) {
        (Some(seq), _) => c.acked_seq > seq,
        (None, Some(version)) => c.acked_version > version,
        (None, None) => false,
    }
}

/// One auto-resolve pass: how many dead letters it closed.
pub async fn resolve(store: &Store) -> Result<usize, StoreError> {
    let mut closed = 0;
    for c in store.supersede_candidates(RESOLVE_BATCH).await? {
        if !superseded(&c) {
            continue;
        }
        let why = format!(
            "the target acknowledged position {} (version {}) of the record since",
            c.acked_seq, c.acked_version
        );
        closed += store
            .change_dead_letter_status(
                &[c.id],
                &[DlqStatus::Parked],
                DlqStatus::Superseded,
                Actor::auto().as_str(),
                Some(&why),
            )
            .await?
            .len();
    }
    Ok(closed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(attrs: &str, acked_seq: i64, acked_version: i64) -> SupersedeCandidate {
        SupersedeCandidate {
            id: 1,
            attributes: attrs.into(),
            acked_seq,
            acked_version,
        }
    }

    #[test]
    fn only_a_later_acknowledged_position_supersedes() {
        assert!(superseded(&cand(
            r#"{"sequence_num":"3","version":"3"}"#,
            4,
            4
        )));
        assert!(!superseded(&cand(
            r#"{"sequence_num":"3","version":"3"}"#,
            3,
            3
        )));
        assert!(superseded(&cand(r#"{"version":"2"}"#, 0, 5)));
        assert!(
            !superseded(&cand(r#"{}"#, 9, 9)),
            "no position: left to the operator"
        );
    }
}
