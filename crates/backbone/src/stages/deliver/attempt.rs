//! One delivery as a loop of attempts (the shape of Vector's Pub/Sub
//! source): each attempt plans from a view of where the target stands,
//! claims the record, sends, and returns a [`Step`]; the loop reads a new
//! view and tries again until an attempt is done. The lease an attempt
//! takes is released in one place, whatever the attempt came to.

use bytes::Bytes;
use serde_json::json;

use super::http_sink::{Delivered, Signal, SinkFailure};
use super::keeper::Keeper;
use super::pacing::{Answer, Permit, Verdict};
use super::plan::{Plan, Send};
use super::{outcome_of, pacing_answer, record_hash, stopped, DeliverStage, MERGED_EVENT};
use crate::model::merged_event::MergedEvent;
use crate::stages::{store_failure, Failure, Incoming, Outcome, StageResult};
use crate::store::delivery::DeliveryState;
use crate::store::delivery_lease::Lease;
use crate::store::delivery_log::{DeliveryWrite, View};

/// The outcome of a delivery taken over that would have to wait: its
/// message does the rest.
pub(super) const LEFT: &str = "left_to_its_message";

/// What one attempt came to.
pub(super) enum Step {
    /// Acked with an outcome, or the message's own failure.
    Done(StageResult),
    /// Plan again: the target moved on, another replica holds the record,
    /// or the target throttled. `wait` first (a backoff), and `view` when
    /// the attempt already read where the target stands.
    Again { wait: bool, view: Option<View> },
    /// Another replica holds the record's lease: it answers within a
    /// request's time, so look again soon (a short backoff of its own, not
    /// the throttling one), reading where the target stands then.
    Busy,
    /// The target's circuit opened (an outage, refused credentials): plan
    /// again; the next permit waits until a probe gets through.
    Hold,
}

/// A delivery taken over goes on only where no wait is needed: done, or
/// planned again at once because the target moved on.
fn left_to_its_message(takeover: bool, step: &Step) -> bool {
    takeover && !matches!(step, Step::Done(_) | Step::Again { wait: false, .. })
}

/// What the attempt needs of the message, resolved once.
pub(super) struct Delivery<'a> {
    pub msg: &'a Incoming,
    pub ev: MergedEvent,
    pub body: Bytes,
    pub seq: Option<i64>,
    /// Where the time goes (`backbone_stage_step_duration_seconds`).
    pub steps: std::sync::Mutex<crate::metrics::StepTimer>,
    /// Taken over from the store (`takeover`): whatever needs a wait is
    /// left to the record's message.
    pub takeover: bool,
}

impl Delivery<'_> {
    fn fp(&self) -> &str {
        &self.ev.fingerprint
    }

    pub(super) fn mark(&self, step: &'static str) {
        self.steps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .mark(step);
    }
}

/// What became of the request itself.
enum Sent {
    Answer(Result<Delivered, SinkFailure>),
    /// The lease could not be trusted while waiting for the account's slot:
    /// nothing was sent.
    LeaseLostWaiting,
    /// The lease could not be trusted while the request was out.
    Abandoned,
}

/// What happened under the lease, and whether the write that recorded it
/// also released the lease.
struct Leased {
    step: Step,
    released: bool,
}

impl Leased {
    fn kept(step: Step) -> Self {
        Self {
            step,
            released: false,
        }
    }
}

impl DeliverStage {
    /// Every attempt of one delivery, until one is done.
    pub(super) async fn deliver(&self, d: &Delivery<'_>, mut view: View) -> StageResult {
        let mut again = super::delays(super::AGAIN_MIN, super::AGAIN_MAX);
        let mut busy = super::delays(super::BUSY_MIN, super::BUSY_MAX);
        loop {
            let step = self.attempt(d, view).await?;
            if left_to_its_message(d.takeover, &step) {
                return Ok(Outcome::ack(LEFT, Some(d.fp().to_string())));
            }
            match step {
                Step::Done(result) => return result,
                Step::Busy => {
                    let pause = busy.next().unwrap_or(super::BUSY_MAX);
                    self.pause(d, pause, "busy_wait").await?;
                    view = self.view(&d.ev).await?;
                    // The re-read belongs to the wait too (marks add up).
                    d.mark("busy_wait");
                }
                Step::Again { wait, view: seen } => {
                    if wait {
                        let pause = again.next().unwrap_or(super::AGAIN_MAX);
                        self.pause(d, pause, "throttled_wait").await?;
                    }
                    view = match seen {
                        Some(v) if !wait => v,
                        _ => self.view(&d.ev).await?,
                    };
                }
                Step::Hold => {
                    view = self.view(&d.ev).await?;
                    d.mark("held");
                }
            }
        }
    }

