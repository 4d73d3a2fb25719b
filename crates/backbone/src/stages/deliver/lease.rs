//! A delivery's lease on its record (docs/spec.md §4.2), from its side:
//! taken when the delivery is next in line for the target's permit (the
//! plan read again first), renewed once if it waited after that. Taken no
//! earlier, so that a delivery that only waits holds nothing another
//! replica would have to wait out.

use std::sync::Arc;

use tokio::time::Instant;

use super::attempt::Delivery;
use super::plan::{Plan, Send};
use super::DeliverStage;
use crate::store::delivery::DeliveryState;
use crate::store::delivery_lease::Claim;
use crate::store::StoreError;

/// A wait long enough that the record's burst may have grown: a re-read
/// (one query) is cheap next to a second request.
const REPLAN_AFTER: std::time::Duration = std::time::Duration::from_millis(20);

/// What the claim came to: when it was sent if it was granted, `None` if
/// refused (another replica holds the record, or the target moved on).
pub(super) type Claimed = Result<Option<Instant>, Arc<StoreError>>;

impl DeliverStage {
    /// Run when `d` is next in line for a permit (or holds one already):
    /// the plan read again if it waited (more of the burst may have been
    /// merged meanwhile), then the lease and the attempted position in one
    /// durable write, made only if the target still stands where `st`
    /// says. What it sends and whether it may.
    pub(super) async fn claim_when_next(
        &self,
        d: &Delivery<'_>,
        st: DeliveryState,
        send: &Send,
        waited: Instant,
    ) -> (Send, Claimed) {
        let send = match self.replan_after_wait(d, st, send, waited.elapsed()).await {
            Some(newer) => newer,
            None => send.clone(),
        };
        d.mark("permit_wait");
        let claim = Claim {
            lease: self.lease(&d.ev),
            ttl: self.lease_ttl,
            expect: st,
            attempted: send.through.map(|(seq, _)| seq),
        };
        let sent = Instant::now();
        let claimed = self.log().claim(claim).await.map(|ok| ok.then_some(sent));
        d.mark("claim");
        (send, claimed)
    }

    /// A delivery planned from `st` plans again after a wait: one request
    /// can then carry what was merged meanwhile instead of a second one
    /// later. The claim that follows checks `st` still holds, and a fold
    /// only grows towards the newest merged version (P1), which every later
    /// request folds up to as well. `None`: send `send`.
    async fn replan_after_wait(
        &self,
        d: &Delivery<'_>,
        st: DeliveryState,
        send: &Send,
        waited: std::time::Duration,
    ) -> Option<Send> {
        if waited < REPLAN_AFTER || send.through.is_none() {
            return None;
        }
        match self.plan(d.msg, &d.ev, d.seq, st, d.body.clone()).await {
            Ok(Plan::Send(newer)) if newer.through > send.through => Some(newer),
            _ => None,
        }
    }

    /// The lease taken at `claimed_at`, renewed if a third of its TTL has
    /// passed since: when it was written, or `None` when it is no longer
    /// this process's (another replica took it over after it ran out; the
    /// delivery then plans again) or the database did not answer.
    pub(super) async fn still_ours(
        &self,
        d: &Delivery<'_>,
        claimed_at: Instant,
    ) -> Option<Instant> {
        if claimed_at.elapsed() < self.lease_ttl / 3 {
            return Some(claimed_at);
        }
        let sent = Instant::now();
        match self
            .store
            .renew_delivery_lease(&self.lease(&d.ev), self.lease_ttl)
            .await
        {
            Ok(true) => Some(sent),
            Ok(false) => None,
            Err(e) => {
                tracing::debug!(error = %e, "Could not renew a delivery lease before its request.");
                None
            }
        }
    }
}
