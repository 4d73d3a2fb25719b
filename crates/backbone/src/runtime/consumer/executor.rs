//! Acting on a stage's result: publish what it produced, in order, or route
//! its failure to the error or dlq topic; a stage that panics becomes a
//! transient failure.

use std::collections::{HashMap, HashSet, VecDeque};
use std::panic::AssertUnwindSafe;

use bytes::Bytes;
use chrono::Utc;
use futures::FutureExt;

use super::hold::{Hold, Holds};
use super::{Action, Runtime};
use crate::internal_events::{emit, DeadLettered, Published, SentToRetry};
use crate::model::envelope::{self, FailureInfo};
use crate::model::fingerprint::fingerprint_bytes;
use crate::pubsub::publisher::{kind_label, PublishFailure};
use crate::stages::park::UNPUBLISHABLE;
use crate::stages::{
    ErrorClass, Failure, Incoming, Outbound, Outcome, Stage, StageError, StageResult,
};
use crate::topology::TopicKind;

/// What carrying out a stage's result came to.
pub(super) struct Settled {
    pub(super) action: Action,
    pub(super) label: &'static str,
    /// Outbox ids whose publish the broker confirmed here.
    pub(super) confirmed: Vec<String>,
}

/// The outbox ids a key's lane saw confirmed most recently. A message that
/// ran while its predecessor's publish was in flight may list that merged
/// event as a leftover; the lane knows it is out and does not send it twice.
#[derive(Default)]
pub(super) struct Recent(VecDeque<String>);

impl Recent {
    const KEEP: usize = 64;

    pub(super) fn contains(&self, id: &str) -> bool {
        self.0.iter().any(|x| x == id)
    }

    pub(super) fn extend(&mut self, ids: Vec<String>) {
        for id in ids {
            if self.0.len() == Self::KEEP {
                self.0.pop_front();
            }
            self.0.push_back(id);
        }
    }
}

/// How far publishing a run's outputs together got (`publish_together`).
#[derive(Debug, Default)]
pub(super) struct RunSent {
    /// Messages at the head of the run all of whose outputs went out.
    pub(super) done: usize,
    /// Of the message after them, its outputs that went out (a prefix).
    pub(super) next_output: usize,
    /// Outbox ids the broker confirmed.
    pub(super) confirmed: Vec<String>,
}

/// One publish of the runtime's own: a stage's output, or the envelope of a
/// failed message.
struct Publish<'a> {
    topic: TopicKind,
    data: &'a Bytes,
    attributes: &'a HashMap<String, String>,
    ordering_key: &'a str,
    /// Logged when the broker refuses it.
    refused: &'static str,
}

/// How a publish held through a broker outage ended.
enum Sent {
    /// The broker confirmed it.
    Published,
    /// Pub/Sub will never take it: parked in dead_letters instead.
    Parked(PublishFailure),
    /// Refused, or shutdown came first: the message is handed back (nack).
    HandedBack,
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
        skip: usize,
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
            Ok(outcome) => {
                self.complete(stage, outcome, &mut hold, published, skip)
                    .await
            }
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

