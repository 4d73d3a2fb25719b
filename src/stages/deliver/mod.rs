//! The delivery stages (SPEC §4 "deliver.netsuite / deliver.suitex"): one
//! type, parameterised by target. resolve claim check → route → per-target
//! dedupe → HTTP POST → claim the fingerprint once the target answered 2xx.

pub mod fold;
pub mod http_sink;
pub mod routing;
pub mod turns;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use secrecy::SecretString;
use serde_json::json;

use self::http_sink::HttpSink;
use self::routing::Route;
use super::{
    snapshot_failure, store_failure, Failure, Incoming, Outcome, Stage, StageError, StageResult,
};
use crate::model::fingerprint::fingerprint_bytes;
use crate::model::merged_event::MergedEvent;
use crate::model::raw_event::Source;
use crate::snapshots::claim_check::{ClaimCheck, ClaimCheckError};
use crate::stages::merge::batch::SEQUENCE_ATTRIBUTE;
use crate::store::delivery::DeliveryState;
use crate::store::delivery_log::{DeliveryLog, DeliveryWrite, PositionRow, ViewKey};
use crate::store::ledger::{self, AuditRow};
use crate::store::{Store, StoreError};
use crate::topology::StageName;

/// Writers of each target's delivery bookkeeping (see `store::delivery_log`).
const LOG_WORKERS: usize = 2;

/// What this stage reads, as its store failures name it.
const MERGED_EVENT: &str = "merged event";

/// The stage name (and audit `stage`) for a target.
pub fn stage_name(target: Source) -> &'static str {
    match target {
        Source::Netsuite => StageName::DeliverNetsuite,
        Source::Suitex => StageName::DeliverSuitex,
    }
    .as_str()
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
    /// Started on first use, inside the runtime.
    log: std::sync::OnceLock<DeliveryLog>,
}

impl DeliverStage {
    pub fn new(target: Source, sink: HttpSink, store: Store, claim_check: ClaimCheck) -> Self {
        Self {
            target,
            sink,
            store,
            claim_check,
            turns: turns::Turns::default(),
            log: std::sync::OnceLock::new(),
        }
    }

    fn log(&self) -> &DeliveryLog {
        self.log.get_or_init(|| {
            DeliveryLog::start(
                self.store.clone(),
                LOG_WORKERS,
                stage_name(self.target),
                self.target.as_str(),
            )
        })
    }

    /// Writes through the group commit; a failure is the stage's.
    async fn write(&self, w: DeliveryWrite, fp: &str) -> Result<(), Failure> {
        self.log().write(w).await.map_err(|e| Failure {
            error: store_failure(&e, MERGED_EVENT),
            fingerprint: Some(fp.to_string()),
        })
    }

    fn position_row(&self, ev: &MergedEvent, seq: i64, acked: bool) -> PositionRow {
        PositionRow {
            target: self.target.as_str().to_string(),
            record_type: ev.record_type.clone(),
            record_id: ev.record_id.clone(),
            seq,
            version: ev.version,
            acked,
        }
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
        // One request at a time per record and target in this process, so
        // a retry of an older version never races a newer one (SPEC §4.1 P1).
        let _turn = self.turns.lock(&ev.ordering_key()).await;
        steps.mark("turn_wait");
        let seq = self.position(msg, &ev).await?;
        let (delivered, st) = self.view(&ev).await?;
        steps.mark("state_read");
        if delivered {
            self.audit(msg, Some(&ev), &fp, "duplicate", json!({}), false)
                .await?;
            return Ok(Outcome::ack("duplicate", Some(fp)));
        }
        let (body, folded) = match self.plan(msg, &ev, seq, st, body).await? {
            Plan::Send { body, versions } => (body, versions),
            Plan::Done(outcome) => return Ok(outcome),
        };
        steps.mark("plan");
        if let Some(seq) = seq {
            let at = self.position_row(&ev, seq, false);
            self.write(DeliveryWrite::Attempted(at), &fp).await?;
        }
        steps.mark("state_write_attempted");
        match self.sink.post(&fp, body).await {
            Ok(d) => {
                steps.mark("post");
                let detail = json!({"status": d.status, "version": ev.version, "versions": folded});
                let row = self.audit_row(msg, Some(&ev), &fp, "delivered", detail, true);
                let at = seq.map(|seq| self.position_row(&ev, seq, true));
                match self.write(DeliveryWrite::Done(row, at), &fp).await {
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

    /// Whether this target's claim on `ev` exists (delivered before) and
    /// where the target stands for its record: one read.
    async fn view(&self, ev: &MergedEvent) -> Result<(bool, DeliveryState), Failure> {
        let key = ViewKey {
            fingerprint: ev.fingerprint.clone(),
            record_type: ev.record_type.clone(),
            record_id: ev.record_id.clone(),
        };
        self.log().view(key).await.map_err(|e| Failure {
            error: store_failure(&e, MERGED_EVENT),
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
                error: store_failure(&e, MERGED_EVENT),
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
                error: store_failure(&e, MERGED_EVENT),
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
        let w = if claim {
            DeliveryWrite::Done(row, None)
        } else {
            DeliveryWrite::Audit(row)
        };
        self.write(w, fp).await
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

/// A message that is not a merged event is invalid; snapshot problems are
/// classified as for every stage.
fn resolve_failure(e: ClaimCheckError) -> StageError {
    match &e {
        ClaimCheckError::Malformed(_) => StageError::invalid(e.to_string()),
        ClaimCheckError::Snapshot(s) => snapshot_failure(s),
    }
}

impl Stage for DeliverStage {
    fn name(&self) -> &'static str {
        stage_name(self.target)
    }

    fn handle<'a>(&'a self, msg: &'a Incoming) -> BoxFuture<'a, StageResult> {
        Box::pin(self.run(msg))
    }
}

/// Where and how one target is delivered to (the composition root fills it
/// from `targets.*`; a target without a URL gets no stage).
#[derive(Debug, Clone)]
pub struct DeliverSettings {
    pub url: String,
    /// Bearer token sent with each delivery.
    pub token: Option<SecretString>,
    pub timeout: Duration,
}

/// Builds the stage for `target`.
pub fn build(
    target: Source,
    settings: DeliverSettings,
    store: Store,
    claim_check: ClaimCheck,
) -> Result<Arc<DeliverStage>, http_sink::SinkBuildError> {
    let sink = HttpSink::new(
        target.as_str(),
        settings.url,
        settings.token,
        settings.timeout,
    )?;
    Ok(Arc::new(DeliverStage::new(
        target,
        sink,
        store,
        claim_check,
    )))
}
