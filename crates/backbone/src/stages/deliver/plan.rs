//! What a delivery sends (docs/spec.md §4.1): nothing when the target is ahead or
//! nothing is routed to it, the event itself when it is the only version the
//! target has not acknowledged, else the fold of every version after the
//! target's position up to the newest merged in the store — so a record's
//! burst goes out as one request, and the later versions' messages find
//! themselves `covered`.

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde_json::json;

use super::routing::{self, Route};
use super::{fold, DeliverStage, MERGED_EVENT};
use crate::model::merged_event::MergedEvent;
use crate::stages::merge::batch::{RAW_PUBLISHED_ATTRIBUTE, SEQUENCE_ATTRIBUTE};
use crate::stages::{store_failure, Failure, Incoming, Outcome, StageError};
use crate::store::delivery::DeliveryState;
use crate::store::delivery_log::DeliveryWrite;
use crate::store::StoreError;

/// Merged events folded into one request at most: a record with more
/// unacknowledged versions sends the rest with its next message.
const FOLD_MAX: i64 = 1000;

/// What [`DeliverStage::plan`] decided.
pub(super) enum Plan {
    /// POST `body`, which carries these versions.
    Send(Send),
    /// Nothing to send; acked with this outcome.
    Done(Outcome),
}

/// A request to make.
#[derive(Clone)]
pub(super) struct Send {
    pub body: Bytes,
    /// The versions it carries.
    pub versions: Vec<i64>,
    /// Its idempotency key: the fingerprint of the newest version it carries.
    pub key: String,
    /// The newest position and version it carries, which the target stands
    /// at once it answers 2xx (`None`: a merged event without a position).
    pub through: Option<(i64, i64)>,
}

/// A message delivered live for the first time (not a retry, not a replay):
/// one whose content already went out needs no audit row of its own.
pub(super) fn first_live(msg: &Incoming) -> bool {
    msg.execution <= 1
        && msg
            .attributes
            .get(crate::model::envelope::REPLAY)
            .map(String::as_str)
            != Some("true")
}

