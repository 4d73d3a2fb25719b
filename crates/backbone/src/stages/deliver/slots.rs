//! A target's account-wide concurrency cap (docs/spec.md §4.3,
//! `targets.<t>.account_concurrency`): NetSuite limits requests in flight
//! per account, across every integration and every replica of ours. Each
//! request takes one of the account's slots in the database before it goes
//! and frees it when the answer came. A claim lasts [`SLOT_TTL`] and is
//! renewed while its request is out, so a replica that dies holding slots
//! loses them within seconds, not a request's timeout. The adaptive limit
//! of §4.2 works below this cap, in each process.
//!
//! A request that ends while another of this process's requests waits for
//! a slot hands its slot over instead of freeing and claiming it again (two
//! writes, each a commit, per request at NetSuite's pace otherwise). A slot
//! goes back to the account once it has been out [`HANDOVER_FOR`], so
//! replicas keep sharing the cap.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics;
use crate::store::target_slots::SlotClaim;
use crate::store::{Store, StoreError};

/// Between two looks for a free slot while all are taken. Only one waiter
/// per process looks (the rest queue behind it), so the look can be
/// frequent: a slot another replica frees stays idle at most `POLL_MAX`,
/// small beside NetSuite's hundreds of milliseconds per request.
const POLL_MIN: Duration = Duration::from_millis(2);
const POLL_MAX: Duration = Duration::from_millis(20);
/// How long a claim lasts from its last write: what a dead replica's slot
/// stays out of the account's reach. Its holder renews it every
/// [`RENEW_EVERY`] while the request is out, so a slow request keeps it.
pub const SLOT_TTL: Duration = Duration::from_secs(4);
const RENEW_EVERY: Duration = Duration::from_secs(1);
/// How long after its claim a slot is handed over between this process's
/// requests; after that it is freed for every replica to claim. A claim
/// handed over is then at most this old when its new holder starts renewing
/// it, well within `SLOT_TTL`.
pub const HANDOVER_FOR: Duration = Duration::from_secs(1);
/// A slot handed over that no waiter took (it gave up) is freed after this.
const HANDOVER_GRACE: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    #[error("shutting down while the delivery waited for an account slot")]
    Stopped,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One target's share of the account's slots.
pub struct AccountSlots {
    target: &'static str,
    cap: usize,
    store: Store,
    holder: i64,
    ttl: Duration,
    /// No more of this process's requests compete for a slot than there are.
    local: Arc<Semaphore>,
    /// A slot this process freed: the waiter looking wakes at once.
    freed: Notify,
    /// The turn to look in the database, held by the first waiter; tokio's
    /// mutex is FIFO, so waiters are served in the order they came.
    looking: tokio::sync::Mutex<()>,
    /// Requests of this process waiting for a slot.
    waiting: AtomicUsize,
    /// Slots handed over by ended requests, still claimed, not yet taken.
    spare: std::sync::Mutex<Vec<(SlotClaim, Instant)>>,
    held: AtomicUsize,
    stop: CancellationToken,
}

/// A slot taken; give it back with [`AccountSlots::release`].
pub struct Slot {
    claim: SlotClaim,
    /// When it was claimed from the account: how long it may still be
    /// handed over (its renewals do not move this).
    claimed: Instant,
    /// Renews the claim until the slot is released or handed over.
    _renewal: tokio_util::sync::DropGuard,
    _local: tokio::sync::OwnedSemaphorePermit,
}

impl Slot {
    /// The claim's id (a handed-over slot keeps it).
    pub fn claim_id(&self) -> i64 {
        self.claim.claim
    }
}

