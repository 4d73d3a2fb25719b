//! The delivery stages (SPEC §4 "deliver.netsuite / deliver.suitex"): one
//! type, parameterised by target. resolve claim check → route → per-target
//! dedupe → HTTP POST → claim the fingerprint once the target answered 2xx.

pub mod fold;
pub mod http_sink;
mod known;
pub mod pacing;
pub mod routing;
pub mod turns;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use secrecy::SecretString;
use serde_json::json;

use self::http_sink::{HttpSink, Signal, SinkFailure};
use self::pacing::{Answer, Pacer, Stopped, Verdict};
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
use crate::store::delivery_lease::{self, Claim, Lease};
use crate::store::delivery_log::{DeliveryLog, DeliveryWrite, PositionRow, View, ViewKey};
use crate::store::ledger::{self, AuditRow};
use crate::store::{Store, StoreError};
use crate::topology::StageName;

/// Writers of each target's delivery bookkeeping (see `store::delivery_log`).
const LOG_WORKERS: usize = 2;

/// What this stage reads, as its store failures name it.
const MERGED_EVENT: &str = "merged event";

/// Between two sends of a request the target throttled without saying for
/// how long, and between two looks at a lease another replica holds.
const AGAIN_MIN: Duration = Duration::from_millis(100);
const AGAIN_MAX: Duration = Duration::from_secs(5);

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
    /// The target's pace, shared by the live and retry consumers (SPEC §4.2).
    pacer: Arc<Pacer>,
    /// Where this process last left the target, per record.
    known: known::Known,
    /// This process's id on delivery leases, and how long one lasts.
    holder: i64,
    lease_ttl: Duration,
}

impl DeliverStage {
    pub fn new(
        target: Source,
        sink: HttpSink,
        store: Store,
        claim_check: ClaimCheck,
        pacer: Arc<Pacer>,
        lease_ttl: Duration,
    ) -> Self {
        Self {
            target,
            sink,
            store,
            claim_check,
            turns: turns::Turns::default(),
            known: known::Known::default(),
            log: std::sync::OnceLock::new(),
            pacer,
            holder: delivery_lease::new_holder(),
            lease_ttl,
        }
    }

