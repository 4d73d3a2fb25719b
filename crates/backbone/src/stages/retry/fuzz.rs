//! Envelope fuzzing (proptest): the retry router and the park stage read
//! generated hostile envelopes without panicking, and what they produce
//! keeps its bounds. Generators and `FUZZ_CASES` are shared with
//! `model::fuzz` (see there for the long campaign).

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use proptest::prelude::*;

use crate::model::envelope::{self, FailureInfo};
use crate::model::fuzz::{campaign, nasty_string, raw_input, sized_string};

/// A stage that does nothing, so the retry router has something to route to.
struct Noop;

impl crate::stages::Stage for Noop {
    fn name(&self) -> &'static str {
        "merge"
    }
    fn handle<'a>(
        &'a self,
        _msg: &'a crate::stages::Incoming,
    ) -> futures::future::BoxFuture<'a, crate::stages::StageResult> {
        Box::pin(async { Ok(crate::stages::Outcome::ack("noop", None)) })
    }
}

fn attributes() -> impl Strategy<Value = HashMap<String, String>> {
    let key = prop_oneof![
        3 => prop::sample::select(vec![
            envelope::STAGE, envelope::ATTEMPT, envelope::FIRST_FAILED_AT, envelope::LAST_ERROR,
            envelope::ORIGIN_MESSAGE_ID, envelope::FINGERPRINT, envelope::DEAD_REASON,
            envelope::DEAD_AT, envelope::REPLAY, envelope::ORDERING_KEY, envelope::ERROR_HISTORY,
            envelope::BROKER_DLQ_SOURCE_SUBSCRIPTION, envelope::BROKER_DLQ_DELIVERY_COUNT,
            "retry_after_ms", "replay_of",
        ]).prop_map(str::to_string),
        1 => nasty_string(12),
    ];
    let value = prop_oneof![
        3 => sized_string(),
        1 => prop::sample::select(vec![
            "merge", "0", "1", "4294967295", "4294967296", "-1", "true", "18446744073709551615",
            "10000000000000000", "park",
        ]).prop_map(str::to_string),
    ];
    prop::collection::hash_map(key, value, 0..10)
}

fn instant() -> impl Strategy<Value = Option<DateTime<Utc>>> {
    prop_oneof![
        Just(None),
        Just(Some(DateTime::<Utc>::MAX_UTC)),
        Just(Some(DateTime::<Utc>::MIN_UTC)),
        (-8_000_000_000_000i64..8_000_000_000_000).prop_map(|s| DateTime::from_timestamp(s, 0)),
    ]
}

#[test]
fn fuzz_envelopes() {
    use crate::stages::retry::{schedule::Schedule, RetryRouter};
    use crate::stages::{Incoming, Registry, Route, Router};

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let store = rt
        .block_on(crate::store::Store::connect(
            "sqlite::memory:",
            1,
            std::time::Duration::from_secs(5),
        ))
        .expect("in-memory store");
    let park = crate::stages::park::ParkStage::new(
        store,
        crate::topology::Topology::new(crate::topology::Env::Local, "p"),
    );
    let mut registry = Registry::default();
    registry.register(Arc::new(Noop));
    let router = RetryRouter {
        registry,
        schedule: Schedule {
            initial: std::time::Duration::from_secs(10),
            multiplier: 2.0,
            max: std::time::Duration::from_secs(600),
            max_attempts: 5,
        },
    };
    let input = (
        attributes(),
        prop::collection::vec(sized_string(), 1..4),
        raw_input(),
        instant(),
        nasty_string(20),
        any::<u32>(),
    );
    campaign(
        "envelopes",
        input,
        |(attrs, errors, data, publish_time, id, attempt)| {
            // Failures pile up on an envelope: bounded however many.
            let mut a = attrs;
            for (i, err) in errors.iter().enumerate() {
                let info = FailureInfo {
                    stage: "merge",
                    attempt: attempt.wrapping_add(i as u32),
                    error: err,
                    fingerprint: "f",
                    now: Utc::now(),
                };
                a = if i + 1 == errors.len() {
                    envelope::dead_letter_attributes(&a, &id, &id, &info, "exhausted")
                } else {
                    envelope::error_attributes(&a, &id, &id, &info)
                };
                assert!(a[envelope::LAST_ERROR].len() <= envelope::LAST_ERROR_MAX);
                assert!(a[envelope::ERROR_HISTORY].len() <= envelope::HISTORY_MAX);
                assert!(
                    crate::model::message_limits::check(0, &a, "").is_ok(),
                    "{a:?}"
                );
            }
            let msg = Incoming {
                data: bytes::Bytes::from(data),
                attributes: a,
                message_id: id,
                publish_time,
                ordering_key: String::new(),
                execution: 1,
                turn: Default::default(),
            };
            // The retry router reads the envelope: it routes or rejects.
            match router.route(msg.clone()) {
                Route::Run { msg: m, .. } => assert!(m.execution >= 1),
                Route::Reject { failure, .. } => assert!(!failure.error.message.is_empty()),
            }
            // The park stage reads it too, and its row always fits.
            let dl = park.dead_letter(&msg);
            let _ = dl.oversized_fields();
            let fp = dl.fingerprint.as_deref().unwrap_or_default();
            assert_eq!(fp.len(), 64, "{fp}");
            let minimal = dl.minimal("x");
            assert_eq!(minimal.data, dl.data);
        },
    );
}