/// When the broker took the raw message whose merge published `msg`
/// (`RAW_PUBLISHED_ATTRIBUTE`; absent on messages the outbox relay or an
/// older version published).
pub(super) fn raw_published(msg: &Incoming) -> Option<DateTime<Utc>> {
    msg.attributes
        .get(RAW_PUBLISHED_ATTRIBUTE)
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// How long a record's first live delivery still waits for the rest of its
/// burst (`targets.<t>.coalesce`): until its merged event is `coalesce` old.
/// Not at all when its change reached the merge only that long after it was
/// sent (a dead replica's raw message redelivered ~10 s later, a backlog
/// after an outage): the burst around it is as old, and waiting again would
/// only add latency; what is still being merged of it goes with the next
/// request (or this one, re-planned after a wait for the target's permit).
pub(super) fn settle_wait(
    coalesce: Duration,
    now: DateTime<Utc>,
    merged_published: DateTime<Utc>,
    raw_published: Option<DateTime<Utc>>,
) -> Duration {
    let since = |t: DateTime<Utc>, later: DateTime<Utc>| (later - t).to_std().unwrap_or_default();
    if raw_published.is_some_and(|raw| since(raw, merged_published) >= coalesce) {
        return Duration::ZERO;
    }
    coalesce.saturating_sub(since(merged_published, now))
}

impl DeliverStage {
    /// What to send for `ev` (docs/spec.md §4.1): nothing when the target already has
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
        let Some(seq) = seq else {
            // Before positions were kept: routed on its own.
            return Ok(match routing::route(ev, self.target) {
                Route::Skip { reason } => Plan::Done(self.skip(msg, ev, None, reason).await?),
                Route::Deliver => Plan::Send(Send {
                    body,
                    versions: vec![ev.version],
                    key: fp.clone(),
                    through: None,
                }),
            });
        };
        if seq <= st.acked && first_live(msg) {
            // Acknowledged through this event without its claim (which
            // `view` checked): an earlier request of the record carried it,
            // or it was skipped and this is a redelivery.
            return Ok(Plan::Done(self.covered(ev, seq)));
        }
        if seq == st.acked {
            // A retry or replay of an event the target is exactly up to date with.
            return Ok(Plan::Done(Outcome::ack("skipped", Some(fp.clone()))));
        }
        // A request for a later position may have been started (and may
        // have reached the target) without its answer recorded: what goes
        // out now folds up to the newest merged event, never below it, so
        // the target cannot go back in time (P1) and nothing is dropped.
        if seq < st.acked {
            // The target acknowledged a later merged event, which carried
            // this one's content: never send it back in time.
            let detail = json!({"version": ev.version, "sequence_num": seq,
                "acked_sequence_num": st.acked, "acked_version": st.acked_version,
                "attempted_sequence_num": st.attempted});
            self.audit(msg, Some(ev), fp, "superseded", detail, false)
                .await?;
            return Ok(Plan::Done(Outcome::ack("superseded", Some(fp.clone()))));
        }
        // Every version after the target's position, up to the newest.
        let rows = self
            .store
            .timed(
                self.store
                    .merged_after(&ev.record_type, &ev.record_id, st.acked, FOLD_MAX),
            )
            .await
            .map_err(store_fail)?;
        if rows.len() <= 1 || rows.iter().all(|r| r.sequence_num == seq) {
            return Ok(match routing::route(ev, self.target) {
                Route::Skip { reason } => {
                    Plan::Done(self.skip(msg, ev, Some((seq, ev.version)), reason).await?)
                }
                Route::Deliver => Plan::Send(Send {
                    body,
                    versions: vec![ev.version],
                    key: fp.clone(),
                    through: Some((seq, ev.version)),
                }),
            });
        }
        let through = rows.last().map(|r| (r.sequence_num, r.version));
        match self.fold_unacknowledged(ev, rows)? {
            Some((folded, versions)) => {
                let bytes = serde_json::to_vec(&folded).map_err(|e| Failure {
                    error: StageError::transient(format!("folded body: {e}")),
                    fingerprint: Some(fp.clone()),
                })?;
                Ok(Plan::Send(Send {
                    body: Bytes::from(bytes),
                    versions,
                    key: folded.fingerprint.clone(),
                    through,
                }))
            }
            None => Ok(Plan::Done(
                self.skip(msg, ev, through, "nothing routed to this target")
                    .await?,
            )),
        }
    }

    /// A live message whose content an earlier request of its record
    /// already carried (a burst sent as one request): acked without a
    /// request or an audit row of its own, counted.
    pub(super) fn covered(&self, ev: &MergedEvent, seq: i64) -> Outcome {
        tracing::debug!(
            target = self.target.as_str(),
            version = ev.version,
            sequence_num = seq,
            "Merged event covered by an earlier request of its record."
        );
        Outcome::ack("covered", Some(ev.fingerprint.clone()))
    }

    /// Nothing for the target (docs/spec.md §4: no echo back to the source). The
    /// target is then up to date through `ev`, which is what its position
    /// records: no audit row (routing is a pure function of the merged event,
    /// and `explain` recomputes it), and the next delivery does not fold
    /// what was skipped. An event without a position keeps its audit row.
    async fn skip(
        &self,
        msg: &Incoming,
        ev: &MergedEvent,
        through: Option<(i64, i64)>,
        reason: &str,
    ) -> Result<Outcome, Failure> {
        let fp = ev.fingerprint.clone();
        match through {
            Some((seq, version)) => {
                let at = self.position_row(ev, seq, version, true);
                self.write(DeliveryWrite::Position(at), &fp).await?;
                self.known.set(
                    ev,
                    DeliveryState {
                        acked: seq,
                        acked_version: version,
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

    /// The merged events the target has not acknowledged (`rows`, read
    /// back from `merged_events` in order, `ev` among them) folded, and the
    /// versions folded.
    fn fold_unacknowledged(
        &self,
        ev: &MergedEvent,
        rows: Vec<crate::store::merged::MergedRow>,
    ) -> Result<Option<(MergedEvent, Vec<i64>)>, Failure> {
        let mut versions: Vec<MergedEvent> = Vec::with_capacity(rows.len());
        for r in rows {
            match serde_json::from_str::<MergedEvent>(&r.payload) {
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use chrono::TimeZone;

    use super::*;

    fn at(ms: i64) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(1_800_000_000_000 + ms).unwrap()
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn a_live_change_waits_until_its_merged_event_is_coalesce_old() {
        // Raw at 0, merged at 120 ms, now 320 ms: 800 ms of the second left.
        let left = settle_wait(SECOND, at(320), at(120), Some(at(0)));
        assert_eq!(left, Duration::from_millis(800));
        // Without the attribute (the outbox relay's publish): the same.
        assert_eq!(settle_wait(SECOND, at(320), at(120), None), left);
        // Already that old: no wait.
        assert_eq!(
            settle_wait(SECOND, at(1_500), at(120), Some(at(0))),
            Duration::ZERO
        );
    }

    #[test]
    fn a_change_merged_coalesce_after_it_was_sent_does_not_wait_again() {
        // A killed replica's raw message, back ~10 s later, merged at once.
        assert_eq!(
            settle_wait(SECOND, at(10_050), at(10_000), Some(at(0))),
            Duration::ZERO
        );
        // Merged just under the coalesce after it was sent: it still waits.
        assert_eq!(
            settle_wait(SECOND, at(950), at(900), Some(at(0))),
            Duration::from_millis(950)
        );
        // A clock that reads the raw message as later than its merge waits.
        assert_eq!(
            settle_wait(SECOND, at(100), at(100), Some(at(5_000))),
            SECOND
        );
    }

    #[test]
    fn the_raw_publish_time_is_read_from_its_attribute() {
        let mut msg = Incoming {
            data: Bytes::new(),
            attributes: HashMap::new(),
            message_id: "m".into(),
            publish_time: None,
            ordering_key: String::new(),
            execution: 1,
            turn: Default::default(),
        };
        assert_eq!(raw_published(&msg), None);
        msg.attributes.insert(
            RAW_PUBLISHED_ATTRIBUTE.into(),
            at(7).to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        );
        assert_eq!(raw_published(&msg), Some(at(7)));
        msg.attributes
            .insert(RAW_PUBLISHED_ATTRIBUTE.into(), "yesterday".into());
        assert_eq!(raw_published(&msg), None, "unreadable: as if absent");
    }
}