    pub fn pacer(&self) -> &Arc<Pacer> {
        &self.pacer
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
        // a retry of an older version never races a newer one (SPEC §4.1 P1);
        // the lease below does the same across replicas (SPEC §4.2).
        let _turn = self.turns.lock(&ev.ordering_key()).await;
        steps.mark("turn_wait");
        let seq = self.position(msg, &ev).await?;
        let record = record_hash(&ev);
        let mut again = again_delays();
        // Where this process last left the target for the record, if this
        // event comes after it; otherwise (or unknown) read it. The claim
        // below checks it against the database either way.
        let mut view = match self.known.view(&ev, seq) {
            Some(v) => v,
            None => self.view(&ev).await?,
        };
        steps.mark("state_read");
        loop {
            // Decided without the lease: nothing to send needs no permit.
            let (delivered, st) = view;
            if delivered {
                self.audit(msg, Some(&ev), &fp, "duplicate", json!({}), false)
                    .await?;
                return Ok(Outcome::ack("duplicate", Some(fp)));
            }
            let (out, folded) = match self.plan(msg, &ev, seq, st, body.clone()).await? {
                Plan::Send { body, versions } => (body, versions),
                Plan::Done(outcome) => return Ok(outcome),
            };
            steps.mark("plan");
            // The lease and the attempted position in one durable write,
            // made only if the target still stands where `plan` saw it.
            let lease = self.lease(&ev);
            let claim = Claim {
                lease: lease.clone(),
                ttl: self.lease_ttl,
                expect: st,
                attempted: seq,
            };
            let claimed = self.log().claim(claim).await.map_err(|e| Failure {
                error: store_failure(&e, MERGED_EVENT),
                fingerprint: Some(fp.clone()),
            })?;
            if !claimed {
                self.known.forget(&ev);
                let now = self.view(&ev).await?;
                if now == view {
                    // Another replica is delivering this record: wait its turn.
                    let d = again.next().unwrap_or(AGAIN_MAX);
                    self.pacer.sleep(d).await.map_err(|e| stopped(e, &fp))?;
                    view = self.view(&ev).await?;
                } else {
                    // The target moved on while this delivery waited.
                    view = now;
                }
                continue;
            }
            if seq.is_none() {
                // Without a position, only the claim row says whether another
                // replica delivered it meanwhile.
                let now = match self.view(&ev).await {
                    Ok(v) => v,
                    Err(f) => {
                        self.release(lease).await;
                        return Err(f);
                    }
                };
                if now != view {
                    self.release(lease).await;
                    view = now;
                    continue;
                }
            }
            steps.mark("claim");
            if let Some(seq) = seq {
                self.known.set(
                    &ev,
                    DeliveryState {
                        attempted: st.attempted.max(seq),
                        ..st
                    },
                );
            }
            // The permit after the claim: it bounds requests in flight at the
            // target, not bookkeeping. Waits through throttling and outages;
            // never fails for it.
            let waited = std::time::Instant::now();
            let permit = match self.pacer.acquire().await {
                Ok(p) => p,
                Err(e) => {
                    self.release(lease).await;
                    return Err(stopped(e, &fp));
                }
            };
            steps.mark("permit_wait");
            if waited.elapsed() > self.lease_ttl / 2 {
                // Held so long the lease may run out mid-request: claim afresh.
                drop(permit);
                self.release(lease).await;
                view = self.view(&ev).await?;
                continue;
            }
            let answer = self.sink.post(&fp, out).await;
            steps.mark("post");
            let (pace, why) = match &answer {
                Ok(_) => (Answer::Success, ""),
                Err(f) => (pacing_answer(f), f.error.message.as_str()),
            };
            let verdict = self.pacer.finish(permit, record, pace, why);
            let failure = match answer {
                Ok(d) => {
                    let detail =
                        json!({"status": d.status, "version": ev.version, "versions": folded});
                    let row = self.audit_row(msg, Some(&ev), &fp, "delivered", detail, true);
                    let at = seq.map(|seq| self.position_row(&ev, seq, true));
                    let done = self
                        .log()
                        .write_releasing(DeliveryWrite::Done(row, at), lease.clone())
                        .await;
                    return match done {
                        Ok(()) => {
                            if let Some(seq) = seq {
                                self.known.set(
                                    &ev,
                                    DeliveryState {
                                        acked: seq,
                                        acked_version: ev.version,
                                        attempted: st.attempted.max(seq),
                                    },
                                );
                            }
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
                        Err(e) => {
                            self.known.forget(&ev);
                            // The release rolled back with the claim.
                            self.release(lease).await;
                            // Another replica delivered the same fingerprint
                            // at the same time; the target dedupes on
                            // Idempotency-Key.
                            if self.already_delivered(&fp).await? {
                                Ok(Outcome::ack("duplicate", Some(fp)))
                            } else {
                                Err(Failure {
                                    error: store_failure(&e, MERGED_EVENT),
                                    fingerprint: Some(fp),
                                })
                            }
                        }
                    };
                }
                Err(f) => f,
            };
            match verdict {
                // The target refused this message (a 4xx): permanent.
                Verdict::Proceed => {
                    let row = self.audit_row(
                        msg,
                        Some(&ev),
                        &fp,
                        outcome_of(&failure.error),
                        json!({"error": failure.error.message, "version": ev.version}),
                        false,
                    );
                    self.log()
                        .write_releasing(DeliveryWrite::Audit(row), lease)
                        .await
                        .map_err(|e| Failure {
                            error: store_failure(&e, MERGED_EVENT),
                            fingerprint: Some(fp.clone()),
                        })?;
                    return Err(Failure {
                        error: failure.error,
                        fingerprint: Some(fp),
                    });
                }
                // Paced or held: sent again when the target allows, with
                // nothing recorded and no attempt spent.
                Verdict::Again => {
                    self.release(lease).await;
                    if let Signal::Throttled {
                        retry_after: None, ..
                    } = failure.signal
                    {
                        let d = again.next().unwrap_or(AGAIN_MAX);
                        self.pacer.sleep(d).await.map_err(|e| stopped(e, &fp))?;
                    }
                    view = self.view(&ev).await?;
                    continue;
                }
                Verdict::Undecided(mark) => {
                    self.release(lease).await;
                    if self
                        .pacer
                        .verdict(mark)
                        .await
                        .map_err(|e| stopped(e, &fp))?
                    {
                        // The circuit opened: an outage, not this message.
                        view = self.view(&ev).await?;
                        continue;
                    }
                    // The target serves others: this failure is the
                    // message's own and takes the retry schedule.
                    self.audit(
                        msg,
                        Some(&ev),
                        &fp,
                        outcome_of(&failure.error),
                        json!({"error": failure.error.message, "version": ev.version}),
                        false,
                    )
                    .await?;
                    return Err(Failure {
                        error: failure.error,
                        fingerprint: Some(fp),
                    });
                }
            }
        }
    }

    fn lease(&self, ev: &MergedEvent) -> Lease {
        Lease {
            target: self.target.as_str().to_string(),
            record_type: ev.record_type.clone(),
            record_id: ev.record_id.clone(),
            holder: self.holder,
        }
    }

    /// Gives a lease back; if the database does not answer, it expires.
    async fn release(&self, lease: Lease) {
        if let Err(e) = self.log().write(DeliveryWrite::Release(lease)).await {
            tracing::debug!(error = %e, "Could not release a delivery lease; it expires on its own.");
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

    /// Whether this target's claim on `ev` exists (delivered before) and
    /// where the target stands for its record: one read.
    async fn view(&self, ev: &MergedEvent) -> Result<View, Failure> {
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

/// The message goes back to the broker at shutdown (nack), never failed.
fn stopped(e: Stopped, fp: &str) -> Failure {
    Failure {
        error: StageError::unavailable(e.to_string()),
        fingerprint: Some(fp.to_string()),
    }
}

/// What a failed request says about the target, for pacing.
fn pacing_answer(f: &SinkFailure) -> Answer {
    use self::pacing::circuit::Failure as Kind;
    let failed = |kind, back_pressure| Answer::Failed {
        kind,
        back_pressure,
    };
    match f.signal {
        Signal::Throttled {
            status,
            retry_after,
        } => Answer::Throttled {
            status,
            retry_after,
        },
        Signal::Rejected(_) => Answer::Rejected,
        Signal::Unreachable => failed(Kind::Unreachable, true),
        Signal::Timeout => failed(Kind::Failed, true),
        Signal::Server(503) => failed(Kind::Unavailable, true),
        Signal::Server(s) => failed(Kind::Failed, s == 408),
        Signal::Broken => failed(Kind::Failed, false),
    }
}

/// The circuit tells records apart by this.
fn record_hash(ev: &MergedEvent) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (&ev.record_type, &ev.record_id).hash(&mut h);
    h.finish()
}

fn again_delays() -> backon::ExponentialBackoff {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(AGAIN_MIN)
        .with_max_delay(AGAIN_MAX)
        .without_max_times()
        .with_jitter()
        .build()
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

    /// Nothing new is pulled for a target whose circuit is open or that
    /// asked us to wait (SPEC §4.2); what is held waits in the pacer.
    fn accepting(&self) -> bool {
        self.pacer.accepting()
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
    pub lease_ttl: Duration,
}

/// Builds the stage for `target`.
pub fn build(
    target: Source,
    settings: DeliverSettings,
    store: Store,
    claim_check: ClaimCheck,
    pacer: Arc<Pacer>,
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
        pacer,
        settings.lease_ttl,
    )))
}
