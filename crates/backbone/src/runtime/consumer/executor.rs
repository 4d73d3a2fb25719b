//! Acting on a stage's result: publish what it produced, in order, or route
//! its failure to the error or dlq topic; a stage that panics becomes a
//! transient failure.

use std::panic::AssertUnwindSafe;

use chrono::Utc;
use futures::FutureExt;

use super::hold::{Hold, Holds};
use super::lanes::Recent;
use super::{Action, Runtime};
use crate::internal_events::{emit, DeadLettered, SentToRetry};
use crate::model::envelope::{self, FailureInfo};
use crate::model::fingerprint::fingerprint_bytes;
use crate::pubsub::publisher::PublishFailure;
use crate::stages::park::UNPUBLISHABLE;
use crate::stages::{ErrorClass, Failure, Incoming, Outcome, Stage, StageError, StageResult};
use crate::topology::TopicKind;

/// What carrying out a stage's result came to.
pub(super) struct Settled {
    pub(super) action: Action,
    pub(super) label: &'static str,
    /// Outbox ids whose publish the broker confirmed here.
    pub(super) confirmed: Vec<String>,
}

impl Runtime {
    /// Runs the stage on `msg`. While our infrastructure is unreachable the
    /// message is held and the stage tried again (docs/spec.md §4.1); `None` when
    /// shutdown came first (the message is handed back).
    pub(super) async fn run_held(
        &self,
        stage: &dyn Stage,
        msg: &Incoming,
        holds: &Holds,
    ) -> Option<StageResult> {
        let mut hold = Hold::new(holds);
        loop {
            let r = run_stage(stage, msg).await;
            match &r {
                Err(f) if f.error.class == ErrorClass::Unavailable => {
                    if !hold.wait(&f.error.message).await {
                        return None;
                    }
                }
                _ => return Some(r),
            }
        }
    }

    /// Carries out a stage's result: publishes what it produced, in order
    /// (skipping outbox rows in `published`: this lane already saw them
    /// confirmed), or routes the failure. Returns the broker action, the
    /// outcome label and the outbox ids confirmed here.
    pub(super) async fn settle(
        &self,
        stage: &str,
        msg: &Incoming,
        result: StageResult,
        holds: &Holds,
        published: &Recent,
    ) -> Settled {
        let fp = match &result {
            Ok(o) => o.fingerprint.as_deref(),
            Err(f) => f.fingerprint.as_deref(),
        };
        if let Some(fp) = fp {
            tracing::Span::current().record("fingerprint", fp);
        }
        let mut hold = Hold::new(holds);
        match result {
            Ok(outcome) => self.complete(stage, outcome, &mut hold, published).await,
            Err(failure) => {
                let (action, label) = self
                    .route_failure_held(stage, msg, failure, &mut hold)
                    .await;
                Settled {
                    action,
                    label,
                    confirmed: Vec::new(),
                }
            }
        }
    }

    /// Publishes what the stage produced, in order; a broker that does not
    /// answer holds the message (its work is committed and the outbox keeps
    /// it, but handing it back would let its successors overtake it).
    async fn complete(
        &self,
        stage: &str,
        outcome: Outcome,
        hold: &mut Hold<'_>,
        published: &Recent,
    ) -> Settled {
        let mut confirmed = Vec::new();
        let nacked = |confirmed| Settled {
            action: Action::Nack,
            label: "nacked",
            confirmed,
        };
        for out in outcome.publish {
            if out
                .outbox_id
                .as_ref()
                .is_some_and(|id| published.contains(id))
            {
                // A leftover read while this lane's previous publish of it
                // was in flight: it is out already, in order.
                continue;
            }
            loop {
                match self
                    .publishers
                    .publish_to(
                        out.topic,
                        out.data.clone(),
                        out.attributes.clone(),
                        &out.ordering_key,
                    )
                    .await
                {
                    Ok(_) => {
                        if let Some(id) = &out.outbox_id {
                            self.outbox.done(id.clone());
                            confirmed.push(id.clone());
                        }
                        break;
                    }
                    Err(e @ PublishFailure::Broker { .. }) => {
                        if !hold.wait(&e.to_string()).await {
                            return nacked(confirmed);
                        }
                    }
                    Err(e @ PublishFailure::Refused(_)) => {
                        tracing::error!(stage, error = %e, "Publishing a stage's output was refused; nacking.");
                        return nacked(confirmed);
                    }
                    Err(e @ PublishFailure::Unpublishable { .. }) => {
                        // Never held: it would be refused forever. The
                        // output is parked (its data kept) and the outbox
                        // forgets it, so the relay does not try it again.
                        let output = Incoming {
                            data: out.data.clone(),
                            attributes: out.attributes.clone(),
                            message_id: format!(
                                "output/{}",
                                out.outbox_id.as_deref().unwrap_or("none")
                            ),
                            publish_time: None,
                            ordering_key: out.ordering_key.clone(),
                            execution: 1,
                        };
                        let mut envelope = out.attributes.clone();
                        envelope.insert(envelope::STAGE.into(), stage.to_string());
                        envelope.insert(envelope::ORDERING_KEY.into(), out.ordering_key.clone());
                        if !self
                            .park_unpublishable(stage, &output, &envelope, &e, hold)
                            .await
                        {
                            return nacked(confirmed);
                        }
                        if let Some(id) = &out.outbox_id {
                            self.outbox.done(id.clone());
                            confirmed.push(id.clone());
                        }
                        break;
                    }
                }
            }
        }
        tracing::debug!(stage, outcome = outcome.label, "Message processed.");
        Settled {
            action: Action::Ack,
            label: outcome.label,
            confirmed,
        }
    }

