//! The next in line (docs/spec.md §4.2): a permit is the target's capacity, so
//! what a request needs from the store is prepared by the deliveries about
//! to get one, not under it.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{Pacer, Stopped};

/// How many deliveries at least prepare their request (the plan read
/// again after a wait, the record's lease claimed) while the ones ahead
/// hold every permit; as many as the limit when it is higher. Enough that
/// a permit coming back finds one ready (a claim is a durable write: one
/// group commit), few enough that what they prepared is not stale by the
/// time they send (each waits about one round of answers), and that a
/// replica that dies leaves few leases to run out.
pub const NEXT_IN_LINE: usize = 2;

impl Pacer {
    /// A permit and what `prepare` made: under the permit when one is free,
    /// else among the [`NEXT_IN_LINE`] before it (tokio's semaphores are
    /// FIFO, so a permit free now has no earlier waiter).
    pub(super) async fn next_in_line<T, F, Fut>(
        &self,
        prepare: &mut F,
    ) -> Result<(OwnedSemaphorePermit, T), Stopped>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        if let Ok(sem) = self.sem.clone().try_acquire_owned() {
            return Ok((sem, prepare().await));
        }
        let turn = self.take(&self.next_in_line).await?;
        let prepared = self.cancellable(prepare()).await?;
        let sem = self.take(&self.sem).await?;
        drop(turn);
        Ok((sem, prepared))
    }

    /// One permit of `sem`, or [`Stopped`] at shutdown.
    async fn take(&self, sem: &Arc<Semaphore>) -> Result<OwnedSemaphorePermit, Stopped> {
        match self.cancellable(sem.clone().acquire_owned()).await? {
            Ok(p) => Ok(p),
            // Neither semaphore is ever closed; treat it as shutdown if it were.
            Err(_) => Err(Stopped),
        }
    }
}
