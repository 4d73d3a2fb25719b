//! The streaming-pull loop of one consumer: pull while no message is held
//! for an outage, hand each message to its lane, and drain on shutdown.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use google_cloud_pubsub::client::Subscriber;
use google_cloud_pubsub::subscriber::{MessageStream, ShutdownBehavior};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::hold::Holds;
use super::lanes::dispatch;
use super::{ConsumerError, ConsumerSpec, Ctx, Runtime};

/// How far each lease extension reaches (see `open`): Pub/Sub's shortest
/// ack deadline. The client extends every 3 s, so 7 s of slack remain.
pub const LEASE_EXTENSION: Duration = Duration::from_secs(10);
/// The longest a message is held with its lease extended: the
/// subscriptions' message retention (`provision` sets 7 days).
const MAX_LEASE: Duration = crate::topology::MESSAGE_RETENTION;

/// Pulls until `shutdown` fires or the stream fails. On shutdown, in-flight
/// messages get `grace` to finish; the rest are nacked.
pub async fn run(
    subscriber: &Subscriber,
    spec: &ConsumerSpec,
    rt: Arc<Runtime>,
    shutdown: CancellationToken,
    grace: Duration,
) -> Result<(), ConsumerError> {
    // Declared before the stream so it is dropped after it: the count falls
    // only once the stream is gone, on every path out (error, abort, panic).
    let _open = crate::metrics::OpenStream::new(&spec.label);
    let mut stream = open(subscriber, spec);
    let ctx = Arc::new(Ctx {
        holds: Holds::new(
            spec.label.clone(),
            rt.health.clone(),
            CancellationToken::new(),
        ),
        rt,
        router: spec.router.clone(),
        label: spec.label.clone(),
        stop: CancellationToken::new(),
        queues: Mutex::new(HashMap::new()),
        queued: AtomicUsize::new(0),
        permits: Arc::new(Semaphore::new(spec.lanes.max(1))),
        ahead: spec.ahead.max(1),
    });
    let mut tasks = JoinSet::new();
    let result = pull(&ctx, spec, &mut stream, &mut tasks, &shutdown).await;
    drain(&ctx, spec, &mut stream, &mut tasks, result.is_ok(), grace).await;
    stream.shutdown_token().shutdown().await;
    result
}

/// The subscription's streaming pull, with its leases and flow control.
fn open(subscriber: &Subscriber, spec: &ConsumerSpec) -> MessageStream {
    subscriber
        .subscribe(spec.subscription.clone())
        .set_max_outstanding_messages(spec.max_outstanding)
        // Leases are extended 10 s at a time for as long as a message is
        // held (an outage, a retry's backoff, a target held; up to
        // MAX_LEASE), so the messages of a replica that died come back
        // within about 10 s rather than a minute.
        .set_max_lease_extension(LEASE_EXTENSION)
        // A held delivery (a target's maintenance window lasts hours, docs/spec.md
        // §4.2) keeps its lease for as long as the subscription keeps it.
        .set_max_lease(MAX_LEASE)
        .set_shutdown_behavior(ShutdownBehavior::NackImmediately)
        .build()
}

/// Hands each pulled message to its lane until `shutdown` fires (Ok), the
/// stream fails or ends, or a lane dies.
async fn pull(
    ctx: &Arc<Ctx>,
    spec: &ConsumerSpec,
    stream: &mut MessageStream,
    tasks: &mut JoinSet<()>,
    shutdown: &CancellationToken,
) -> Result<(), ConsumerError> {
    let queue_limit = usize::try_from(spec.max_outstanding)
        .ok()
        .filter(|n| *n > 0)
        .unwrap_or(usize::MAX);
    loop {
        // Reap finished tasks so the set stays small; a task that died by a
        // panic in the runtime itself stops the consumer (the supervisor
        // restarts it) rather than leaving its ordering key stuck.
        let mut died = false;
        while let Some(done) = tasks.try_join_next() {
            died |= done.err().is_some_and(|e| e.is_panic());
        }
        if died {
            return Err(ConsumerError::LaneDied(spec.label.clone()));
        }
        // Flow control (docs/spec.md §4.1): while a message is held for an outage,
        // pull nothing new; what is pulled would only wait or fail too. The
        // same while the stage's target is held or paused (docs/spec.md §4.2).
        let paused = ctx.holds.paused() || !ctx.router.accepting();
        // Client-side flow control: what waits behind its key's message in
        // progress stays under max_outstanding.
        let full = ctx.queued.load(Ordering::Acquire) >= queue_limit;
        let next = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            Some(Err(e)) = tasks.join_next(), if !tasks.is_empty() => {
                if e.is_panic() {
                    return Err(ConsumerError::LaneDied(spec.label.clone()));
                }
                continue;
            }
            _ = ctx.holds.released.notified(), if paused => continue,
            _ = tokio::time::sleep(Duration::from_millis(500)), if paused => continue,
            _ = tokio::time::sleep(Duration::from_millis(5)), if !paused && full => continue,
            n = stream.next(), if !paused && !full => n,
        };
        match next {
            Some(Ok((m, h))) => dispatch(ctx, tasks, spec.lanes == 0, m, h),
            Some(Err(e)) => {
                let not_found = e
                    .status()
                    .is_some_and(|s| s.code == google_cloud_gax::error::rpc::Code::NotFound);
                return Err(ConsumerError::Stream {
                    subscription: spec.label.clone(),
                    message: e.to_string(),
                    not_found,
                });
            }
            None => return Err(ConsumerError::Ended(spec.label.clone())),
        }
    }
}

/// Drains after the pull stopped. Held retries are handed back at once
/// (their schedule survives in the envelope). After a shutdown, messages the
/// client already holds are processed within the grace rather than nacked:
/// each one finished here is one that does not depend on the broker's
/// redelivery. No new pull is waited for: a message counts as held only if
/// it is there within 20 ms.
async fn drain(
    ctx: &Arc<Ctx>,
    spec: &ConsumerSpec,
    stream: &mut MessageStream,
    tasks: &mut JoinSet<()>,
    shut_down: bool,
    grace: Duration,
) {
    let deadline = tokio::time::Instant::now() + grace;
    ctx.holds.stop.cancel();
    if shut_down {
        let buffered_until = tokio::time::Instant::now() + grace / 2;
        while tokio::time::Instant::now() < buffered_until {
            match tokio::time::timeout(Duration::from_millis(20), stream.next()).await {
                Ok(Some(Ok((m, h)))) => dispatch(ctx, tasks, spec.lanes == 0, m, h),
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
        ctx.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        tracing::warn!(subscription = %spec.label, "Drain grace elapsed; unfinished messages are handed back for redelivery.");
        tasks.abort_all();
    }
}
