//! Pacing one target (docs/spec.md §4.2): every delivery to it, live or retried,
//! takes a permit here first. A permit is bounded by an adaptive concurrency
//! limit ([`aimd`]) and an optional rate cap; a `Retry-After` pauses the
//! whole target; an open [`circuit`] holds every delivery but one probe.
//! Waiting here never fails a delivery and consumes no attempt: only
//! shutdown ends a wait (the message is then handed back).

pub mod aimd;
pub mod answer;
pub mod circuit;
mod next_in_line;
pub mod snapshot;

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{watch, OwnedMutexGuard, OwnedSemaphorePermit, Semaphore};
// tokio's clock, so the tests run on paused time instead of real waits.
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::aimd::{Aimd, Change};
pub use self::answer::{Answer, Stopped, Verdict};
pub use self::circuit::Cause;
use self::circuit::{AfterFailure, Circuit};
pub use self::next_in_line::NEXT_IN_LINE;
pub use self::snapshot::{OperatorPause, TargetSnapshot};
use crate::internal_events::{emit, CircuitClosed, CircuitOpened, TargetProbed, TargetThrottled};
use crate::metrics;

/// How one target is paced (from `targets.<t>.*`).
#[derive(Debug, Clone)]
pub struct PacingSettings {
    pub initial_concurrency: usize,
    pub max_concurrency: usize,
    /// Permits beyond the limit, for deliveries that wait at the account's
    /// slots (`account_concurrency`): the slots bound the requests at the
    /// target, and an ended request hands its slot to a waiter without a
    /// database write only when someone waits there.
    pub slot_waiters: usize,
    /// Requests per second; `None`: no cap.
    pub rate_limit: Option<f64>,
    pub rate_burst: u32,
    pub max_retry_after: Duration,
    pub circuit_failures: u32,
    pub probe_max_interval: Duration,
    /// How long a failed request waits for evidence of whether the target
    /// serves anyone (a success elsewhere, or the circuit opening).
    pub verdict_wait: Duration,
}

/// A failed request after which no other request to the target started or
/// ended for this long, and none is out or waiting, has nobody to compare
/// with: its failure is its own.
const QUIET: Duration = Duration::from_secs(1);

struct Inner {
    /// Paused by an operator: held like an open circuit (cause `paused`).
    operator: Option<OperatorPause>,
    aimd: Aimd,
    circuit: Circuit,
    /// Permits the semaphore holds for the current limit.
    applied: usize,
    /// Permits to forget as they come back, after a decrease.
    debt: usize,
    /// Turns of the next in line: the highest limit so far, at least
    /// [`NEXT_IN_LINE`] (grown, never shrunk: a turn is held only while
    /// preparing).
    next_applied: usize,
    inflight: usize,
    paused_until: Option<Instant>,
    /// Successes so far: a failure's verdict looks for one after it.
    successes: u64,
    held: usize,
    /// Deliveries inside [`Pacer::acquire`].
    waiting: usize,
    /// When a request last started or ended.
    last_activity: Instant,
}

pub struct Pacer {
    target: &'static str,
    settings: PacingSettings,
    sem: Arc<Semaphore>,
    /// The turns of the waiters that prepare (FIFO): as many as the
    /// highest limit so far, at least [`NEXT_IN_LINE`].
    next_in_line: Arc<Semaphore>,
    inner: Mutex<Inner>,
    /// Bumped on every answer, so verdicts wake up.
    changed: watch::Sender<u64>,
    /// One probe at a time while the circuit is open, in arrival order.
    probe: Arc<tokio::sync::Mutex<()>>,
    /// Wakes the deliveries an operator's pause holds when it ends.
    resumed: tokio::sync::Notify,
    rate: Option<DefaultDirectRateLimiter>,
    stop: CancellationToken,
}

/// A turn to send one request; give it back through [`Pacer::finish`].
pub struct Permit {
    pacer: Arc<Pacer>,
    sem: Option<OwnedSemaphorePermit>,
    probe: Option<OwnedMutexGuard<()>>,
    started: Instant,
}

impl Permit {
    pub fn is_probe(&self) -> bool {
        self.probe.is_some()
    }