    /// Routes a failed execution: error topic for another try, dlq when it is
    /// permanent or the attempts are used up.
    pub async fn route_failure(
        &self,
        stage: &str,
        msg: &Incoming,
        failure: Failure,
        holds: &Holds,
    ) -> (Action, &'static str) {
        let mut hold = Hold::new(holds);
        self.route_failure_held(stage, msg, failure, &mut hold)
            .await
    }

    async fn route_failure_held(
        &self,
        stage: &str,
        msg: &Incoming,
        failure: Failure,
        hold: &mut Hold<'_>,
    ) -> (Action, &'static str) {
        let err = &failure.error;
        if err.class == ErrorClass::Unavailable {
            // Only reachable for a rejection that was never run; kept safe.
            tracing::warn!(stage, error = %err, "Infrastructure unavailable; nacking the message.");
            return (Action::Nack, "nacked");
        }
        let fingerprint = failure
            .fingerprint
            .clone()
            .unwrap_or_else(|| fingerprint_bytes(&msg.data));
        let info = FailureInfo {
            stage,
            attempt: msg.execution,
            error: &err.message,
            fingerprint: &fingerprint,
            now: Utc::now(),
        };
        let dead_reason = match err.dead_reason() {
            Some(r) => Some(r),
            None if msg.execution >= self.max_attempts => Some("exhausted"),
            None => None,
        };
        let (topic, attributes, label) = match dead_reason {
            Some(reason) => (
                TopicKind::Dlq,
                envelope::dead_letter_attributes(
                    &msg.attributes,
                    &msg.message_id,
                    &msg.ordering_key,
                    &info,
                    reason,
                ),
                "dead_lettered",
            ),
            None => {
                let mut a = envelope::error_attributes(
                    &msg.attributes,
                    &msg.message_id,
                    &msg.ordering_key,
                    &info,
                );
                if let Some(after) = err.retry_after {
                    a.insert(
                        envelope::RETRY_AFTER_MS.into(),
                        after.as_millis().to_string(),
                    );
                }
                (TopicKind::Error, a, "retried")
            }
        };
        // Error and dlq topics are unordered: no ordering key, so a failed
        // publish cannot pause a record's key. A broker that does not answer
        // holds the message rather than handing it back out of order.
        loop {
            match self
                .publishers
                .publish_to(topic, msg.data.clone(), attributes.clone(), "")
                .await
            {
                Ok(_) => break,
                Err(e @ PublishFailure::Broker { .. }) => {
                    if !hold.wait(&e.to_string()).await {
                        return (Action::Nack, "nacked");
                    }
                }
                Err(e @ PublishFailure::Refused(_)) => {
                    tracing::error!(stage, error = %e, "Could not route a failed message; nacking it.");
                    return (Action::Nack, "nacked");
                }
                Err(e @ PublishFailure::Unpublishable { .. }) => {
                    // Permanent for this message: parked straight into
                    // dead_letters with the original kept, never held.
                    if !self
                        .park_unpublishable(stage, msg, &attributes, &e, hold)
                        .await
                    {
                        return (Action::Nack, "nacked");
                    }
                    emit(DeadLettered {
                        stage,
                        reason: UNPUBLISHABLE,
                        attempt: msg.execution,
                        error: &e,
                    });
                    return (Action::Ack, "dead_lettered");
                }
            }
        }
        match dead_reason {
            Some(reason) => {
                emit(DeadLettered {
                    stage,
                    reason,
                    attempt: msg.execution,
                    error: &err,
                });
            }
            None => {
                emit(SentToRetry {
                    stage,
                    attempt: msg.execution,
                    error: &err,
                });
            }
        }
        (Action::Ack, label)
    }
}

impl Runtime {
    /// Parks a message whose envelope (or output) Pub/Sub will not take,
    /// holding it while the database does not answer; false when shutdown
    /// came first (nack: the redelivery parks it).
    async fn park_unpublishable(
        &self,
        stage: &str,
        msg: &Incoming,
        envelope: &std::collections::HashMap<String, String>,
        why: &PublishFailure,
        hold: &mut Hold<'_>,
    ) -> bool {
        let why = why.to_string();
        tracing::error!(stage, error = %why, "Pub/Sub refuses this message; parking it in dead_letters as unpublishable (the original kept).");
        loop {
            match self.park.park_unpublishable(msg, envelope, &why).await {
                Ok(_) => return true,
                Err(e) => {
                    if !hold
                        .wait(&format!("cannot park an unpublishable message: {e}"))
                        .await
                    {
                        return false;
                    }
                }
            }
        }
    }
}

/// Runs the stage once. A panicking stage (a bug tripped by one poison
/// message) must not take its lane down: it becomes a transient failure, so
/// the message goes the retry path and is dead-lettered if it keeps panicking.
async fn run_stage(stage: &dyn Stage, msg: &Incoming) -> StageResult {
    match AssertUnwindSafe(stage.handle(msg)).catch_unwind().await {
        Ok(r) => r,
        Err(panic) => {
            let what = panic_message(panic.as_ref());
            tracing::error!(stage = stage.name(), panic = %what, "Stage panicked while handling a message; routing it to the retry path.");
            Err(Failure {
                error: StageError::transient(format!("stage {} panicked: {what}", stage.name())),
                fingerprint: None,
            })
        }
    }
}

/// The text of a panic payload (`panic!` with a literal or a format string).
fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}
