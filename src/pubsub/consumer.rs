//! The consumer runtime, written once for every stage: pull over streaming
//! pull, run the stage, then act on its outcome — publish what it produced,
//! route failures to the error or dlq topic, ack. Nack only when our own
//! infrastructure is unreachable or we are shutting down (SPEC §2 trap b).

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::{DateTime, Utc};
use futures::FutureExt;
use google_cloud_pubsub::client::Subscriber;
use google_cloud_pubsub::model::Message;
use google_cloud_pubsub::subscriber::handler::Handler;
use google_cloud_pubsub::subscriber::ShutdownBehavior;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::publisher::{PublishFailure, Publishers};
use super::trace_context::trace_context;
use crate::metrics::{metrics, stage_label};
use crate::model::envelope::{self, FailureInfo};
use crate::model::fingerprint::fingerprint_bytes;
use crate::outbox_relay::OutboxCompleter;
use crate::stages::{
    ErrorClass, Failure, Incoming, Outcome, Route, Router, Stage, StageError, StageResult,
};
use crate::supervisor::Health;
use crate::topology::TopicKind;

/// What the runtime needs besides the stage.
pub struct Runtime {
    pub publishers: Arc<Publishers>,
    pub outbox: OutboxCompleter,
    /// Executions of a stage before a message is dead-lettered as `exhausted`.
    pub max_attempts: u32,
    /// Where held messages show up for `/readyz`.
    pub health: Arc<Health>,
}

/// What to tell the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Ack,
    Nack,
}

/// What carrying out a stage's result came to.
struct Settled {
    action: Action,
    label: &'static str,
    /// Outbox ids whose publish the broker confirmed here.
    confirmed: Vec<String>,
}

/// The outbox ids a key's lane saw confirmed most recently. A message that
/// ran while its predecessor's publish was in flight may list that merged
/// event as a leftover; the lane knows it is out and does not send it twice.
#[derive(Default)]
struct Recent(VecDeque<String>);

impl Recent {
    const KEEP: usize = 64;

    fn contains(&self, id: &str) -> bool {
        self.0.iter().any(|x| x == id)
    }

    fn extend(&mut self, ids: Vec<String>) {
        for id in ids {
            if self.0.len() == Self::KEEP {
                self.0.pop_front();
            }
            self.0.push_back(id);
        }
    }
}

/// Between two tries of a held message: from 100 ms, doubling, at most 5 s
/// (SPEC §4.1: work resumes within 5 s of the infrastructure's return).
const HOLD_MIN: Duration = Duration::from_millis(100);
const HOLD_MAX: Duration = Duration::from_secs(5);
/// How far each lease extension reaches (see `run`).
const LEASE_EXTENSION: Duration = Duration::from_secs(20);

/// The messages a consumer holds because our own infrastructure (database,
/// snapshot store, Pub/Sub) does not answer. While any is held the consumer
/// pulls nothing new, and `/readyz` says why.
pub struct Holds {
    label: String,
    health: Arc<Health>,
    /// Cancelled at shutdown: held messages are handed back (nack).
    stop: CancellationToken,
    count: AtomicUsize,
    /// Signalled when the last held message went through.
    released: Notify,
}

impl Holds {
    pub fn new(label: impl Into<String>, health: Arc<Health>, stop: CancellationToken) -> Self {
        Self {
            label: label.into(),
            health,
            stop,
            count: AtomicUsize::new(0),
            released: Notify::new(),
        }
    }

    fn paused(&self) -> bool {
        self.count.load(Ordering::SeqCst) > 0
    }
}

/// One message's hold: counted from its first failed try until it goes
/// through or is handed back (drop).
struct Hold<'a> {
    holds: &'a Holds,
    delays: backon::ExponentialBackoff,
    since: Option<Instant>,
    tries: u32,
}

impl<'a> Hold<'a> {
    fn new(holds: &'a Holds) -> Self {
        Self {
            holds,
            delays: ExponentialBuilder::default()
                .with_min_delay(HOLD_MIN)
                .with_max_delay(HOLD_MAX)
                .without_max_times()
                .with_jitter()
                .build(),
            since: None,
            tries: 0,
        }
    }

