//! A message's place in its lane: how a stage tells the runtime that the
//! order-sensitive part of its work has begun, so the ordering key's next
//! message may start.
//!
//! A key's messages run in order; a stage that only needs them to *enter*
//! something in order (the merge engine's queue) passes the turn once they
//! have, and the key's next messages run their stage alongside: a record's
//! burst then shares one merge batch instead of taking one batch per event.
//! A stage that never passes the turn passes it when it returns. A stage
//! whose entry failed (the database was away) says so: the messages behind
//! it then enter only once it is done, so none overtakes it.

use std::sync::Arc;

use tokio::sync::watch;

/// Where a message stands in its lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stand {
    /// Not entered yet.
    Waiting,
    /// Entered; the messages behind may enter behind it.
    Entered,
    /// Its entry failed and will be tried again: nothing may pass it.
    Failed,
    /// Its stage returned for good.
    Done,
}

/// Carried by a message as its stage sees it; cheap to clone. The default
/// is a message outside any lane: nothing to wait for, nothing to pass.
#[derive(Debug, Clone, Default)]
pub struct LaneTurn(Option<Arc<Place>>);

#[derive(Debug)]
struct Place {
    stand: watch::Sender<Stand>,
    /// The stand of the message before it.
    earlier: Option<watch::Receiver<Stand>>,
}

impl LaneTurn {
    /// The place behind `earlier` (none: the first of its lane).
    pub fn behind(earlier: Option<&LaneTurn>) -> Self {
        let earlier = earlier
            .and_then(|t| t.0.as_ref())
            .map(|p| p.stand.subscribe());
        Self(Some(Arc::new(Place {
            stand: watch::channel(Stand::Waiting).0,
            earlier,
        })))
    }

    /// Until the message before may be overtaken: it entered, or is done.
    pub async fn wait_to_start(&self) {
        if let Some(rx) = self.0.as_ref().and_then(|p| p.earlier.clone()) {
            until(rx, |s| matches!(s, Stand::Entered | Stand::Done)).await;
        }
    }

    /// For the stage, right before it enters what must be entered in order.
    /// The message before must have entered without failing (or be done);
    /// once this one failed, the one before must be done. Returns whether
    /// every message before it is done ("lane clear").
    pub async fn wait_to_enter(&self) -> bool {
        let Some(p) = &self.0 else { return true };
        let Some(rx) = p.earlier.clone() else {
            return true;
        };
        if *p.stand.borrow() == Stand::Failed {
            until(rx, |s| s == Stand::Done).await;
            return true;
        }
        until(rx.clone(), |s| matches!(s, Stand::Entered | Stand::Done)).await;
        // Gone counts as done: nothing holds the lane any more.
        rx.has_changed().is_err() || *rx.borrow() == Stand::Done
    }

    /// Entered: the key's next message may start. Idempotent.
    pub fn pass(&self) {
        self.set(Stand::Entered);
    }

    /// The entry failed and will be tried again.
    pub fn failed(&self) {
        self.set(Stand::Failed);
    }

    /// The stage returned for good.
    pub fn finish(&self) {
        self.set(Stand::Done);
    }

    fn set(&self, stand: Stand) {
        if let Some(p) = &self.0 {
            p.stand.send_if_modified(|s| {
                // Done is final; a failure stays until entered again.
                let change = *s != Stand::Done && *s != stand;
                if change {
                    *s = stand;
                }
                change
            });
        }
    }
}

/// Resolves once the stand satisfies `ok`, or its place is gone.
async fn until(mut rx: watch::Receiver<Stand>, ok: impl Fn(Stand) -> bool) {
    let _ = rx.wait_for(|s| ok(*s)).await;
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const SOON: Duration = Duration::from_millis(30);
    const LONG: Duration = Duration::from_secs(5);

    async fn still_waiting<T>(f: impl std::future::Future<Output = T>) -> bool {
        tokio::time::timeout(SOON, f).await.is_err()
    }

    #[tokio::test]
    async fn the_next_message_starts_once_the_one_before_entered() {
        let first = LaneTurn::behind(None);
        let second = LaneTurn::behind(Some(&first));
        first.wait_to_start().await;
        assert!(first.wait_to_enter().await, "the first of a lane is clear");
        assert!(still_waiting(second.wait_to_start()).await);
        first.pass();
        first.pass();
        tokio::time::timeout(LONG, second.wait_to_start())
            .await
            .expect("still waiting after the pass");
        let clear = tokio::time::timeout(LONG, second.wait_to_enter())
            .await
            .expect("waited to enter behind one that entered");
        assert!(!clear, "the one before is not done");
    }

    #[tokio::test]
    async fn nothing_enters_past_a_failed_entry_until_it_is_done() {
        let first = LaneTurn::behind(None);
        let second = LaneTurn::behind(Some(&first));
        let third = LaneTurn::behind(Some(&second));
        first.pass();
        second.pass();
        first.failed();
        // The second (queued behind the failure) failed too and waits.
        second.failed();
        assert!(still_waiting(second.wait_to_enter()).await);
        // The third, not yet entered, may not pass the failed second.
        assert!(still_waiting(third.wait_to_enter()).await);
        first.pass();
        assert!(
            still_waiting(second.wait_to_enter()).await,
            "a failed one waits for the one before to be done, not entered"
        );
        first.finish();
        let clear = tokio::time::timeout(LONG, second.wait_to_enter())
            .await
            .expect("still waiting after the one before finished");
        assert!(clear);
        second.pass();
        tokio::time::timeout(LONG, third.wait_to_enter())
            .await
            .expect("the third waits although the second entered again");
    }

    #[tokio::test]
    async fn a_place_dropped_holds_nothing() {
        let first = LaneTurn::behind(None);
        let second = LaneTurn::behind(Some(&first));
        second.failed();
        drop(first);
        let clear = tokio::time::timeout(LONG, async {
            second.wait_to_start().await;
            second.wait_to_enter().await
        })
        .await
        .expect("waiting on a place that is gone");
        assert!(clear);
    }

    #[tokio::test]
    async fn done_is_final() {
        let first = LaneTurn::behind(None);
        let second = LaneTurn::behind(Some(&first));
        first.finish();
        first.failed();
        assert!(second.wait_to_enter().await);
    }

    #[tokio::test]
    async fn a_message_outside_a_lane_waits_for_nothing() {
        let t = LaneTurn::default();
        t.wait_to_start().await;
        assert!(t.wait_to_enter().await);
        t.failed();
        assert!(t.wait_to_enter().await);
        t.pass();
        t.finish();
    }
}
