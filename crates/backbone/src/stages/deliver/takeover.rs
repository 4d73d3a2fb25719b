//! An idle replica takes over deliveries nobody is making (docs/spec.md
//! §4.2). A replica that dies holding a record's merged messages leaves
//! them with the broker until their lease there runs out (10 s at least),
//! and the messages after them on the same ordering key wait with them.
//! Every merged version is in the store, so a live replica with nothing
//! to do delivers those records from there: the newest merged state the
//! target has not acknowledged, through the same plan, claim, lease and
//! bookkeeping as a message (P1 and P2 of §4.1 hold as for any delivery).
//! The messages, once the broker hands them back, find themselves covered.
//!
//! Only records with nothing under way are taken: no request started since
//! the last acknowledged one (a failed request keeps its retry schedule and
//! dead letter) and no live lease, or a lease that ran out still naming
//! its holder (it died mid-delivery: taken `lease_ttl` after its last
//! renewal, sooner than the broker's 10 s), and a last change at least
//! [`SETTLED`] old (and the target's `coalesce`), so a live delivery about
//! to happen is not raced. Whatever needs a wait (another replica holds the
//! record, the target throttles or fails) is left to the record's message.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::attempt::Delivery;
use super::{stage_name, DeliverStage};
use crate::internal_events::{emit, RecordTakenOver};
use crate::model::merged_event::MergedEvent;
use crate::stages::merge::batch::SEQUENCE_ATTRIBUTE;
use crate::stages::Incoming;
use crate::store::behind::Behind;
use crate::store::StoreError;

/// How often an idle replica looks.
pub const EVERY: Duration = Duration::from_secs(1);
/// How long a record's last change must be settled before it is taken
/// over: a live delivery takes well under this.
pub const SETTLED: Duration = Duration::from_secs(2);
/// How far back it looks: older work is the broker's to hand back.
const WINDOW: Duration = Duration::from_secs(600);
/// Records per look, and taken over at once (the target's permits pace
/// the requests).
const BATCH: i64 = 100;
const AT_ONCE: usize = 32;

/// The message id on the audit rows of a delivery taken over.
pub const MESSAGE_ID: &str = "takeover";

impl DeliverStage {
    /// Runs until `shutdown`: every [`EVERY`], while this stage delivers
    /// nothing and its target accepts, takes over what is left.
    pub async fn take_over(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(EVERY) => {}
            }
            while self.idle() && !shutdown.is_cancelled() {
                match self.take_over_some(&shutdown).await {
                    // A full look where every record was left (the target
                    // throttles, another replica holds them) waits for the
                    // next tick instead of asking again at once.
                    Ok((found, moved)) if found < BATCH as usize || moved == 0 => break,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(target = self.target.as_str(), error = %e,
                            "Could not look for records to take over; the broker hands their messages back.");
                        break;
                    }
                }
            }
        }
    }

    /// Nothing of this stage's own is under way, nothing was for
    /// [`SETTLED`] (a record's messages trickling in one after another
    /// leave gaps between them, and their records are not taken from them),
    /// and the target accepts.
    fn idle(&self) -> bool {
        let quiet = self
            .last_active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none_or(|t| t.elapsed() >= SETTLED);
        self.active.load(Ordering::Relaxed) == 0 && quiet && self.pacer.accepting()
    }

    /// One look and what it found taken over: how many records it found,
    /// and how many of them it did not leave to their messages.
    async fn take_over_some(
        &self,
        shutdown: &CancellationToken,
    ) -> Result<(usize, usize), StoreError> {
        let now = chrono::Utc::now();
        let settled = SETTLED.max(self.coalesce);
        let ago = |d: Duration| now - chrono::Duration::from_std(d).unwrap_or_default();
        let behind = self
            .store
            .records_behind(self.target.as_str(), ago(WINDOW), ago(settled), BATCH)
            .await?;
        let found = behind.len();
        let moved = std::sync::atomic::AtomicUsize::new(0);
        let moved_ref = &moved;
        futures::stream::iter(behind)
            .for_each_concurrent(AT_ONCE, |b| async move {
                // A live message arrived: it goes first; the rest waits for
                // the next look.
                if !self.idle() || shutdown.is_cancelled() {
                    return;
                }
                let outcome = match self.take_over_record(&b).await {
                    Ok(outcome) => outcome,
                    Err(e) => {
                        tracing::debug!(error = %e, "A delivery taken over failed; its message does the rest.");
                        "left"
                    }
                };
                if outcome != "left" {
                    moved_ref.fetch_add(1, Ordering::Relaxed);
                }
                emit(RecordTakenOver {
                    target: self.target.as_str(),
                    outcome,
                    record_type: &b.record_type,
                    record_id: &b.record_id,
                });
            })
            .await;
        Ok((found, moved.into_inner()))
    }

    /// Delivers one record from the store as its newest merged event's
    /// message would; what came of it.
    async fn take_over_record(&self, b: &Behind) -> Result<&'static str, String> {
        let row = self
            .store
            .merged_newest(&b.record_type, &b.record_id)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("no merged event")?;
        let ev: MergedEvent = serde_json::from_str(&row.payload).map_err(|e| e.to_string())?;
        let msg = Incoming {
            data: Bytes::from(row.payload),
            attributes: HashMap::from([(
                SEQUENCE_ATTRIBUTE.to_string(),
                row.sequence_num.to_string(),
            )]),
            message_id: MESSAGE_ID.to_string(),
            publish_time: None,
            ordering_key: ev.ordering_key(),
            execution: 1,
            turn: Default::default(),
        };
        let _turn = self.turns.lock(&msg.ordering_key).await;
        let view = self.view(&ev).await.map_err(|f| f.error.message)?;
        let d = Delivery {
            msg: &msg,
            body: msg.data.clone(),
            ev,
            seq: Some(row.sequence_num),
            steps: std::sync::Mutex::new(crate::metrics::StepTimer::start(stage_name(self.target))),
            takeover: true,
        };
        match self.deliver(&d, view).await {
            Ok(o) if o.label == "delivered" => Ok("delivered"),
            Ok(o) if o.label == super::attempt::LEFT => Ok("left"),
            Ok(_) => Ok("nothing_to_send"),
            Err(f) => Err(f.error.message),
        }
    }
}
