//! A target's account-wide concurrency cap (docs/spec.md §4.3,
//! `targets.<t>.account_concurrency`): NetSuite limits requests in flight
//! per account, across every integration and every replica of ours. Each
//! request takes one of the account's slots in the database before it goes
//! and frees it when the answer came; a replica that dies holding slots
//! loses them when they expire (a request's timeout and a little). The
//! adaptive limit of §4.2 works below this cap, in each process.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
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
/// What a slot outlives its request by, for a holder that died.
const SLOT_MARGIN: Duration = Duration::from_secs(5);

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
    held: AtomicUsize,
    stop: CancellationToken,
}

/// A slot taken; give it back with [`AccountSlots::release`].
pub struct Slot {
    claim: SlotClaim,
    _local: tokio::sync::OwnedSemaphorePermit,
}

impl AccountSlots {
    /// Makes the slots' rows and the process's share. `timeout` is the
    /// target's request timeout.
    pub async fn new(
        target: &'static str,
        cap: usize,
        store: Store,
        timeout: Duration,
        stop: CancellationToken,
    ) -> Result<Arc<Self>, StoreError> {
        store.ensure_target_slots(target, cap).await?;
        let s = Arc::new(Self {
            target,
            cap,
            store,
            holder: crate::store::delivery_lease::new_holder(),
            ttl: timeout + SLOT_MARGIN,
            local: Arc::new(Semaphore::new(cap)),
            freed: Notify::new(),
            looking: tokio::sync::Mutex::new(()),
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
    pub async fn acquire(&self) -> Result<Slot, SlotError> {
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
            if let Some(claim) = self
                .store
                .claim_target_slot(self.target, self.cap, self.holder, self.ttl)
                .await?
            {
                self.held.fetch_add(1, Ordering::Relaxed);
                self.publish();
                return Ok(Slot {
                    claim,
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
    pub fn release(self: &Arc<Self>, slot: Slot) {
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.store.release_target_slot(&slot.claim).await {
                tracing::debug!(target = me.target, error = %e, "Could not free an account slot; it expires on its own.");
            }
            me.held.fetch_sub(1, Ordering::Relaxed);
            me.publish();
            drop(slot);
            me.freed.notify_one();
        });
    }

    fn publish(&self) {
        metrics::set_target_slots(self.target, self.cap, self.held());
    }
}