    /// Publishes what the stage produced from its `skip`th output on (the
    /// ones before went out with a run, `publish_together`), in order; a
    /// broker that does not answer holds the message (its work is committed
    /// and the outbox keeps it, but handing it back would let its successors
    /// overtake it).
    async fn complete(
        &self,
        stage: &str,
        outcome: Outcome,
        hold: &mut Hold<'_>,
        published: &Recent,
        skip: usize,
    ) -> Settled {
        let mut confirmed = Vec::new();
        for out in outcome.publish.into_iter().skip(skip) {
            if out
                .outbox_id
                .as_ref()
                .is_some_and(|id| published.contains(id))
            {
                // A leftover read while this lane's previous publish of it
                // was in flight: it is out already, in order.
                continue;
            }
            let publish = Publish {
                topic: out.topic,
                data: &out.data,
                attributes: &out.attributes,
                ordering_key: &out.ordering_key,
                refused: "Publishing a stage's output was refused; nacking.",
            };
            match self
                .publish_held(stage, publish, || parked_output(stage, &out), hold)
                .await
            {
                // Parked, the outbox forgets it too, so the relay does not
                // try it again.
                Sent::Published | Sent::Parked(_) => {
                    if let Some(id) = &out.outbox_id {
                        self.outbox.done(id.clone());
                        confirmed.push(id.clone());
                    }
                }
                Sent::HandedBack => {
                    return Settled {
                        action: Action::Nack,
                        label: "nacked",
                        confirmed,
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

    /// Publishes the outputs of a run of one key's messages whose stages
    /// succeeded, every one started before any is awaited, so a burst's
    /// merged events share the client's batches instead of waiting for each
    /// other's confirmation. One attempt each: the client keeps a key's
    /// publishes in order and fails every later one after a failure, so
    /// nothing overtakes; the caller takes the one-at-a-time path (retries,
    /// holds, parking) from where this stopped. Outputs this lane saw
    /// confirmed, or started earlier in the run (a leftover read while its
    /// publish was in flight), are not sent again.
    pub(super) async fn publish_together(
        &self,
        outcomes: &[&Outcome],
        published: &Recent,
    ) -> RunSent {
        let mut started = Vec::new();
        let mut started_ids = HashSet::new();
        let mut futures = Vec::new();
        let mut stop = None;
        'run: for (m, outcome) in outcomes.iter().enumerate() {
            for (i, out) in outcome.publish.iter().enumerate() {
                if let Some(id) = out.outbox_id.as_deref() {
                    if published.contains(id) || !started_ids.insert(id) {
                        continue;
                    }
                }
                let f = self.publishers.start(
                    out.topic,
                    out.data.clone(),
                    out.attributes.clone(),
                    &out.ordering_key,
                );
                match f {
                    Some(f) => {
                        started.push((m, i, out));
                        futures.push(f);
                    }
                    None => {
                        stop = Some((m, i));
                        break 'run;
                    }
                }
            }
        }
        let results = futures::future::join_all(futures).await;
        let mut sent = RunSent::default();
        let mut failed: Option<(usize, usize)> = None;
        for ((m, i, out), r) in started.iter().zip(results) {
            match r {
                Ok(_) => {
                    emit(Published {
                        topic: kind_label(out.topic),
                    });
                    if let Some(id) = &out.outbox_id {
                        self.outbox.done(id.clone());
                        sent.confirmed.push(id.clone());
                    }
                }
                Err(e) => {
                    if failed.is_none() {
                        tracing::warn!(error = %e, "A run's publish failed; the rest goes one at a time.");
                        failed = Some((*m, *i));
                    }
                }
            }
        }
        if failed.is_some() {
            // Every started publish has answered, so the paused keys hold
            // nothing: let them publish again for the one-at-a-time path.
            for (_, _, out) in &started {
                self.publishers.resume(out.topic, &out.ordering_key);
            }
        }
        match [failed, stop].into_iter().flatten().min() {
            Some((m, i)) => {
                sent.done = m;
                sent.next_output = i;
            }
            None => sent.done = outcomes.len(),
        }
        sent
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
        let (dead_reason, attributes) = self.failure_envelope(stage, msg, &failure);
        // Error and dlq topics are unordered: no ordering key, so a failed
        // publish cannot pause a record's key.
        let publish = Publish {
            topic: match dead_reason {
                Some(_) => TopicKind::Dlq,
                None => TopicKind::Error,
            },
            data: &msg.data,
            attributes: &attributes,
            ordering_key: "",
            refused: "Could not route a failed message; nacking it.",
        };
        // Parked, it goes straight into dead_letters with the original kept.
        let original = || (msg.clone(), attributes.clone());
        match self.publish_held(stage, publish, original, hold).await {
            Sent::Published => {}
            Sent::Parked(e) => {
                emit(DeadLettered {
                    stage,
                    reason: UNPUBLISHABLE,
                    attempt: msg.execution,
                    error: &e,
                });
                return (Action::Ack, "dead_lettered");
            }
            Sent::HandedBack => return (Action::Nack, "nacked"),
        }
        match dead_reason {
            Some(reason) => {
                emit(DeadLettered {
                    stage,
                    reason,
                    attempt: msg.execution,
                    error: &err,
                });
                (Action::Ack, "dead_lettered")
            }
            None => {
                emit(SentToRetry {
                    stage,
                    attempt: msg.execution,
                    error: &err,
                });
                (Action::Ack, "retried")
            }
        }
    }

    /// The dead-letter reason of a failed execution (none: it gets another
    /// try) and the envelope it is published with.
    fn failure_envelope(
        &self,
        stage: &str,
        msg: &Incoming,
        failure: &Failure,
    ) -> (Option<&'static str>, HashMap<String, String>) {
        let err = &failure.error;
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
        let attributes = match dead_reason {
            Some(reason) => envelope::dead_letter_attributes(
                &msg.attributes,
                &msg.message_id,
                &msg.ordering_key,
                &info,
                reason,
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
                a
            }
        };
        (dead_reason, attributes)
    }

    /// Publishes one message, holding it while the broker does not answer
    /// (handing it back would let what follows overtake it). What Pub/Sub
    /// will never take is parked instead, never held: `original` gives the
    /// message and envelope to park.
    async fn publish_held(
        &self,
        stage: &str,
        p: Publish<'_>,
        original: impl FnOnce() -> (Incoming, HashMap<String, String>),
        hold: &mut Hold<'_>,
    ) -> Sent {
        loop {
            let sent = self
                .publishers
                .publish_to(
                    p.topic,
                    p.data.clone(),
                    p.attributes.clone(),
                    p.ordering_key,
                )
                .await;
            match sent {
                Ok(_) => return Sent::Published,
                Err(e @ PublishFailure::Broker { .. }) => {
                    if !hold.wait(&e.to_string()).await {
                        return Sent::HandedBack;
                    }
                }
                Err(e @ PublishFailure::Refused(_)) => {
                    tracing::error!(stage, error = %e, "{}", p.refused);
                    return Sent::HandedBack;
                }
                Err(e @ PublishFailure::Unpublishable { .. }) => {
                    let (msg, envelope) = original();
                    if !self
                        .park_unpublishable(stage, &msg, &envelope, &e, hold)
                        .await
                    {
                        return Sent::HandedBack;
                    }
                    return Sent::Parked(e);
                }
            }
        }
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
        envelope: &HashMap<String, String>,
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

/// A stage's output as a message to park when Pub/Sub will never take it,
/// and its envelope: the output's attributes with the stage and key.
fn parked_output(stage: &str, out: &Outbound) -> (Incoming, HashMap<String, String>) {
    let output = Incoming {
        data: out.data.clone(),
        attributes: out.attributes.clone(),
        message_id: format!("output/{}", out.outbox_id.as_deref().unwrap_or("none")),
        publish_time: None,
        ordering_key: out.ordering_key.clone(),
        execution: 1,
        turn: Default::default(),
    };
    let mut envelope = out.attributes.clone();
    envelope.insert(envelope::STAGE.into(), stage.to_string());
    envelope.insert(envelope::ORDERING_KEY.into(), out.ordering_key.clone());
    (output, envelope)
}