    /// Waits before the next try; false when shutdown came first (nack).
    async fn wait(&mut self, why: &str) -> bool {
        self.tries += 1;
        if self.since.is_none() {
            self.since = Some(Instant::now());
            self.holds.count.fetch_add(1, Ordering::SeqCst);
            self.holds.health.hold_started(&self.holds.label, why);
            tracing::warn!(error = %why, "Infrastructure unavailable; holding the message (lease extended) and retrying in-process.");
        } else {
            self.holds.health.hold_reason(&self.holds.label, why);
            if self.tries.is_multiple_of(20) {
                tracing::warn!(error = %why, tries = self.tries, "Still holding the message; infrastructure unavailable.");
            }
        }
        let delay = self.delays.next().unwrap_or(HOLD_MAX).min(HOLD_MAX);
        tokio::select! {
            _ = self.holds.stop.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        let Some(since) = self.since else { return };
        self.holds.health.hold_ended(&self.holds.label);
        if self.holds.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.holds.released.notify_one();
        }
        tracing::info!(held_for = ?since.elapsed(), tries = self.tries, "Held message released.");
    }
}

impl Runtime {
    /// Runs the stage on `msg`. While our infrastructure is unreachable the
    /// message is held and the stage tried again (SPEC §4.1); `None` when
    /// shutdown came first (the message is handed back).
    async fn run_held(
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
    async fn settle(
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
            }
        }
        match dead_reason {
            Some(reason) => {
                metrics()
                    .dead_letters
                    .with_label_values(&[stage_label(stage), reason])
                    .inc();
                tracing::warn!(stage, reason, attempt = msg.execution, error = %err, "Message dead-lettered.");
            }
            None => {
                metrics()
                    .retry_attempts
                    .with_label_values(&[stage_label(stage)])
                    .inc();
                tracing::info!(stage, attempt = msg.execution, error = %err, "Message failed; sent to the retry path.");
            }
        }
        (Action::Ack, label)
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

/// One consumer: a subscription and what handles its messages.
pub struct ConsumerSpec {
    /// Full subscription path.
    pub subscription: String,
    /// Short name for labels and logs (the subscription id).
    pub label: String,
    pub router: Arc<dyn Router>,
    pub max_outstanding: i64,
    /// How many ordering keys are processed at once; each key's messages
    /// run one after the other, in order. 0 = treat every message as
    /// unordered (held retries must not block each other).
    pub lanes: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("streaming pull on {subscription} failed: {message}")]
    Stream {
        subscription: String,
        message: String,
        /// The subscription does not exist (a configuration problem).
        not_found: bool,
    },
    #[error("streaming pull on {0} ended")]
    Ended(String),
    #[error("a worker lane of {0} stopped unexpectedly")]
    LaneDied(String),
}

impl From<&Message> for Incoming {
    fn from(m: &Message) -> Self {
        Incoming {
            data: m.data.clone(),
            attributes: m.attributes.clone(),
            message_id: m.message_id.clone(),
            publish_time: m.publish_time.as_ref().and_then(|t| {
                DateTime::<Utc>::from_timestamp(t.seconds(), t.nanos().max(0) as u32)
            }),
            ordering_key: m.ordering_key.clone(),
            execution: 1,
        }
    }
}