    /// Waits `pause` (cut short by shutdown), marked as `step` after what
    /// came before it was marked as planning.
    async fn pause(
        &self,
        d: &Delivery<'_>,
        pause: std::time::Duration,
        step: &'static str,
    ) -> Result<(), Failure> {
        d.mark("plan");
        self.pacer
            .sleep(pause)
            .await
            .map_err(|e| stopped(e, d.fp()))?;
        d.mark(step);
        Ok(())
    }

    /// Plans from `view`, waits for the target's permit, claims the record
    /// when next in line and sends: one attempt.
    async fn attempt(&self, d: &Delivery<'_>, view: View) -> Result<Step, Failure> {
        let (delivered, st) = view;
        let fp = d.fp().to_string();
        if delivered {
            self.audit(d.msg, Some(&d.ev), &fp, "duplicate", json!({}), false)
                .await?;
            return Ok(Step::Done(Ok(Outcome::ack("duplicate", Some(fp)))));
        }
        // Decided without the lease: nothing to send needs no permit.
        let send = match self.plan(d.msg, &d.ev, d.seq, st, d.body.clone()).await? {
            Plan::Send(send) => send,
            Plan::Done(outcome) => return Ok(Step::Done(Ok(outcome))),
        };
        d.mark("plan");
        let waited = tokio::time::Instant::now();
        self.let_the_burst_settle(d).await;
        // The permit bounds requests in flight at the target, not
        // bookkeeping: it waits through throttling and outages, never fails.
        // The lease is taken only when this delivery is next in line (the
        // plan read again first): one that merely waits holds none, so a
        // replica that dies leaves only its requests out to wait for their
        // leases to run out, and a live one can take the rest over at once
        // (`takeover`).
        let prepared = tokio::sync::OnceCell::new();
        let (cell, first) = (&prepared, &send);
        let (permit, ()) = self
            .pacer
            .acquire_prepared(move || async move {
                cell.get_or_init(|| self.claim_when_next(d, st, first, waited))
                    .await;
            })
            .await
            .map_err(|e| stopped(e, &fp))?;
        d.mark("permit_wait");
        let Some((send, claimed)) = prepared.into_inner() else {
            // A permit always comes prepared; plan again if it did not.
            return Ok(Step::Again {
                wait: false,
                view: None,
            });
        };
        let claimed_at = match claimed {
            Ok(Some(at)) => at,
            Ok(None) => {
                // Not the target's doing: the permit goes back unjudged.
                drop(permit);
                return self.refused(d, view).await;
            }
            Err(e) => {
                drop(permit);
                return Err(Failure {
                    error: store_failure(&e, MERGED_EVENT),
                    fingerprint: Some(fp),
                });
            }
        };
        let lease = self.lease(&d.ev);
        let leased = self.under_lease(d, view, send, permit, claimed_at).await;
        if !matches!(leased, Ok(Leased { released: true, .. })) {
            self.release(lease).await;
        }
        leased.map(|l| l.step)
    }

    /// The claim was refused: unchanged, another replica is delivering the
    /// record (wait its turn); changed, the target moved on meanwhile.
    async fn refused(&self, d: &Delivery<'_>, view: View) -> Result<Step, Failure> {
        self.known.forget(&d.ev);
        let now = self.view(&d.ev).await?;
        d.mark("claim_refused");
        if now == view {
            return Ok(Step::Busy);
        }
        Ok(Step::Again {
            wait: false,
            view: Some(now),
        })
    }

    /// Everything done while the record's lease is held: the request and
    /// the bookkeeping of its answer.
    async fn under_lease(
        &self,
        d: &Delivery<'_>,
        view: View,
        send: Send,
        mut permit: Permit,
        claimed_at: tokio::time::Instant,
    ) -> Result<Leased, Failure> {
        let (_, st) = view;
        if d.seq.is_none() {
            // Without a position, only the claim row says whether another
            // replica delivered it meanwhile.
            let now = self.view(&d.ev).await?;
            if now != view {
                return Ok(Leased::kept(Step::Again {
                    wait: false,
                    view: Some(now),
                }));
            }
        }
        if let Some((seq, _)) = send.through {
            self.known.set(
                &d.ev,
                DeliveryState {
                    attempted: st.attempted.max(seq),
                    ..st
                },
            );
        }
        // A delivery held after its claim (a pause or an open circuit seen
        // when its permit came) renews once here, keeping its place.
        let Some(claimed_at) = self.still_ours(d, claimed_at).await else {
            return Ok(Leased::kept(Step::Again {
                wait: false,
                view: None,
            }));
        };
        // From here to the bookkeeping of the answer the lease is renewed, so
        // a request slower than the lease keeps it.
        let keeper = Keeper::start(
            self.store.clone(),
            self.lease(&d.ev),
            self.lease_ttl,
            claimed_at,
        );
        let answer = match self.send_in_slot(d, &keeper, &mut permit, &send).await? {
            Sent::Answer(answer) => answer,
            Sent::LeaseLostWaiting => {
                return Ok(Leased::kept(Step::Again {
                    wait: false,
                    view: None,
                }))
            }
            Sent::Abandoned => {
                // Not the target's doing: the permit goes back unjudged.
                drop(permit);
                tracing::warn!(
                    target = self.target.as_str(),
                    record_type = %d.ev.record_type,
                    record_id = %d.ev.record_id,
                    "A request was abandoned: its delivery lease could no longer be trusted (taken over, or not renewed in time)."
                );
                return Ok(Leased::kept(Step::Again {
                    wait: true,
                    view: None,
                }));
            }
        };
        let (pace, why) = match &answer {
            Ok(_) => (Answer::Success, ""),
            Err(f) => (pacing_answer(f), f.error.message.as_str()),
        };
        let verdict = self.pacer.finish(permit, record_hash(&d.ev), pace, why);
        match answer {
            Ok(delivered) => self.delivered(d, st, delivered, send).await,
            Err(failure) => self.failed(d, failure, verdict, &send.body).await,
        }
    }

