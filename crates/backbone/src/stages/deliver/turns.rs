//! One turn at a time per key: an async mutex per ordering key, created on
//! demand and forgotten once nobody holds or waits for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::OwnedMutexGuard;

/// Keys are dropped from the map when their lock is no longer referenced;
/// the map is swept when it grows past this.
const SWEEP_AT: usize = 4096;

#[derive(Default)]
pub struct Turns {
    locks: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl Turns {
    /// Waits for `key`'s turn; the turn ends when the guard is dropped.
    pub async fn lock(&self, key: &str) -> OwnedMutexGuard<()> {
        let lock = {
            let mut map = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            if map.len() >= SWEEP_AT {
                map.retain(|_, w| w.strong_count() > 0);
            }
            match map.get(key).and_then(Weak::upgrade) {
                Some(l) => l,
                None => {
                    let l = Arc::new(tokio::sync::Mutex::new(()));
                    map.insert(key.to_string(), Arc::downgrade(&l));
                    l
                }
            }
        };
        lock.lock_owned().await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn the_same_key_waits_and_other_keys_do_not() {
        let t = Arc::new(Turns::default());
        let held = t.lock("a").await;
        let other = tokio::time::timeout(Duration::from_millis(100), t.lock("b")).await;
        assert!(other.is_ok(), "another key is free");
        let same = tokio::time::timeout(Duration::from_millis(100), t.lock("a")).await;
        assert!(same.is_err(), "the same key waits");
        drop(held);
        let again = tokio::time::timeout(Duration::from_millis(100), t.lock("a")).await;
        assert!(again.is_ok(), "free once released");
    }
}