/// Counts a waiter for as long as it waits.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl AccountSlots {
    /// Makes the slots' rows and the process's share.
    pub async fn new(
        target: &'static str,
        cap: usize,
        store: Store,
        stop: CancellationToken,
    ) -> Result<Arc<Self>, StoreError> {
        store.ensure_target_slots(target, cap).await?;
        let s = Arc::new(Self {
            target,
            cap,
            store,
            holder: crate::store::delivery_lease::new_holder(),
            ttl: SLOT_TTL,
            local: Arc::new(Semaphore::new(cap)),
            freed: Notify::new(),
            looking: tokio::sync::Mutex::new(()),
            waiting: AtomicUsize::new(0),
            spare: std::sync::Mutex::new(Vec::new()),
            held: AtomicUsize::new(0),
            stop,
        });
        s.publish();
        Ok(s)
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Slots this process holds now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Waits for a free slot of the account; only shutdown or the database
    /// ends the wait otherwise.
    pub async fn acquire(self: &Arc<Self>) -> Result<Slot, SlotError> {
        self.waiting.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(&self.waiting);
        let local = tokio::select! {
            _ = self.stop.cancelled() => return Err(SlotError::Stopped),
            p = self.local.clone().acquire_owned() => p.map_err(|_| SlotError::Stopped)?,
        };
        let _turn = tokio::select! {
            _ = self.stop.cancelled() => return Err(SlotError::Stopped),
            t = self.looking.lock() => t,
        };
        let mut wait = POLL_MIN;
        loop {
            if let Some((claim, claimed)) = self.take_spare() {
                return Ok(Slot {
                    _renewal: self.renew(claim.clone()),
                    claim,
                    claimed,
                    _local: local,
                });
            }
            let claimed = Instant::now();
            if let Some(claim) = self
                .store
                .claim_target_slot(self.target, self.cap, self.holder, self.ttl)
                .await?
            {
                self.held.fetch_add(1, Ordering::Relaxed);
                self.publish();
                return Ok(Slot {
                    _renewal: self.renew(claim.clone()),
                    claim,
                    claimed,
                    _local: local,
                });
            }
            // Every slot is out (here or at another replica): look again
            // soon, or at once when this process frees one.
            tokio::select! {
                _ = self.stop.cancelled() => return Err(SlotError::Stopped),
                _ = self.freed.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(POLL_MAX);
        }
    }

    /// Frees `slot` in the background: the delivery's bookkeeping does not
    /// wait for the write (the slot counts as held until it commits, so the
    /// cap is never exceeded). If the database does not answer, it expires.
    /// A young slot goes to a request of this process that waits for one.
    pub fn release(self: &Arc<Self>, slot: Slot) {
        let Slot {
            claim,
            claimed,
            _renewal: renewal,
            _local: local,
        } = slot;
        // Renewing stops here: the next holder renews a handed-over claim.
        drop(renewal);
        if claimed.elapsed() < HANDOVER_FOR && self.waiting.load(Ordering::Acquire) > 0 {
            let id = claim.claim;
            lock(&self.spare).push((claim, claimed));
            drop(local);
            self.freed.notify_one();
            // The waiter may have given up meanwhile (shutdown).
            let me = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(HANDOVER_GRACE).await;
                let left = {
                    let mut spare = lock(&me.spare);
                    let at = spare.iter().position(|(c, _)| c.claim == id);
                    at.map(|i| spare.swap_remove(i).0)
                };
                if let Some(claim) = left {
                    me.free(claim).await;
                }
            });
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            me.free(claim).await;
            drop(local);
        });
    }

    /// Renews `claim` every `RENEW_EVERY` until the guard is dropped. A claim
    /// lost meanwhile (the database did not answer for a whole TTL, and
    /// another replica took the slot) is said once: the account may then
    /// see one request over its cap, which it refuses and we send again.
    fn renew(self: &Arc<Self>, claim: SlotClaim) -> tokio_util::sync::DropGuard {
        let done = self.stop.child_token();
        let me = self.clone();
        let until = done.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = until.cancelled() => return,
                    () = tokio::time::sleep(RENEW_EVERY) => {}
                }
                match me.store.renew_target_slot(&claim, me.ttl).await {
                    Ok(true) => {}
                    Ok(false) => {
                        if !until.is_cancelled() {
                            tracing::warn!(target = me.target, "An account slot expired while its request was out (the database answered too late to renew it); the account may see one request over its cap.");
                        }
                        return;
                    }
                    Err(e) => {
                        tracing::debug!(target = me.target, error = %e, "Could not renew an account slot; trying again.");
                    }
                }
            }
        });
        done.drop_guard()
    }

    /// A handed-over slot still young enough for a request; older ones are
    /// freed on the way.
    fn take_spare(self: &Arc<Self>) -> Option<(SlotClaim, Instant)> {
        let mut spare = lock(&self.spare);
        while let Some((claim, claimed)) = spare.pop() {
            if claimed.elapsed() < HANDOVER_FOR {
                return Some((claim, claimed));
            }
            let me = self.clone();
            tokio::spawn(async move { me.free(claim).await });
        }
        None
    }

    /// Frees a claim in the database; if it does not answer, it expires.
    async fn free(&self, claim: SlotClaim) {
        if let Err(e) = self.store.release_target_slot(&claim).await {
            tracing::debug!(target = self.target, error = %e, "Could not free an account slot; it expires on its own.");
        }
        self.held.fetch_sub(1, Ordering::Relaxed);
        self.publish();
        self.freed.notify_one();
    }

    fn publish(&self) {
        metrics::set_target_slots(self.target, self.cap, self.held());
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn slots(cap: usize) -> (Arc<AccountSlots>, Store) {
        let store = Store::connect("sqlite::memory:", 1, Duration::from_secs(5))
            .await
            .expect("in-memory store");
        store.migrate().await.expect("migrate");
        let s = AccountSlots::new("netsuite", cap, store.clone(), CancellationToken::new())
            .await
            .expect("slots");
        (s, store)
    }

    async fn held_in_db(store: &Store) -> i64 {
        store.target_slots_held("netsuite").await.expect("count")
    }

    /// The only slot taken (its claim id), and a second request waiting for
    /// one (it answers with the claim id it got).
    async fn held_and_awaited(
        s: &Arc<AccountSlots>,
    ) -> (Slot, i64, tokio::task::JoinHandle<Result<i64, SlotError>>) {
        let first = s.acquire().await.expect("slot");
        let id = first.claim_id();
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { s.acquire().await.map(|slot| slot.claim_id()) }
        });
        (first, id, waiter)
    }

    /// A request that ends while another waits hands its slot over: the
    /// same claim, no write.
    #[tokio::test]
    async fn a_slot_is_handed_to_a_waiting_request_without_a_write() {
        let (s, store) = slots(1).await;
        let (first, id, waiter) = held_and_awaited(&s).await;
        // The waiter is waiting (the only slot is out).
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        s.release(first);
        let second = waiter.await.expect("join").expect("slot");
        assert_eq!(second, id, "handed over, not freed and claimed again");
        assert_eq!(held_in_db(&store).await, 1);
        assert_eq!(s.held(), 1);
    }

    #[tokio::test]
    async fn without_a_waiter_a_released_slot_is_freed_for_every_replica() {
        let (s, store) = slots(2).await;
        let slot = s.acquire().await.expect("slot");
        assert_eq!(held_in_db(&store).await, 1);
        s.release(slot);
        let until = Instant::now() + Duration::from_secs(2);
        while held_in_db(&store).await != 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(held_in_db(&store).await, 0, "freed in the database");
        assert_eq!(s.held(), 0);
    }

    /// A request out longer than a claim's TTL keeps its slot (renewed):
    /// another replica does not take it until it is released.
    #[tokio::test]
    async fn a_slot_out_longer_than_its_ttl_is_renewed_not_taken_by_another_replica() {
        let (a, store) = slots(1).await;
        let b = AccountSlots::new("netsuite", 1, store.clone(), CancellationToken::new())
            .await
            .expect("second replica's slots");
        let slot = a.acquire().await.expect("slot");
        tokio::time::sleep(SLOT_TTL + Duration::from_millis(1500)).await;
        let early = tokio::time::timeout(Duration::from_millis(200), b.acquire()).await;
        assert!(early.is_err(), "the other replica took a slot still in use");
        a.release(slot);
        // Within the slot's TTL, so it is the release that frees it. A busy
        // embedded database (a loaded machine: "database is locked") is a
        // store error the delivery would retry; so does the test.
        let taken = tokio::time::timeout(Duration::from_secs(3), async {
            loop {
                match b.acquire().await {
                    Ok(slot) => return Ok(slot),
                    Err(SlotError::Store(e)) => {
                        eprintln!("looking again after a store error: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => return Err(e),
                }
            }
        })
        .await;
        assert!(matches!(taken, Ok(Ok(_))), "freed for the other replica");
    }

    /// A replica that dies holding a slot loses it within `SLOT_TTL`.
    #[tokio::test]
    async fn a_dead_replicas_slot_comes_back_within_its_ttl() {
        let (_a, store) = slots(1).await;
        let dead = store
            .claim_target_slot("netsuite", 1, 7, SLOT_TTL)
            .await
            .expect("claim");
        assert!(dead.is_some());
        let b = AccountSlots::new("netsuite", 1, store.clone(), CancellationToken::new())
            .await
            .expect("survivor's slots");
        let started = Instant::now();
        let slot = tokio::time::timeout(SLOT_TTL + Duration::from_secs(1), b.acquire()).await;
        assert!(matches!(slot, Ok(Ok(_))), "the survivor got the slot");
        assert!(started.elapsed() >= SLOT_TTL - Duration::from_millis(100));
    }

    /// A slot out longer than `HANDOVER_FOR` goes back to the account even
    /// with a request of this process waiting: the replicas keep sharing.
    #[tokio::test]
    async fn an_old_slot_goes_back_to_the_account_before_it_is_claimed_again() {
        let (s, store) = slots(1).await;
        let (first, id, waiter) = held_and_awaited(&s).await;
        tokio::time::sleep(HANDOVER_FOR + Duration::from_millis(50)).await;
        s.release(first);
        let second = waiter.await.expect("join").expect("slot");
        assert_ne!(second, id, "claimed afresh from the account");
        assert_eq!(held_in_db(&store).await, 1);
    }
}
