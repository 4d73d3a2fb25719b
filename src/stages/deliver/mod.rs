//! The delivery stages (SPEC §4 "deliver.netsuite / deliver.suitex"): one
//! type, parameterised by target. resolve claim check → route → per-target
//! dedupe → HTTP POST → claim the fingerprint once the target answered 2xx.

pub mod fold;
pub mod http_sink;
pub mod routing;
pub mod turns;

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use serde_json::json;

use self::http_sink::HttpSink;
use self::routing::Route;
use super::{Failure, Incoming, Outcome, Stage, StageError, StageResult};
use crate::model::fingerprint::fingerprint_bytes;
use crate::model::merged_event::MergedEvent;
use crate::model::raw_event::Source;
use crate::snapshots::claim_check::{ClaimCheck, ClaimCheckError};
use crate::snapshots::SnapshotError;
use crate::stages::merge::batch::SEQUENCE_ATTRIBUTE;
use crate::store::delivery::Position;
use crate::store::ledger::{self, AuditRow};
use crate::store::{Store, StoreError};

/// The stage name (and audit `stage`) for a target.
pub fn stage_name(target: Source) -> &'static str {
    match target {
        Source::Netsuite => "deliver.netsuite",
        Source::Suitex => "deliver.suitex",
    }
}

/// What [`DeliverStage::plan`] decided.
enum Plan {
    /// POST `body`, which carries these versions.
    Send { body: Bytes, versions: Vec<i64> },
    /// Nothing to send; acked with this outcome.
    Done(Outcome),
}

pub struct DeliverStage {
    target: Source,
    sink: HttpSink,
    store: Store,
    claim_check: ClaimCheck,
    /// Serialises this target's deliveries per record in this process.
    turns: turns::Turns,
}

impl DeliverStage {
    pub fn new(target: Source, sink: HttpSink, store: Store, claim_check: ClaimCheck) -> Self {
        Self {
            target,
            sink,
            store,
            claim_check,
            turns: turns::Turns::default(),
        }
    }

    pub fn target(&self) -> Source {
        self.target
    }

    async fn run(&self, msg: &Incoming) -> StageResult {
        let (ev, body) = match self.claim_check.resolve(&msg.data).await {
            Ok(v) => v,
            Err(e) => {
                let fp = msg
                    .attributes
                    .get("fingerprint")
                    .cloned()
                    .unwrap_or_else(|| fingerprint_bytes(&msg.data));
                let error = resolve_failure(e);
                if error.class != super::ErrorClass::Unavailable {
                    self.audit(
                        msg,
                        None,
                        &fp,
                        outcome_of(&error),
                        json!({"error": error.message}),
                        false,
                    )
                    .await?;
                }
                return Err(Failure {
                    error,
                    fingerprint: Some(fp),
                });
            }
        };
        let fp = ev.fingerprint.clone();
        let mut steps = crate::metrics::StepTimer::start(stage_name(self.target));
        if self.already_delivered(&fp).await? {
            self.audit(msg, Some(&ev), &fp, "duplicate", json!({}), false)
                .await?;
            return Ok(Outcome::ack("duplicate", Some(fp)));
        }
        // One request at a time per record and target in this process, so
        // a retry of an older version never races a newer one (SPEC §4.1 P1).
        steps.mark("dedupe_read");
        let _turn = self.turns.lock(&ev.ordering_key()).await;
        steps.mark("turn_wait");
        let seq = self.position(msg, &ev).await?;
        let (body, folded) = match self.plan(msg, &ev, seq, body).await? {
            Plan::Send { body, versions } => (body, versions),
            Plan::Done(outcome) => return Ok(outcome),
        };
        steps.mark("state_read");
        if let Some(seq) = seq {
            self.advance(&ev, seq, false).await?;
        }
        steps.mark("state_write_attempted");
        match self.sink.post(&fp, body).await {
            Ok(d) => {
                steps.mark("post");
                let detail = json!({"status": d.status, "version": ev.version, "versions": folded});
                let row = self.audit_row(msg, Some(&ev), &fp, "delivered", detail, true);
                let at = seq.map(|seq| Position {
                    target: self.target.as_str(),
                    record_type: &ev.record_type,
                    record_id: &ev.record_id,
                    seq,
                    version: ev.version,
                });
                let done = self
                    .store
                    .timed(self.store.delivery_done(&row, at))
                    .await
                    .map_err(|e| Failure {
                        error: store_failure(&e),
                        fingerprint: Some(fp.clone()),
                    });
                match done {
                    Ok(()) => {
                        steps.mark("audit_and_state_write");
                        steps.observe();
                        tracing::info!(
                            target = self.target.as_str(),
                            status = d.status,
                            version = ev.version,
                            folded = folded.len(),
                            "Merged event delivered."
                        );
                        Ok(Outcome::ack("delivered", Some(fp)))
                    }
                    // Another replica delivered the same fingerprint at the same
                    // time; the target dedupes on Idempotency-Key.
                    Err(_) if self.already_delivered(&fp).await? => {
                        Ok(Outcome::ack("duplicate", Some(fp)))
                    }
                    Err(f) => Err(f),
                }
            }
            Err(error) => {
                self.audit(
                    msg,
                    Some(&ev),
                    &fp,
                    outcome_of(&error),
                    json!({"error": error.message, "version": ev.version}),
                    false,
                )
                .await?;
                Err(Failure {
                    error,
                    fingerprint: Some(fp),
                })
            }
        }
    }

