//! Keeps a delivery's lease alive from the moment its request goes out until
//! the answer is booked (docs/spec.md §4.2): renewed every fifth of its TTL,
//! so the TTL only has to cover a replica that died holding it, not the
//! slowest request. A replica killed mid-request leaves its records waiting
//! seconds, not a request timeout. A delivery only waiting (for a permit, a
//! held target) renews nothing; it renews once before its request if it
//! waited a third of the TTL (`attempt::still_ours`), keeping its permit.
//!
//! The holder stops trusting its lease a quarter of the TTL before the last
//! renewal the database confirmed runs out; a request still out then is
//! abandoned, so no other replica's request for the record is sent while
//! one of ours may still be on its way (docs/spec.md §4.1 P1).

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::store::delivery_lease::Lease;
use crate::store::Store;

/// How a lease's renewals are spaced, and when its holder stops trusting it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Timing {
    pub ttl: Duration,
}

impl Timing {
    /// Between two renewals: a fifth, so that a short TTL (what a dead
    /// replica's records wait) still leaves room for several slow or failed
    /// renewals before the holder stops trusting the lease.
    pub fn every(self) -> Duration {
        self.ttl / 5
    }

    /// Before the lease runs out, the holder gives up what it does under it.
    pub fn margin(self) -> Duration {
        self.ttl / 4
    }

    /// Until when a lease written at `sent` (when its write was sent: the
    /// database's clock read it later, so the lease lasts at least this
    /// long) may be trusted.
    pub fn trusted_until(self, sent: Instant) -> Instant {
        sent + self.ttl - self.margin()
    }
}

/// One held lease: renewed by a task of its own until the keeper is dropped
/// (a renewal already sent then finishes: a query is not cut mid-flight,
/// and one that lands after the release changes nothing).
pub(super) struct Keeper {
    trusted: watch::Receiver<Instant>,
    _stop: DropGuard,
}

impl Keeper {
    /// For a lease whose claim was sent at `sent` and confirmed: renewed a
    /// fifth of its TTL after that (at once if that has passed), and so on.
    pub fn start(store: Store, lease: Lease, ttl: Duration, sent: Instant) -> Self {
        let timing = Timing { ttl };
        let (tx, trusted) = watch::channel(timing.trusted_until(sent));
        let stop = CancellationToken::new();
        tokio::spawn(renew(store, lease, timing, sent, tx, stop.clone()));
        Self {
            trusted,
            _stop: stop.drop_guard(),
        }
    }

    /// Resolves once the lease can no longer be trusted.
    pub async fn lost(&self) {
        let mut seen = self.trusted.clone();
        loop {
            let until = *seen.borrow_and_update();
            tokio::select! {
                () = tokio::time::sleep_until(until) => {
                    if *seen.borrow() <= until {
                        return;
                    }
                }
                changed = seen.changed() => {
                    if changed.is_err() {
                        // No more renewals: it lasts as the last one said.
                        tokio::time::sleep_until(until).await;
                        return;
                    }
                }
            }
        }
    }
}

/// Renews `lease` every fifth of its TTL until `stop`. A renewal the
/// database refuses (the lease is no longer ours) ends them; one that fails
/// is tried again a twentieth of the TTL later, and the lease stays trusted
/// only as long as the last confirmed one says.
async fn renew(
    store: Store,
    lease: Lease,
    timing: Timing,
    mut last: Instant,
    trusted: watch::Sender<Instant>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(last + timing.every()) => {}
        }
        let sent = Instant::now();
        match store.renew_delivery_lease(&lease, timing.ttl).await {
            Ok(true) => {
                trusted.send_replace(timing.trusted_until(sent));
                last = sent;
            }
            Ok(false) => {
                // Not ours any more: whatever still runs under it stops now.
                trusted.send_replace(Instant::now());
                // Debug: a renewal may cross the release of a delivery that
                // just finished; an abandoned request is logged by the delivery.
                tracing::debug!(
                    target = %lease.target,
                    record_type = %lease.record_type,
                    record_id = %lease.record_id,
                    "A delivery lease is no longer this process's."
                );
                return;
            }
            Err(e) => {
                // `last` stays, so the next try comes after this short
                // pause, not a whole turn later.
                tracing::warn!(error = %e, "Could not renew a delivery lease; trying again.");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(timing.every() / 4) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewals_come_well_before_the_holder_stops_trusting_the_lease() {
        // The default TTL.
        let t = Timing {
            ttl: Duration::from_secs(5),
        };
        assert_eq!(t.every(), Duration::from_secs(1));
        let sent = Instant::now();
        // Trusted 3.75 s after the claim: three renewals fit before that,
        // so a database that does not answer for 2.75 s does not cost the
        // lease.
        assert_eq!(t.trusted_until(sent) - sent, Duration::from_millis(3750));
        assert!(t.every() * 3 < t.trusted_until(sent) - sent);
        // And given up 1.25 s before any other replica may take it over.
        assert_eq!(
            sent + t.ttl - t.trusted_until(sent),
            Duration::from_millis(1250)
        );
    }
}