    /// The request, under the account's slot when one is set (taken last,
    /// just before the request: it counts requests at the target, not this
    /// process's bookkeeping). A request still out when the lease can no
    /// longer be trusted is abandoned before another replica may send the
    /// record (P1).
    async fn send_in_slot(
        &self,
        d: &Delivery<'_>,
        keeper: &Keeper,
        permit: &mut Permit,
        send: &Send,
    ) -> Result<Sent, Failure> {
        let slot = match &self.slots {
            Some(s) => {
                let slot = tokio::select! {
                    biased;
                    () = keeper.lost() => None,
                    slot = s.acquire() => Some(slot.map_err(|e| slot_failure(e, d.fp()))?),
                };
                let Some(slot) = slot else {
                    return Ok(Sent::LeaseLostWaiting);
                };
                permit.restart();
                d.mark("slot_wait");
                Some(slot)
            }
            None => None,
        };
        let answer = tokio::select! {
            biased;
            answer = self.sink.post(&send.key, send.body.clone(), permit.is_probe()) => Some(answer),
            () = keeper.lost() => None,
        };
        d.mark("post");
        if let (Some(s), Some(slot)) = (&self.slots, slot) {
            s.release(slot);
        }
        Ok(answer.map_or(Sent::Abandoned, Sent::Answer))
    }

    /// `targets.<t>.coalesce`: a record's first live delivery waits until
    /// its merged event is that old, so the rest of a burst still being
    /// merged goes in the same request (planned again after the wait); not
    /// for a change merged that long after it was sent (`settle_wait`).
    async fn let_the_burst_settle(&self, d: &Delivery<'_>) {
        if self.coalesce.is_zero() || !super::plan::first_live(d.msg) {
            return;
        }
        let Some(published) = d.msg.publish_time else {
            return;
        };
        let raw = super::plan::raw_published(d.msg);
        let left = super::plan::settle_wait(self.coalesce, chrono::Utc::now(), published, raw);
        if !left.is_zero() {
            tokio::time::sleep(left).await;
        }
    }

    /// The target acknowledged: the claim row and the position, released
    /// with the lease in one commit.
    async fn delivered(
        &self,
        d: &Delivery<'_>,
        st: DeliveryState,
        ok: Delivered,
        send: Send,
    ) -> Result<Leased, Failure> {
        let fp = d.fp().to_string();
        let versions = send.versions;
        // `through`: the newest position the request carried (a burst goes
        // as one request), which `explain` reads.
        // The version the request carried (the newest of a burst's).
        let version = send.through.map_or(d.ev.version, |(_, v)| v);
        let detail = json!({"status": ok.status, "version": version, "versions": versions,
            "through": send.through.map(|(seq, _)| seq)});
        // A delivery taken over does not claim its message's fingerprint:
        // the position covers the message when the broker hands it back,
        // with no `duplicate` row of its own (docs/spec.md §6.1).
        let row = self.audit_row(d.msg, Some(&d.ev), &fp, "delivered", detail, !d.takeover);
        let at = send
            .through
            .map(|(seq, version)| self.position_row(&d.ev, seq, version, true));
        let lease: Lease = self.lease(&d.ev);
        match self
            .log()
            .write_releasing(DeliveryWrite::Done(row, at), lease)
            .await
        {
            Ok(()) => {
                d.mark("audit_and_state_write");
                if let Some((seq, version)) = send.through {
                    self.known.set(
                        &d.ev,
                        DeliveryState {
                            acked: seq,
                            acked_version: version,
                            attempted: st.attempted.max(seq),
                        },
                    );
                }
                tracing::info!(
                    target = self.target.as_str(),
                    status = ok.status,
                    version = d.ev.version,
                    folded = versions.len(),
                    "Merged event delivered."
                );
                Ok(Leased {
                    step: Step::Done(Ok(Outcome::ack("delivered", Some(fp)))),
                    released: true,
                })
            }
            Err(e) => {
                // The release rolled back with the claim.
                self.known.forget(&d.ev);
                // Another replica delivered the same fingerprint at the
                // same time; the target dedupes on the fingerprint.
                let step = if self.already_delivered(&fp).await? {
                    Step::Done(Ok(Outcome::ack("duplicate", Some(fp))))
                } else {
                    Step::Done(Err(Failure {
                        error: store_failure(&e, MERGED_EVENT),
                        fingerprint: Some(fp),
                    }))
                };
                Ok(Leased::kept(step))
            }
        }
    }