/// Pulls until `shutdown` fires or the stream fails. On shutdown, in-flight
/// messages get `grace` to finish; the rest are nacked.
pub async fn run(
    subscriber: &Subscriber,
    spec: &ConsumerSpec,
    rt: Arc<Runtime>,
    shutdown: CancellationToken,
    grace: Duration,
    on_streaming: impl Fn(),
) -> Result<(), ConsumerError> {
    let mut stream = subscriber
        .subscribe(spec.subscription.clone())
        .set_max_outstanding_messages(spec.max_outstanding)
        // Leases are extended 20 s at a time for as long as a message is
        // held (an outage, a retry's backoff; up to the client's 60-minute
        // max lease), so the messages of a replica that died come back
        // within about 20 s rather than a minute.
        .set_max_lease_extension(LEASE_EXTENSION)
        .set_shutdown_behavior(ShutdownBehavior::NackImmediately)
        .build();
    let stop_work = CancellationToken::new();
    let stop_holds = CancellationToken::new();
    let rt_health = rt.health.clone();
    let ctx = Arc::new(Ctx {
        rt,
        router: spec.router.clone(),
        label: spec.label.clone(),
        stop: stop_work.clone(),
        holds: Holds::new(spec.label.clone(), rt_health, stop_holds.clone()),
        queues: Mutex::new(HashMap::new()),
        permits: Arc::new(Semaphore::new(spec.lanes.max(1))),
    });
    let mut tasks = JoinSet::new();
    let mut announced = false;
    let result = loop {
        // Reap finished tasks so the set stays small; a task that died by a
        // panic in the runtime itself stops the consumer (the supervisor
        // restarts it) rather than leaving its ordering key stuck.
        let mut died = false;
        while let Some(done) = tasks.try_join_next() {
            died |= done.err().is_some_and(|e| e.is_panic());
        }
        if died {
            break Err(ConsumerError::LaneDied(spec.label.clone()));
        }
        // Flow control (SPEC §4.1): while a message is held for an outage,
        // pull nothing new; what is pulled would only wait or fail too.
        let paused = ctx.holds.paused();
        let next = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            Some(Err(e)) = tasks.join_next(), if !tasks.is_empty() => {
                if e.is_panic() {
                    break Err(ConsumerError::LaneDied(spec.label.clone()));
                }
                continue;
            }
            _ = ctx.holds.released.notified(), if paused => continue,
            _ = tokio::time::sleep(Duration::from_millis(500)), if paused => continue,
            n = stream.next(), if !paused => n,
        };
        match next {
            Some(Ok((m, h))) => {
                if !announced {
                    announced = true;
                    on_streaming();
                }
                dispatch(&ctx, &mut tasks, spec.lanes == 0, m, h);
            }
            Some(Err(e)) => {
                let not_found = e
                    .status()
                    .is_some_and(|s| s.code == google_cloud_gax::error::rpc::Code::NotFound);
                break Err(ConsumerError::Stream {
                    subscription: spec.label.clone(),
                    message: e.to_string(),
                    not_found,
                });
            }
            None => break Err(ConsumerError::Ended(spec.label.clone())),
        }
    };
    // Drain. Held retries are handed back at once (their schedule survives
    // in the envelope). Messages the client already holds are processed
    // within the grace rather than nacked: each one finished here is one
    // that does not depend on the broker's redelivery. No new pull is
    // waited for: a message counts as held only if it is there within 20 ms.
    let deadline = tokio::time::Instant::now() + grace;
    stop_holds.cancel();
    if result.is_ok() {
        let buffered_until = tokio::time::Instant::now() + grace / 2;
        while tokio::time::Instant::now() < buffered_until {
            match tokio::time::timeout(Duration::from_millis(20), stream.next()).await {
                Ok(Some(Ok((m, h)))) => dispatch(&ctx, &mut tasks, spec.lanes == 0, m, h),
                _ => break,
            }
        }
    }
    let drained = tokio::time::timeout_at(deadline, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        // Queued-but-unstarted messages are nacked; what still runs is
        // dropped (→ nack by the client).
        stop_work.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        tracing::warn!(subscription = %spec.label, "Drain grace elapsed; unfinished messages are handed back for redelivery.");
        tasks.abort_all();
    }
    stream.shutdown_token().shutdown().await;
    result
}

/// What the workers of one consumer share.
struct Ctx {
    rt: Arc<Runtime>,
    router: Arc<dyn Router>,
    label: String,
    stop: CancellationToken,
    /// Messages held for an outage or a retry's backoff; its token is
    /// cancelled at shutdown, so held messages are nacked, not waited for.
    holds: Holds,
    /// Messages waiting behind the one in progress, per ordering key; a key
    /// is present while its worker runs.
    queues: Mutex<HashMap<String, VecDeque<(Message, Handler)>>>,
    /// Bounds how many ordering keys are processed at once (`lanes`).
    permits: Arc<Semaphore>,
}