    /// The request starts now: what came between the permit and the
    /// request (an account-wide slot) is not the target's latency.
    pub fn restart(&mut self) {
        self.started = Instant::now();
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut st = self.pacer.lock();
        st.inflight = st.inflight.saturating_sub(1);
        if let Some(p) = self.sem.take() {
            if st.debt > 0 {
                st.debt -= 1;
                p.forget();
            }
        }
        self.pacer.publish_gauges(&st);
    }
}

/// Counts a delivery as waiting for a permit while it lives.
struct WaitGuard<'a>(&'a Pacer);

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.waiting = st.waiting.saturating_sub(1);
    }
}

/// Counts a delivery as held while it lives.
struct HeldGuard<'a>(&'a Pacer);

impl Drop for HeldGuard<'_> {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.held = st.held.saturating_sub(1);
        self.0.publish_gauges(&st);
    }
}

impl Pacer {
    pub fn new(
        target: &'static str,
        settings: PacingSettings,
        stop: CancellationToken,
    ) -> Arc<Self> {
        let max = settings.max_concurrency.max(1);
        let aimd = Aimd::new(settings.initial_concurrency, max);
        let applied = aimd.limit() + settings.slot_waiters;
        let next_applied = aimd.limit().max(NEXT_IN_LINE);
        let rate = settings.rate_limit.filter(|r| *r > 0.0).map(|r| {
            let burst = NonZeroU32::new(settings.rate_burst.max(1)).unwrap_or(NonZeroU32::MIN);
            let period = Duration::from_secs_f64(1.0 / r).max(Duration::from_nanos(1));
            let quota = Quota::with_period(period)
                .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
                .allow_burst(burst);
            RateLimiter::direct(quota)
        });
        let pacer = Arc::new(Self {
            target,
            sem: Arc::new(Semaphore::new(applied)),
            next_in_line: Arc::new(Semaphore::new(next_applied)),
            inner: Mutex::new(Inner {
                operator: None,
                aimd,
                circuit: Circuit::new(settings.circuit_failures, settings.probe_max_interval),
                applied,
                debt: 0,
                next_applied,
                inflight: 0,
                paused_until: None,
                successes: 0,
                held: 0,
                waiting: 0,
                last_activity: Instant::now(),
            }),
            changed: watch::channel(0).0,
            probe: Arc::new(tokio::sync::Mutex::new(())),
            resumed: tokio::sync::Notify::new(),
            rate,
            stop,
            settings,
        });
        pacer.publish_gauges(&pacer.lock());
        pacer
    }

    pub fn target(&self) -> &'static str {
        self.target
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the target takes new work: false while its circuit is open or
    /// a `Retry-After` pauses it, so its consumer pulls nothing new.
    pub fn accepting(&self) -> bool {
        let st = self.lock();
        st.operator.is_none()
            && !st.circuit.is_open()
            && st.paused_until.is_none_or(|u| u <= Instant::now())
    }

    /// Pauses (`Some`) or resumes (`None`) the target by an operator's
    /// hand: every delivery is held, no attempt spent, nothing
    /// dead-lettered, until resumed.
    pub fn set_operator_pause(&self, pause: Option<OperatorPause>) {
        let mut st = self.lock();
        if st.operator == pause {
            return;
        }
        let resumed = st.operator.is_some() && pause.is_none();
        st.operator = pause;
        self.publish_gauges(&st);
        drop(st);
        if resumed {
            self.resumed.notify_waiters();
        }
    }

    pub fn operator_pause(&self) -> Option<OperatorPause> {
        self.lock().operator.clone()
    }

    pub fn snapshot(&self) -> TargetSnapshot {
        let st = self.lock();
        let now = Instant::now();
        TargetSnapshot {
            target: self.target,
            concurrency_limit: st.aimd.limit(),
            inflight: st.inflight,
            held: st.held,
            circuit_open: st.circuit.is_open() || st.operator.is_some(),
            circuit_cause: if st.operator.is_some() {
                Some(Cause::Paused)
            } else {
                st.circuit.cause()
            },
            paused_by: st.operator.clone(),
            circuit_open_for_seconds: st.circuit.open_for(now).map(|d| d.as_secs_f64()),
            paused_for_seconds: st
                .paused_until
                .filter(|u| *u > now)
                .map(|u| (u - now).as_secs_f64()),
            mean_rtt_ms: st.aimd.mean_rtt().map(|d| d.as_secs_f64() * 1000.0),
            concurrency_ceiling: st.aimd.ceiling(Instant::now()),
            account_concurrency: None,
            account_slots_held: None,
        }
    }

