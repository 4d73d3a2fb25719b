//! What a delivery sends (SPEC §4.1): nothing when the target is ahead or
//! nothing is routed to it, the event itself when the target is up to date
//! before it, else the fold of what the target has not acknowledged.

use bytes::Bytes;
use serde_json::json;

use super::routing::{self, Route};
use super::{fold, DeliverStage, MERGED_EVENT};
use crate::model::merged_event::MergedEvent;
use crate::stages::merge::batch::SEQUENCE_ATTRIBUTE;
use crate::stages::{store_failure, Failure, Incoming, Outcome, StageError};
use crate::store::delivery::DeliveryState;
use crate::store::delivery_log::DeliveryWrite;
use crate::store::StoreError;

/// What [`DeliverStage::plan`] decided.
pub(super) enum Plan {
    /// POST `body`, which carries these versions.
    Send { body: Bytes, versions: Vec<i64> },
    /// Nothing to send; acked with this outcome.
    Done(Outcome),
}

impl DeliverStage {
    /// What to send for `ev` (SPEC §4.1): nothing when the target already has
    /// a later merged event (`superseded`) or nothing is routed to it
    /// (`skipped`); the event itself when the target is up to date before it;
    /// otherwise it folded with what the target has not acknowledged. An event
    /// from before positions were kept (`seq` None) is routed on its own.
    pub(super) async fn plan(
        &self,
        msg: &Incoming,
        ev: &MergedEvent,
        seq: Option<i64>,
        st: DeliveryState,
        body: Bytes,
    ) -> Result<Plan, Failure> {
        let fp = &ev.fingerprint;
        let store_fail = |e: StoreError| Failure {
            error: store_failure(&e, MERGED_EVENT),
            fingerprint: Some(fp.clone()),
        };
        let earlier = match seq {
            None => Vec::new(),
            Some(seq) => {
                if seq == st.acked {
                    // Acknowledged through exactly this event without its
                    // claim (which `view` checked): it was skipped before
                    // (a redelivery), and is skipped again.
                    return Ok(Plan::Done(Outcome::ack("skipped", Some(fp.clone()))));
                }
                if seq < st.acked || seq < st.attempted {
                    // The target has (or is being sent) a later merged event,
                    // which carried this one's content: never send it back in time.
                    let detail = json!({"version": ev.version, "sequence_num": seq,
                        "acked_sequence_num": st.acked, "acked_version": st.acked_version,
                        "attempted_sequence_num": st.attempted});
                    self.audit(msg, Some(ev), fp, "superseded", detail, false)
                        .await?;
                    return Ok(Plan::Done(Outcome::ack("superseded", Some(fp.clone()))));
                }
                // Positions in between exist only when the target missed something.
                if st.acked < seq - 1 {
                    self.store
                        .timed(self.store.merged_between(
                            &ev.record_type,
                            &ev.record_id,
                            st.acked,
                            seq,
                        ))
                        .await
                        .map_err(store_fail)?
                } else {
                    Vec::new()
                }
            }
        };
        if earlier.is_empty() {
            return Ok(match routing::route(ev, self.target) {
                Route::Skip { reason } => Plan::Done(self.skip(msg, ev, seq, reason).await?),
                Route::Deliver => Plan::Send {
                    body,
                    versions: vec![ev.version],
                },
            });
        }
        match self.fold_unacknowledged(ev, earlier)? {
            Some((folded, versions)) => {
                let bytes = serde_json::to_vec(&folded).map_err(|e| Failure {
                    error: StageError::transient(format!("folded body: {e}")),
                    fingerprint: Some(fp.clone()),
                })?;
                Ok(Plan::Send {
                    body: Bytes::from(bytes),
                    versions,
                })
            }
            None => Ok(Plan::Done(
                self.skip(msg, ev, seq, "nothing routed to this target")
                    .await?,
            )),
        }
    }

    /// Nothing for the target (SPEC §4: no echo back to the source). The
    /// target is then up to date through `ev`, which is what its position
    /// records: no audit row (routing is a pure function of the merged event,
    /// and `explain` recomputes it), and the next delivery does not fold
    /// what was skipped. An event without a position keeps its audit row.
    async fn skip(
        &self,
        msg: &Incoming,
        ev: &MergedEvent,
        seq: Option<i64>,
        reason: &str,
    ) -> Result<Outcome, Failure> {
        let fp = ev.fingerprint.clone();
        match seq {
            Some(seq) => {
                let at = self.position_row(ev, seq, true);
                self.write(DeliveryWrite::Position(at), &fp).await?;
                self.known.set(
                    ev,
                    DeliveryState {
                        acked: seq,
                        acked_version: ev.version,
                        attempted: seq,
                    },
                );
                tracing::debug!(
                    target = self.target.as_str(),
                    version = ev.version,
                    reason,
                    "Merged event skipped."
                );
            }
            None => {
                self.audit(
                    msg,
                    Some(ev),
                    &fp,
                    "skipped",
                    json!({ "reason": reason }),
                    false,
                )
                .await?
            }
        }
        Ok(Outcome::ack("skipped", Some(fp)))
    }

    /// `ev` folded with the merged events the target has not acknowledged
    /// (`payloads`, read back from `merged_events` in order), and the
    /// versions folded.
    fn fold_unacknowledged(
        &self,
        ev: &MergedEvent,
        payloads: Vec<String>,
    ) -> Result<Option<(MergedEvent, Vec<i64>)>, Failure> {
        let mut versions: Vec<MergedEvent> = Vec::with_capacity(payloads.len() + 1);
        for p in payloads {
            match serde_json::from_str::<MergedEvent>(&p) {
                Ok(m) => versions.push(m),
                Err(e) => {
                    return Err(Failure {
                        error: StageError::transient(format!(
                            "stored merged event of {} is unreadable: {e}",
                            ev.ordering_key()
                        )),
                        fingerprint: Some(ev.fingerprint.clone()),
                    })
                }
            }
        }
        versions.push(ev.clone());
        let numbers = versions.iter().map(|m| m.version).collect();
        Ok(fold::fold(&versions, self.target).map(|f| (f, numbers)))
    }

    /// The merged event's position in its record's history: the attribute
    /// the merge stage sets, or the stored row for messages published before
    /// it did. `None` for events merged before positions were kept.
    pub(super) async fn position(
        &self,
        msg: &Incoming,
        ev: &MergedEvent,
    ) -> Result<Option<i64>, Failure> {
        if let Some(seq) = msg
            .attributes
            .get(SEQUENCE_ATTRIBUTE)
            .and_then(|v| v.parse::<i64>().ok())
        {
            return Ok(Some(seq));
        }
        self.store
            .timed(
                self.store
                    .merged_position(&ev.record_type, &ev.record_id, &ev.event_id),
            )
            .await
            .map_err(|e| Failure {
                error: store_failure(&e, MERGED_EVENT),
                fingerprint: Some(ev.fingerprint.clone()),
            })
    }
}