    /// What to send for `ev` (SPEC §4.1): nothing when the target already has
    /// a later merged event (`superseded`) or nothing is routed to it
    /// (`skipped`); the event itself when the target is up to date before it;
    /// otherwise it folded with what the target has not acknowledged. An event
    /// from before positions were kept (`seq` None) is routed on its own.
    async fn plan(
        &self,
        msg: &Incoming,
        ev: &MergedEvent,
        seq: Option<i64>,
        body: Bytes,
    ) -> Result<Plan, Failure> {
        let fp = &ev.fingerprint;
        let store_fail = |e: StoreError| Failure {
            error: store_failure(&e),
            fingerprint: Some(fp.clone()),
        };
        let earlier = match seq {
            None => Vec::new(),
            Some(seq) => {
                let st = self
                    .store
                    .timed(self.store.delivery_state(
                        self.target.as_str(),
                        &ev.record_type,
                        &ev.record_id,
                    ))
                    .await
                    .map_err(store_fail)?;
                if seq <= st.acked || seq < st.attempted {
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
                Route::Skip { reason } => Plan::Done(self.skip(msg, ev, reason).await?),
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
                self.skip(msg, ev, "nothing routed to this target").await?,
            )),
        }
    }

    /// Raises the target's attempted (or acknowledged) position for `ev`'s record.
    async fn advance(&self, ev: &MergedEvent, seq: i64, acked: bool) -> Result<(), Failure> {
        self.store
            .timed(self.store.delivery_advance(
                self.target.as_str(),
                &ev.record_type,
                &ev.record_id,
                seq,
                ev.version,
                acked,
            ))
            .await
            .map_err(|e| Failure {
                error: store_failure(&e),
                fingerprint: Some(ev.fingerprint.clone()),
            })
    }

