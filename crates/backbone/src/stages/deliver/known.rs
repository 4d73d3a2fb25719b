//! Where this process last left a target, per record: the position it wrote
//! with its last claim, delivery or skip. A delivery of a later event plans
//! from it instead of reading `delivery_state` first; the claim checks it
//! against the database (a stale entry is refused, forgotten and read
//! again), so it saves a read and decides nothing on its own.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::model::merged_event::MergedEvent;
use crate::store::delivery::DeliveryState;
use crate::store::delivery_log::View;

/// Records remembered at most; past it the map starts over (a miss is one read).
const CAPACITY: usize = 100_000;

#[derive(Default)]
pub struct Known(Mutex<HashMap<(String, String), DeliveryState>>);

impl Known {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), DeliveryState>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The view to plan `ev` from, if this process knows one and `ev` comes
    /// after it. Not for a redelivery (at or before the known position):
    /// whether its fingerprint was delivered is read from the audit log.
    pub fn view(&self, ev: &MergedEvent, seq: Option<i64>) -> Option<View> {
        let seq = seq?;
        let st = *self
            .map()
            .get(&(ev.record_type.clone(), ev.record_id.clone()))?;
        (seq > st.acked && seq >= st.attempted).then_some((false, st))
    }

    pub fn set(&self, ev: &MergedEvent, st: DeliveryState) {
        let mut m = self.map();
        if m.len() >= CAPACITY {
            m.clear();
        }
        m.insert((ev.record_type.clone(), ev.record_id.clone()), st);
    }

    pub fn forget(&self, ev: &MergedEvent) {
        self.map()
            .remove(&(ev.record_type.clone(), ev.record_id.clone()));
    }
}