/// Hands a message to its worker: unordered ones run on their own (held
/// retries must not block each other; the broker's flow control bounds how
/// many there are), ordered ones queue behind their key's worker, so a
/// record's messages run in order and records in parallel.
fn dispatch(ctx: &Arc<Ctx>, tasks: &mut JoinSet<()>, unordered: bool, m: Message, h: Handler) {
    metrics()
        .messages_received
        .with_label_values(&[&ctx.label])
        .inc();
    if unordered || m.ordering_key.is_empty() {
        let ctx = ctx.clone();
        tasks.spawn(async move {
            handle_one(&ctx, m, h).await;
        });
        return;
    }
    let key = m.ordering_key.clone();
    let start_worker = {
        let mut q = ctx.queues.lock().unwrap_or_else(|p| p.into_inner());
        match q.get_mut(&key) {
            Some(queue) => {
                queue.push_back((m, h));
                None
            }
            None => {
                q.insert(key.clone(), VecDeque::new());
                Some((m, h))
            }
        }
    };
    if let Some(first) = start_worker {
        tasks.spawn(key_worker(ctx.clone(), key, first));
    }
}

/// Runs a key's messages in order until its queue is empty, one step
/// ahead: message n+1 runs its stage while message n's outputs are being
/// published (their confirmation is the slow part of a lane), but n+1
/// publishes nothing before n's publishes are confirmed, so outputs leave
/// in order. If n is handed back, n+1 is too: its outputs must not overtake.
async fn key_worker(ctx: Arc<Ctx>, key: String, first: (Message, Handler)) {
    let mut next = Some(first);
    let mut ran: Option<(Begun, Handler)> = None;
    let mut published = Recent::default();
    loop {
        while let Some((m, h)) = next.take() {
            if ctx.stop.is_cancelled() {
                // Not started before the drain: hand it back.
                h.nack();
            } else {
                let _permit = ctx.permits.clone().acquire_owned().await;
                let begun = match ran.take() {
                    None => begin(&ctx, &m).await,
                    Some((prev, prev_h)) => {
                        let (settled, begun) =
                            tokio::join!(end(&ctx, prev, prev_h, &published), begin(&ctx, &m));
                        if settled.action == Action::Nack {
                            end_early(&ctx, begun, h, "nacked");
                            next = pop(&ctx, &key);
                            continue;
                        }
                        published.extend(settled.confirmed);
                        begun
                    }
                };
                ran = Some((begun, h));
            }
            next = pop(&ctx, &key);
        }
        // The queue is empty: settle the last message before giving up the
        // key, so that a new worker for it cannot overtake its publishes.
        if let Some((prev, prev_h)) = ran.take() {
            let settled = end(&ctx, prev, prev_h, &published).await;
            published.extend(settled.confirmed);
            next = pop(&ctx, &key);
            if next.is_some() {
                continue;
            }
        }
        let mut q = ctx.queues.lock().unwrap_or_else(|p| p.into_inner());
        next = q.get_mut(&key).and_then(VecDeque::pop_front);
        if next.is_none() {
            q.remove(&key);
            return;
        }
    }
}

/// The next queued message of `key`, leaving the key registered.
fn pop(ctx: &Ctx, key: &str) -> Option<(Message, Handler)> {
    let mut q = ctx.queues.lock().unwrap_or_else(|p| p.into_inner());
    q.get_mut(key).and_then(VecDeque::pop_front)
}

/// A message whose stage has run (or that was settled before it could).
struct Begun {
    span: tracing::Span,
    started: Instant,
    ran: Ran,
}

