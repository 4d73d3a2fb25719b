//! A lane's turn: how a stage tells the runtime that the order-sensitive part
//! of its work has begun, so the ordering key's next message may start.
//!
//! A key's messages run in order; a stage that only needs them to *enter*
//! something in order (the merge engine's queue) passes the turn once they
//! have, and the key's next messages run their stage alongside: a record's
//! burst then shares one merge batch instead of taking one batch per event.
//! A stage that never passes the turn passes it when it returns.

use std::sync::Arc;

use tokio::sync::watch;

/// Carried by a message as its stage sees it; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct LaneTurn(Option<Arc<watch::Sender<bool>>>);

impl LaneTurn {
    /// A turn and what waits for it to pass.
    pub fn new() -> (Self, TurnPassed) {
        let (tx, rx) = watch::channel(false);
        (Self(Some(Arc::new(tx))), TurnPassed(rx))
    }

    /// The key's next message may start. Idempotent.
    pub fn pass(&self) {
        if let Some(tx) = &self.0 {
            tx.send_replace(true);
        }
    }
}

/// Resolves once its [`LaneTurn`] was passed or dropped.
#[derive(Debug)]
pub struct TurnPassed(watch::Receiver<bool>);

impl TurnPassed {
    pub async fn wait(mut self) {
        // An error means every turn was dropped: nothing holds the lane.
        let _ = self.0.wait_for(|passed| *passed).await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn passing_or_dropping_the_turn_lets_the_next_one_go() {
        let (turn, passed) = LaneTurn::new();
        let waiting = tokio::spawn(passed.wait());
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "went before the turn was passed");
        turn.pass();
        turn.pass();
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("still waiting after the pass")
            .expect("waiter panicked");

        let (turn, passed) = LaneTurn::new();
        drop(turn);
        tokio::time::timeout(Duration::from_secs(5), passed.wait())
            .await
            .expect("still waiting after the turn was dropped");
    }

    #[test]
    fn a_message_outside_a_lane_has_nothing_to_pass() {
        LaneTurn::default().pass();
    }
}