    fn held(&self) -> HeldGuard<'_> {
        let mut st = self.lock();
        st.held += 1;
        self.publish_gauges(&st);
        HeldGuard(self)
    }

    /// Sleeps, or fails with [`Stopped`] at shutdown.
    pub async fn sleep(&self, d: Duration) -> Result<(), Stopped> {
        tokio::select! {
            _ = self.stop.cancelled() => Err(Stopped),
            _ = tokio::time::sleep(d) => Ok(()),
        }
    }

    async fn sleep_until(&self, at: Instant) -> Result<(), Stopped> {
        self.sleep(at.saturating_duration_since(Instant::now()))
            .await
    }

    async fn cancellable<T>(&self, f: impl std::future::Future<Output = T>) -> Result<T, Stopped> {
        tokio::select! {
            _ = self.stop.cancelled() => Err(Stopped),
            v = f => Ok(v),
        }
    }

    /// Waits until a request may go to the target.
    pub async fn acquire(self: &Arc<Self>) -> Result<Permit, Stopped> {
        Ok(self.acquire_prepared(|| async {}).await?.0)
    }

    /// [`Pacer::acquire`], running `prepare` (what the request needs from
    /// the store) once the delivery is next in line, not after the permit:
    /// a permit is the target's capacity and is held only by the request.
    /// With a permit free, `prepare` runs under it (nothing waits for it).
    pub async fn acquire_prepared<T, F, Fut>(
        self: &Arc<Self>,
        mut prepare: F,
    ) -> Result<(Permit, T), Stopped>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        self.lock().waiting += 1;
        let _waiting = WaitGuard(self);
        let mut held: Option<HeldGuard<'_>> = None;
        loop {
            if self.stop.is_cancelled() {
                return Err(Stopped);
            }
            let (paused_until, open, by_operator) = {
                let st = self.lock();
                (
                    st.paused_until.filter(|u| *u > Instant::now()),
                    st.circuit.is_open(),
                    st.operator.is_some(),
                )
            };
            if by_operator {
                held.get_or_insert_with(|| self.held());
                // Woken at resume; looked at again now and then all the same.
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    self.cancellable(self.resumed.notified()).await
                })
                .await;
                continue;
            }
            if let Some(until) = paused_until {
                held.get_or_insert_with(|| self.held());
                self.sleep_until(until).await?;
                continue;
            }
            if open {
                held.get_or_insert_with(|| self.held());
                let guard = self.cancellable(self.probe.clone().lock_owned()).await?;
                // The probe before this one may have closed the circuit.
                let Some(at) = self.lock().circuit.next_probe() else {
                    continue;
                };
                self.sleep_until(at).await?;
                if !self.lock().circuit.is_open() {
                    continue;
                }
                let (sem, prepared) = self.next_in_line(&mut prepare).await?;
                emit(TargetProbed {
                    target: self.target,
                });
                return Ok((self.permit(sem, Some(guard)), prepared));
            }
            let (sem, prepared) = self.next_in_line(&mut prepare).await?;
            {
                // What changed while this delivery queued for its permit.
                let st = self.lock();
                if st.operator.is_some()
                    || st.circuit.is_open()
                    || st.paused_until.is_some_and(|u| u > Instant::now())
                {
                    continue;
                }
            }
            drop(held.take());
            if let Some(rate) = &self.rate {
                self.cancellable(rate.until_ready()).await?;
            }
            return Ok((self.permit(sem, None), prepared));
        }
    }

    fn permit(
        self: &Arc<Self>,
        sem: OwnedSemaphorePermit,
        probe: Option<OwnedMutexGuard<()>>,
    ) -> Permit {
        let mut st = self.lock();
        st.inflight += 1;
        st.last_activity = Instant::now();
        let inflight = st.inflight;
        st.aimd.started(inflight);
        self.publish_gauges(&st);
        Permit {
            pacer: self.clone(),
            sem: Some(sem),
            probe,
            started: Instant::now(),
        }
    }

    /// Records how the request of `permit` (for a record hashed to
    /// `record`) ended, and says what the delivery does next.
    pub fn finish(&self, permit: Permit, record: u64, answer: Answer, error: &str) -> Verdict {
        let now = Instant::now();
        let rtt = now.saturating_duration_since(permit.started);
        let probe = permit.is_probe();
        let mut st = self.lock();
        st.last_activity = now;
        let verdict = match answer {
            Answer::Success | Answer::Rejected => {
                st.successes += 1;
                let rtt = (answer == Answer::Success).then_some(rtt);
                let change = st.aimd.record(now, rtt, false);
                self.log_change(change, &st);
                self.close(&mut st, now);
                Verdict::Proceed
            }
            Answer::Throttled {
                status,
                retry_after,
            } => {
                // Refused for being over its limit with this many out: the
                // limit settles below that level instead of probing it again.
                // (Up to `slot_waiters` of them wait at the account's slots,
                // not at the target.)
                let inflight = st
                    .inflight
                    .saturating_sub(self.settings.slot_waiters)
                    .max(1);
                let change = st.aimd.refused(now, inflight);
                self.log_change(change, &st);
                // It answered: it is up, only busy.
                self.close(&mut st, now);
                let mut pause = None;
                if let Some(after) = retry_after {
                    let after = after.min(self.settings.max_retry_after);
                    let until = now + after;
                    if st.paused_until.is_none_or(|u| u < until) {
                        st.paused_until = Some(until);
                        pause = Some(after);
                    }
                }
                emit(TargetThrottled {
                    target: self.target,
                    status,
                    pause,
                });
                Verdict::Again
            }
            Answer::Failed {
                kind,
                back_pressure,
            } => {
                if back_pressure {
                    let change = st.aimd.record(now, None, true);
                    self.log_change(change, &st);
                }
                if probe {
                    st.circuit.probe_failed(now, kind);
                    Verdict::Again
                } else {
                    match st.circuit.failure(now, record, kind) {
                        AfterFailure::Opened => {
                            emit(CircuitOpened {
                                target: self.target,
                                cause: st.circuit.cause().unwrap_or(Cause::Outage).as_str(),
                                error,
                            });
                            Verdict::Again
                        }
                        AfterFailure::Open => Verdict::Again,
                        AfterFailure::Counted => Verdict::Undecided(st.successes),
                    }
                }
            }
        };
        self.sync_limit(&mut st);
        self.publish_gauges(&st);
        drop(st);
        drop(permit);
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
        verdict
    }

    /// After an [`Verdict::Undecided`] failure: `Ok(true)` once the circuit
    /// opened (the delivery is held and sent again), `Ok(false)` once the
    /// target served someone else, or nothing else is going to it (no
    /// request out or waiting for [`QUIET`]), or the verdict wait ran out:
    /// the failure is then the message's own.
    pub async fn verdict(&self, mark: u64) -> Result<bool, Stopped> {
        let mut rx = self.changed.subscribe();
        let start = Instant::now();
        let deadline = start + self.settings.verdict_wait;
        loop {
            let (idle, quiet_end) = {
                let st = self.lock();
                if st.circuit.is_open() {
                    return Ok(true);
                }
                if st.successes > mark {
                    return Ok(false);
                }
                (
                    st.inflight == 0 && st.waiting == 0,
                    (st.last_activity.max(start) + QUIET).min(deadline),
                )
            };
            let now = Instant::now();
            if now >= deadline || (idle && now >= quiet_end) {
                return Ok(false);
            }
            // Another request's answer bumps `changed`; an idle target is
            // looked at again when the quiet spell ends.
            let wake = if idle { quiet_end } else { deadline };
            tokio::select! {
                _ = self.stop.cancelled() => return Err(Stopped),
                _ = tokio::time::sleep(wake.saturating_duration_since(now)) => {}
                r = rx.changed() => if r.is_err() { return Ok(false) },
            }
        }
    }

    fn close(&self, st: &mut Inner, now: Instant) {
        if let Some(was_open) = st.circuit.success(now) {
            st.aimd.reset(self.settings.initial_concurrency);
            emit(CircuitClosed {
                target: self.target,
                open_for: was_open,
                limit: st.aimd.limit(),
            });
        }
    }

    fn log_change(&self, change: Change, st: &Inner) {
        match change {
            Change::Unchanged => {}
            Change::Increased(n) | Change::Decreased(n) => tracing::debug!(
                target = self.target,
                limit = n,
                inflight = st.inflight,
                "Target concurrency limit changed."
            ),
        }
    }

    /// Makes the semaphore hold as many permits as the limit says.
    fn sync_limit(&self, st: &mut Inner) {
        let want = st.aimd.limit() + self.settings.slot_waiters;
        if want > st.applied {
            let mut add = want - st.applied;
            let cancelled = add.min(st.debt);
            st.debt -= cancelled;
            add -= cancelled;
            self.sem.add_permits(add);
        } else if want < st.applied {
            let k = st.applied - want;
            let forgotten = self.sem.forget_permits(k);
            st.debt += k - forgotten;
        }
        st.applied = want;
        // As many prepare as there are permits: a round of answers finds
        // each permit's successor prepared (its claim is a durable write).
        let next = st.aimd.limit().max(NEXT_IN_LINE);
        if next > st.next_applied {
            self.next_in_line.add_permits(next - st.next_applied);
            st.next_applied = next;
        }
    }

    fn publish_gauges(&self, st: &Inner) {
        metrics::set_target_state(
            self.target,
            st.aimd.limit(),
            st.inflight,
            if st.operator.is_some() {
                Some(Cause::Paused.as_str())
            } else {
                st.circuit.cause().map(Cause::as_str)
            },
            st.held,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::circuit::Failure;
    use super::*;

    fn settings() -> PacingSettings {
        PacingSettings {
            initial_concurrency: 2,
            max_concurrency: 8,
            slot_waiters: 0,
            rate_limit: None,
            rate_burst: 1,
            max_retry_after: Duration::from_secs(300),
            circuit_failures: 3,
            probe_max_interval: Duration::from_millis(400),
            verdict_wait: Duration::from_secs(5),
        }
    }

    fn failed() -> Answer {
        Answer::Failed {
            kind: Failure::Failed,
            back_pressure: true,
        }
    }

    /// What the request needs is prepared by the next in line while the
    /// permits are out, not under a permit: with the limit reached, two
    /// waiters prepare and the rest wait their turn; each gets its permit
    /// with its preparation done.
    #[tokio::test(start_paused = true)]
    async fn the_next_in_line_prepare_while_the_permits_are_out() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let p = Pacer::new("t-next", settings(), CancellationToken::new());
        let a = p.acquire().await.unwrap();
        let b = p.acquire().await.unwrap();
        let prepared = Arc::new(AtomicUsize::new(0));
        let mut waiters = Vec::new();
        for i in 0..4 {
            let (p, prepared) = (p.clone(), prepared.clone());
            waiters.push(tokio::spawn(async move {
                let (permit, n) = p
                    .acquire_prepared(|| async {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        prepared.fetch_add(1, Ordering::SeqCst) + 1
                    })
                    .await
                    .unwrap();
                (i, permit, n)
            }));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            prepared.load(Ordering::SeqCst),
            NEXT_IN_LINE,
            "the next in line prepared while both permits were out; the rest wait"
        );
        let started = Instant::now();
        assert_eq!(p.finish(a, 1, Answer::Success, ""), Verdict::Proceed);
        let (first, permit, n) = waiters.remove(0).await.unwrap();
        assert_eq!((first, n), (0, 1), "the first in line, prepared first");
        assert!(
            started.elapsed() < Duration::from_millis(5),
            "{:?}: its preparation was done before the permit came back",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            prepared.load(Ordering::SeqCst),
            NEXT_IN_LINE + 1,
            "the third moved up and prepared"
        );
        drop((b, permit));
        for w in waiters {
            drop(w.await.unwrap());
        }
        assert_eq!(prepared.load(Ordering::SeqCst), 4);
    }

    /// With a limit above [`NEXT_IN_LINE`], as many waiters prepare as
    /// there are permits: each permit coming back finds its successor's
    /// claim made, however long a claim's group commit takes.
    #[tokio::test(start_paused = true)]
    async fn as_many_prepare_as_the_limit_allows_requests() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let limit = 5;
        let p = Pacer::new(
            "t-next-limit",
            PacingSettings {
                initial_concurrency: limit,
                ..settings()
            },
            CancellationToken::new(),
        );
        let mut out = Vec::new();
        for _ in 0..limit {
            out.push(p.acquire().await.unwrap());
        }
        let prepared = Arc::new(AtomicUsize::new(0));
        let mut waiters = Vec::new();
        for _ in 0..limit + 3 {
            let (p, prepared) = (p.clone(), prepared.clone());
            waiters.push(tokio::spawn(async move {
                p.acquire_prepared(|| async {
                    prepared.fetch_add(1, Ordering::SeqCst);
                })
                .await
                .map(|(permit, ())| permit)
            }));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(prepared.load(Ordering::SeqCst), limit, "one per permit");
        drop(out);
        for w in waiters {
            drop(w.await.unwrap());
        }
        assert_eq!(prepared.load(Ordering::SeqCst), limit + 3);
    }

    /// With an account cap, the waiters at its slots hold permits beyond
    /// the limit; the limit (what the gauge and `/readyz` show) stays the
    /// cap, and a refusal judges the level by the requests that were out.
    #[tokio::test(start_paused = true)]
    async fn slot_waiters_hold_permits_beyond_the_limit_which_stays_the_cap() {
        let mut s = settings();
        s.slot_waiters = 2;
        let p = Pacer::new("t-slots", s, CancellationToken::new());
        let mut out = Vec::new();
        for _ in 0..4 {
            out.push(p.acquire().await.unwrap());
        }
        let fifth = tokio::time::timeout(Duration::from_millis(50), p.acquire()).await;
        assert!(
            fifth.is_err(),
            "the limit (2) and the two waiting at the slots"
        );
        assert_eq!(p.snapshot().concurrency_limit, 2);
        let refused = Answer::Throttled {
            status: 400,
            retry_after: None,
        };
        assert_eq!(p.finish(out.remove(0), 1, refused, ""), Verdict::Again);
        assert_eq!(
            p.snapshot().concurrency_ceiling,
            Some(1),
            "two were at the target, not four"
        );
        assert_eq!(p.snapshot().concurrency_limit, 1);
        drop(out);
        let mut again = Vec::new();
        for _ in 0..3 {
            again.push(p.acquire().await.unwrap());
        }
        let fourth = tokio::time::timeout(Duration::from_millis(50), p.acquire()).await;
        assert!(fourth.is_err(), "the lower limit and the two waiters");
    }

    /// With permits free, preparing does not queue: each prepares under
    /// its own permit, all at once.
    #[tokio::test(start_paused = true)]
    async fn with_permits_free_everyone_prepares_at_once() {
        let mut s = settings();
        s.initial_concurrency = 8;
        let p = Pacer::new("t-free", s, CancellationToken::new());
        let started = Instant::now();
        let all = futures::future::join_all(
            (0..8).map(|_| p.acquire_prepared(|| tokio::time::sleep(Duration::from_millis(10)))),
        )
        .await;
        assert!(all.iter().all(Result::is_ok));
        assert!(
            started.elapsed() < Duration::from_millis(15),
            "{:?}: eight preparations of 10 ms overlapped",
            started.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn permits_are_bounded_by_the_limit_and_waiters_are_not_failed() {
        let p = Pacer::new("t-limit", settings(), CancellationToken::new());
        let a = p.acquire().await.unwrap();
        let b = p.acquire().await.unwrap();
        let third = tokio::time::timeout(Duration::from_millis(50), p.acquire()).await;
        assert!(third.is_err(), "the third waits while two are out");
        assert_eq!(p.finish(a, 1, Answer::Success, ""), Verdict::Proceed);
        let c = tokio::time::timeout(Duration::from_millis(200), p.acquire())
            .await
            .expect("a permit once one came back")
            .unwrap();
        drop((b, c));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_pauses_the_whole_target_and_is_capped() {
        let mut s = settings();
        s.max_retry_after = Duration::from_millis(200);
        let p = Pacer::new("t-pause", s, CancellationToken::new());
        let a = p.acquire().await.unwrap();
        let v = p.finish(
            a,
            1,
            Answer::Throttled {
                status: 429,
                retry_after: Some(Duration::from_secs(3600)),
            },
            "",
        );
        assert_eq!(v, Verdict::Again, "a 429 consumes nothing: send again");
        assert!(!p.accepting(), "paused");
        let t = Instant::now();
        let b = p.acquire().await.unwrap();
        let waited = t.elapsed();
        assert!(
            waited >= Duration::from_millis(150) && waited < Duration::from_secs(2),
            "{waited:?}: paused for the cap, not an hour"
        );
        drop(b);
        assert!(p.accepting());
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_opens_the_circuit_holds_and_a_probe_closes_it() {
        let p = Pacer::new("t-circuit", settings(), CancellationToken::new());
        // Three failures over two records: open.
        let mut verdicts = Vec::new();
        for r in [1, 2, 3] {
            let permit = p.acquire().await.unwrap();
            verdicts.push(p.finish(permit, r, failed(), ""));
        }
        assert_eq!(verdicts[0], Verdict::Undecided(0));
        assert_eq!(verdicts[2], Verdict::Again, "the third opened the circuit");
        assert!(
            p.verdict(0).await.unwrap(),
            "the undecided ones are held too"
        );
        assert!(!p.accepting());
        // Only one probe at a time.
        let probe = p.acquire().await.unwrap();
        assert!(probe.is_probe());
        let second = tokio::time::timeout(Duration::from_millis(100), p.acquire()).await;
        assert!(second.is_err(), "a second delivery waits behind the probe");
        assert_eq!(p.snapshot().held, 0, "the timed-out waiter is gone");
        assert_eq!(
            p.finish(probe, 1, failed(), ""),
            Verdict::Again,
            "a failed probe holds"
        );
        let probe = p.acquire().await.unwrap();
        assert!(probe.is_probe());
        assert_eq!(p.finish(probe, 1, Answer::Success, ""), Verdict::Proceed);
        assert!(p.accepting(), "closed");
        assert_eq!(p.snapshot().concurrency_limit, 2, "restarts from initial");
        let normal = p.acquire().await.unwrap();
        assert!(!normal.is_probe());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_while_others_succeed_is_the_messages_own() {
        let p = Pacer::new("t-verdict", settings(), CancellationToken::new());
        let bad = p.acquire().await.unwrap();
        let good = p.acquire().await.unwrap();
        let Verdict::Undecided(mark) = p.finish(bad, 7, failed(), "") else {
            panic!("undecided")
        };
        let waiting = {
            let p = p.clone();
            tokio::spawn(async move { p.verdict(mark).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(p.finish(good, 8, Answer::Success, ""), Verdict::Proceed);
        assert!(
            !waiting.await.unwrap().unwrap(),
            "not held: the target serves others"
        );
        // Alone, with nobody else to tell: the wait ends, not held.
        let bad = p.acquire().await.unwrap();
        let Verdict::Undecided(mark) = p.finish(bad, 7, failed(), "") else {
            panic!("undecided")
        };
        let t = Instant::now();
        assert!(!p.verdict(mark).await.unwrap());
        let waited = t.elapsed();
        assert!(
            waited >= QUIET && waited < Duration::from_secs(2),
            "{waited:?}: decided after a quiet spell, not the whole verdict wait"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_every_wait() {
        let stop = CancellationToken::new();
        let p = Pacer::new("t-stop", settings(), stop.clone());
        let a = p.acquire().await.unwrap();
        let v = p.finish(
            a,
            1,
            Answer::Throttled {
                status: 503,
                retry_after: Some(Duration::from_secs(60)),
            },
            "",
        );
        assert_eq!(v, Verdict::Again);
        let waiter = {
            let p = p.clone();
            tokio::spawn(async move { p.acquire().await.map(|_| ()) })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(p.snapshot().held, 1);
        stop.cancel();
        assert_eq!(waiter.await.unwrap(), Err(Stopped));
    }

    // Real time: governor's rate limiter keeps its own clock.
    #[tokio::test]
    async fn the_rate_cap_spaces_requests() {
        let mut s = settings();
        s.max_concurrency = 8;
        s.initial_concurrency = 8;
        s.rate_limit = Some(20.0);
        s.rate_burst = 1;
        let p = Pacer::new("t-rate", s, CancellationToken::new());
        let t = Instant::now();
        for _ in 0..5 {
            let permit = p.acquire().await.unwrap();
            p.finish(permit, 1, Answer::Success, "");
        }
        // 20/s with a burst of 1: the 5th waits about 4 × 50 ms.
        assert!(
            t.elapsed() >= Duration::from_millis(180),
            "{:?}",
            t.elapsed()
        );
    }
}