    /// The request failed: pacing said what that means.
    async fn failed(
        &self,
        d: &Delivery<'_>,
        failure: SinkFailure,
        verdict: Verdict,
        sent: &[u8],
    ) -> Result<Leased, Failure> {
        let fp = d.fp().to_string();
        let own_failure = |released| {
            let row = self.audit_row(
                d.msg,
                Some(&d.ev),
                &fp,
                outcome_of(&failure.error),
                json!({"error": failure.error.message, "version": d.ev.version}),
                false,
            );
            (row, released)
        };
        match verdict {
            // The target refused this message (a 4xx): permanent.
            Verdict::Proceed => {
                self.keep_answer(d, &failure, sent).await;
                let (row, _) = own_failure(true);
                self.log()
                    .write_releasing(DeliveryWrite::Audit(row), self.lease(&d.ev))
                    .await
                    .map_err(|e| Failure {
                        error: store_failure(&e, MERGED_EVENT),
                        fingerprint: Some(fp.clone()),
                    })?;
                Ok(Leased {
                    step: Step::Done(Err(Failure {
                        error: failure.error,
                        fingerprint: Some(fp),
                    })),
                    released: true,
                })
            }
            // Paced or held: sent again when the target allows, with
            // nothing recorded and no attempt spent.
            Verdict::Again => {
                let unpaced = matches!(
                    failure.signal,
                    Signal::Throttled {
                        retry_after: None,
                        ..
                    }
                );
                let step = if unpaced {
                    Step::Again {
                        wait: true,
                        view: None,
                    }
                } else {
                    Step::Hold
                };
                Ok(Leased::kept(step))
            }
            Verdict::Undecided(mark) => {
                if self
                    .pacer
                    .verdict(mark)
                    .await
                    .map_err(|e| stopped(e, &fp))?
                {
                    // The circuit opened: an outage, not this message.
                    return Ok(Leased::kept(Step::Hold));
                }
                // The target serves others: this failure is the message's
                // own and takes the retry schedule.
                self.keep_answer(d, &failure, sent).await;
                let (row, _) = own_failure(false);
                self.write(DeliveryWrite::Audit(row), &fp).await?;
                Ok(Leased::kept(Step::Done(Err(Failure {
                    error: failure.error,
                    fingerprint: Some(fp),
                }))))
            }
        }
    }
}

impl DeliverStage {
    /// Keeps what was sent and answered for the dead letter this failure
    /// may become (docs/spec.md §7.1); best effort: the delivery's own
    /// bookkeeping does not depend on it.
    async fn keep_answer(&self, d: &Delivery<'_>, failure: &SinkFailure, sent: &[u8]) {
        let Some(answer) = &failure.answer else {
            return;
        };
        let stage = super::stage_name(self.target);
        if let Err(e) = self
            .store
            .record_delivery_failure(stage, d.fp(), sent, answer)
            .await
        {
            tracing::warn!(error = %e, "Could not keep the failed delivery's request and answer.");
        }
    }
}

/// Shutdown hands the message back; a database that does not answer holds it.
fn slot_failure(e: super::slots::SlotError, fp: &str) -> Failure {
    match e {
        super::slots::SlotError::Stopped => stopped(super::pacing::Stopped, fp),
        super::slots::SlotError::Store(e) => Failure {
            error: store_failure(&e, MERGED_EVENT),
            fingerprint: Some(fp.to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_taken_over_leaves_every_wait_to_its_message() {
        let again = |wait| Step::Again { wait, view: None };
        let done = || Step::Done(Ok(Outcome::ack("delivered", None)));
        for (step, left) in [
            (Step::Busy, true),
            (Step::Hold, true),
            (again(true), true),
            (again(false), false),
            (done(), false),
        ] {
            assert_eq!(left_to_its_message(true, &step), left);
            assert!(!left_to_its_message(false, &step), "a message's own waits");
        }
    }
}
