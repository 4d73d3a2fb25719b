//! Dead letters this process failed to park, by dlq message id: how often,
//! and why. Feeds the hold decision, the `backbone_dead_letters_unparked`
//! gauge and `/readyz`'s detail. In memory on purpose: the messages
//! themselves stay in the dlq subscription, so nothing is lost on restart.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use serde_json::{json, Value};

use super::TRIES_BEFORE_HOLD;
use crate::metrics::set_dead_letters_unparked;

/// Ids tracked at most (a flood of failures must not grow memory).
const MAX_TRACKED: usize = 10_000;

struct Entry {
    tries: u32,
    class: &'static str,
    error: String,
}

static UNPARKED: LazyLock<Mutex<HashMap<String, Entry>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn table() -> std::sync::MutexGuard<'static, HashMap<String, Entry>> {
    UNPARKED.lock().unwrap_or_else(|p| p.into_inner())
}

fn held(t: &HashMap<String, Entry>) -> usize {
    t.values().filter(|e| e.tries >= TRIES_BEFORE_HOLD).count()
}

/// Records a failed park; returns how many times this message failed.
pub(super) fn failed(message_id: &str, class: &'static str, error: &str) -> u32 {
    let mut t = table();
    if !t.contains_key(message_id) && t.len() >= MAX_TRACKED {
        // Keep the ones already held; forget the rest.
        t.retain(|_, e| e.tries >= TRIES_BEFORE_HOLD);
        if t.len() >= MAX_TRACKED {
            return TRIES_BEFORE_HOLD;
        }
    }
    let e = t.entry(message_id.to_string()).or_insert(Entry {
        tries: 0,
        class,
        error: String::new(),
    });
    e.tries += 1;
    e.class = class;
    e.error = crate::model::envelope::truncate(error, 512);
    let tries = e.tries;
    set_dead_letters_unparked(held(&t));
    tries
}

/// The message was parked after all.
pub(super) fn resolved(message_id: &str) {
    let mut t = table();
    if t.remove(message_id).is_some() {
        set_dead_letters_unparked(held(&t));
    }
}

/// Dead letters held because they keep failing to park.
pub fn unparked_count() -> usize {
    held(&table())
}

/// `/readyz` detail: how many dead letters cannot be parked and the
/// latest reason (readiness itself does not depend on it: a restart would
/// not help).
pub fn unparked_detail() -> Value {
    let t = table();
    let Some((id, worst)) = t
        .iter()
        .filter(|(_, e)| e.tries >= TRIES_BEFORE_HOLD)
        .max_by_key(|(_, e)| e.tries)
    else {
        return json!("none");
    };
    json!({
        "count": held(&t),
        "example": {"dlq_message_id": id, "tries": worst.tries, "class": worst.class, "error": worst.error},
    })
}