    async fn skip(
        &self,
        msg: &Incoming,
        ev: &MergedEvent,
        reason: &str,
    ) -> Result<Outcome, Failure> {
        let fp = ev.fingerprint.clone();
        self.audit(
            msg,
            Some(ev),
            &fp,
            "skipped",
            json!({ "reason": reason }),
            false,
        )
        .await?;
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
    async fn position(&self, msg: &Incoming, ev: &MergedEvent) -> Result<Option<i64>, Failure> {
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
                error: store_failure(&e),
                fingerprint: Some(ev.fingerprint.clone()),
            })
    }

    async fn already_delivered(&self, fp: &str) -> Result<bool, Failure> {
        let claimed = self
            .store
            .timed(async {
                let mut conn = self.store.pool().acquire().await?;
                ledger::claimed(&mut conn, stage_name(self.target), &[fp]).await
            })
            .await
            .map_err(|e| Failure {
                error: store_failure(&e),
                fingerprint: Some(fp.to_string()),
            })?;
        Ok(claimed.contains(fp))
    }

    /// One audit row per execution; with `claim` it is the per-target dedupe
    /// claim. If it cannot be written the database is down: nack, not lose.
    async fn audit(
        &self,
        msg: &Incoming,
        ev: Option<&MergedEvent>,
        fp: &str,
        outcome: &str,
        detail: serde_json::Value,
        claim: bool,
    ) -> Result<(), Failure> {
        let row = self.audit_row(msg, ev, fp, outcome, detail, claim);
        let result = self
            .store
            .timed(async {
                let _guard = self.store.write_guard().await;
                let mut conn = self.store.pool().acquire().await?;
                ledger::insert_audit(&mut conn, std::slice::from_ref(&row)).await
            })
            .await;
        result.map_err(|e| Failure {
            error: store_failure(&e),
            fingerprint: Some(fp.to_string()),
        })
    }

    fn audit_row(
        &self,
        msg: &Incoming,
        ev: Option<&MergedEvent>,
        fp: &str,
        outcome: &str,
        detail: serde_json::Value,
        claim: bool,
    ) -> AuditRow {
        AuditRow {
            event_id: ev.map(|e| e.event_id.clone()),
            fingerprint: fp.to_string(),
            record_type: ev.map(|e| e.record_type.clone()),
            record_id: ev.map(|e| e.record_id.clone()),
            stage: stage_name(self.target).to_string(),
            outcome: outcome.to_string(),
            detail: Some(detail.to_string()),
            message_id: Some(msg.message_id.clone()),
            attempt: i32::try_from(msg.execution).unwrap_or(i32::MAX),
            claim,
        }
    }
}

fn outcome_of(e: &StageError) -> &'static str {
    e.dead_reason().unwrap_or("transient")
}

/// Snapshot problems classified as SPEC §10 says: unreadable → transient,
/// another env's bucket or wrong content → permanent.
fn resolve_failure(e: ClaimCheckError) -> StageError {
    match &e {
        ClaimCheckError::Malformed(_) => StageError::invalid(e.to_string()),
        ClaimCheckError::Snapshot(SnapshotError::Unavailable { .. }) => {
            StageError::transient(e.to_string())
        }
        ClaimCheckError::Snapshot(SnapshotError::Unreachable { .. }) => {
            StageError::unavailable(e.to_string())
        }
        ClaimCheckError::Snapshot(
            SnapshotError::Refused { .. } | SnapshotError::Corrupt { .. },
        ) => StageError::permanent(e.to_string()),
    }
}

fn store_failure(e: &StoreError) -> StageError {
    super::store_failure(e, "merged event")
}

impl Stage for DeliverStage {
    fn name(&self) -> &'static str {
        stage_name(self.target)
    }

    fn handle<'a>(&'a self, msg: &'a Incoming) -> BoxFuture<'a, StageResult> {
        Box::pin(self.run(msg))
    }
}

/// Builds the stage for `target` when its URL is configured.
pub fn build(
    target: Source,
    settings: &crate::config::Target,
    store: Store,
    claim_check: ClaimCheck,
) -> Result<Option<Arc<DeliverStage>>, http_sink::SinkBuildError> {
    let Some(url) = settings.url.clone() else {
        return Ok(None);
    };
    let sink = HttpSink::new(
        target.as_str(),
        url,
        settings.token.clone(),
        settings.timeout,
    )?;
    Ok(Some(Arc::new(DeliverStage::new(
        target,
        sink,
        store,
        claim_check,
    ))))
}