enum Ran {
    /// The stage ran; its result is still to be carried out.
    Stage {
        stage: Arc<dyn Stage>,
        msg: Incoming,
        result: StageResult,
    },
    /// The router refused the message without running a stage.
    Rejected {
        stage: String,
        msg: Incoming,
        failure: Failure,
    },
    /// Nothing more to do but tell the broker.
    Done(Action, &'static str),
}

async fn handle_one(ctx: &Ctx, m: Message, h: Handler) {
    let begun = begin(ctx, &m).await;
    end(ctx, begun, h, &Recent::default()).await;
}

/// Routes the message and runs its stage (holding it through an outage).
async fn begin(ctx: &Ctx, m: &Message) -> Begun {
    let stop = &ctx.holds.stop;
    let span = tracing::info_span!(
        "message",
        message_id = %m.message_id,
        subscription = %ctx.label,
        ordering_key = %m.ordering_key,
        fingerprint = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    if let Some((trace, span_id)) = trace_context(&m.attributes) {
        span.record("trace_id", trace.as_str());
        span.record("span_id", span_id.as_str());
    }
    metrics().inflight.with_label_values(&[&ctx.label]).inc();
    // Processing time starts after a retry's scheduled wait (below).
    let mut started = Instant::now();
    let ran = async {
        match ctx.router.route(Incoming::from(m)) {
            Route::Reject {
                stage,
                msg,
                failure,
            } => Ran::Rejected {
                stage,
                msg,
                failure,
            },
            Route::Run {
                stage,
                msg,
                not_before,
            } => {
                if let Some(at) = not_before {
                    let wait = (at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
                    if !wait.is_zero() {
                        tracing::debug!(wait = ?wait, "Holding the message until its retry is due.");
                        // The client keeps extending the lease while we hold it.
                        tokio::select! {
                            _ = stop.cancelled() => return Ran::Done(Action::Nack, "nacked"),
                            _ = tokio::time::sleep(wait) => {}
                        }
                        started = Instant::now();
                    }
                }
                match ctx.rt.run_held(stage.as_ref(), &msg, &ctx.holds).await {
                    Some(result) => Ran::Stage { stage, msg, result },
                    None => Ran::Done(Action::Nack, "nacked"),
                }
            }
        }
    }
    .instrument(span.clone())
    .await;
    Begun { span, started, ran }
}

/// Carries out what the stage decided, then acks or nacks.
async fn end(ctx: &Ctx, b: Begun, h: Handler, published: &Recent) -> Settled {
    let settled = async {
        match b.ran {
            Ran::Done(action, label) => Settled {
                action,
                label,
                confirmed: Vec::new(),
            },
            Ran::Rejected {
                stage,
                msg,
                failure,
            } => {
                let (action, label) = ctx
                    .rt
                    .route_failure(&stage, &msg, failure, &ctx.holds)
                    .await;
                Settled {
                    action,
                    label,
                    confirmed: Vec::new(),
                }
            }
            Ran::Stage { stage, msg, result } => {
                ctx.rt
                    .settle(stage.name(), &msg, result, &ctx.holds, published)
                    .await
            }
        }
    }
    .instrument(b.span)
    .await;
    tell_broker(ctx, h, settled.action, settled.label, b.started).await;
    settled
}

/// Hands back a message whose stage ran but whose predecessor was handed
/// back: its outputs must not leave first. Its work is committed; the
/// redelivery finds it a duplicate and publishes what it left.
fn end_early(ctx: &Ctx, b: Begun, h: Handler, label: &'static str) {
    h.nack();
    finish_metrics(ctx, label, b.started);
}

async fn tell_broker(ctx: &Ctx, h: Handler, action: Action, label: &'static str, started: Instant) {
    match action {
        Action::Ack => h.ack(),
        Action::Nack => {
            h.nack();
            if !ctx.holds.stop.is_cancelled() {
                // Something we depend on is down: slow this lane down rather
                // than spin on redeliveries.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    finish_metrics(ctx, label, started);
}

fn finish_metrics(ctx: &Ctx, label: &'static str, started: Instant) {
    let m = metrics();
    m.inflight.with_label_values(&[&ctx.label]).dec();
    m.messages_processed
        .with_label_values(&[&ctx.label, label])
        .inc();
    m.processing_duration
        .with_label_values(&[&ctx.label])
        .observe(started.elapsed().as_secs_f64());
}
