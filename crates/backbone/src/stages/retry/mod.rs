//! The retry consumer's router (docs/spec.md §4 "retry"): reads the failed stage and
//! attempt from the error envelope, looks the stage up in the registry, and
//! holds the message until execution k is due. Success is acked; a failure is
//! routed by the runtime to the error topic with attempt k, or to the dlq as
//! `exhausted` once k reaches `retry.max_attempts`.

#[cfg(test)]
mod fuzz;
pub mod schedule;

use std::time::Duration;

use chrono::Utc;

use self::schedule::Schedule;
use super::{Failure, Incoming, Registry, Route, Router, StageError};
use crate::model::envelope;
use crate::topology::StageName;

pub struct RetryRouter {
    pub registry: Registry,
    pub schedule: Schedule,
}

impl RetryRouter {
    fn reject(&self, stage: &str, msg: Incoming, why: String) -> Route {
        Route::Reject {
            stage: stage.to_string(),
            msg,
            failure: Failure {
                error: StageError::invalid(why),
                fingerprint: None,
            },
        }
    }
}

impl Router for RetryRouter {
    fn route(&self, mut msg: Incoming) -> Route {
        let Some(stage_name) = msg.attributes.get(envelope::STAGE).cloned() else {
            return self.reject(
                StageName::Retry.as_str(),
                msg,
                "error envelope has no `stage` attribute; cannot tell which stage to retry".into(),
            );
        };
        let attempt = match msg
            .attributes
            .get(envelope::ATTEMPT)
            .map(|a| a.parse::<u32>())
        {
            Some(Ok(a)) => a,
            _ => {
                return self.reject(
                    &stage_name,
                    msg,
                    "error envelope has no valid `attempt` attribute".into(),
                )
            }
        };
        let Some(stage) = self.registry.get(&stage_name) else {
            let known = self.registry.names().join(", ");
            return self.reject(
                &stage_name,
                msg,
                format!("error envelope names unknown stage `{stage_name}` (known: {known})"),
            );
        };
        let replay = msg.attributes.get(envelope::REPLAY).map(String::as_str) == Some("true");
        let k = attempt.saturating_add(1);
        msg.execution = k;
        if let Some(key) = msg.attributes.get(envelope::ORDERING_KEY) {
            msg.ordering_key = key.clone();
        }
        let not_before = if replay && attempt == 0 {
            // An operator asked for it: run at once.
            None
        } else {
            let scheduled = self.schedule.delay(k, &mut rand::rng());
            let mut wait = scheduled;
            if let Some(ms) = msg
                .attributes
                .get(envelope::RETRY_AFTER_MS)
                .and_then(|v| v.parse::<u64>().ok())
            {
                // A sink's Retry-After is a lower bound, never a shortcut.
                wait = wait.max(Duration::from_millis(ms));
            }
            // Anchored on when execution k−1 failed (the envelope's publish
            // time), so a restart does not reset the schedule. The
            // attribute can say anything: a wait past what a date can
            // hold falls back to the schedule instead of overflowing.
            let failed_at = msg.publish_time.unwrap_or_else(Utc::now);
            let at = |d: Duration| {
                chrono::Duration::from_std(d)
                    .ok()
                    .and_then(|w| failed_at.checked_add_signed(w))
            };
            at(wait).or_else(|| at(scheduled))
        };
        Route::Run {
            stage,
            msg,
            not_before,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use chrono::DateTime;

    use super::*;
    use crate::stages::{Outcome, Stage, StageResult};

    struct Noop;

    impl Stage for Noop {
        fn name(&self) -> &'static str {
            "merge"
        }
        fn handle<'a>(&'a self, _m: &'a Incoming) -> futures::future::BoxFuture<'a, StageResult> {
            Box::pin(async { Ok(Outcome::ack("noop", None)) })
        }
    }

    /// Found by the fuzz campaign: `failed_at + wait` overflowed (a panic
    /// outside the stage's catch_unwind, killing the retry lane) when the
    /// attribute asked for a wait no date can hold.
    #[test]
    fn absurd_retry_after_falls_back_to_the_schedule() {
        let mut registry = Registry::default();
        registry.register(Arc::new(Noop));
        let router = RetryRouter {
            registry,
            schedule: Schedule {
                initial: Duration::from_secs(10),
                multiplier: 2.0,
                max: Duration::from_secs(600),
                max_attempts: 5,
            },
        };
        let now = Utc::now();
        for (retry_after, publish_time) in [
            ("10000000000000000", Some(now)),
            ("18446744073709551615", Some(now)),
            ("1000", Some(DateTime::<Utc>::MAX_UTC)),
        ] {
            let msg = Incoming {
                data: bytes::Bytes::new(),
                attributes: HashMap::from([
                    (envelope::STAGE.to_string(), "merge".to_string()),
                    (envelope::ATTEMPT.to_string(), "1".to_string()),
                    ("retry_after_ms".to_string(), retry_after.to_string()),
                ]),
                message_id: "m".into(),
                publish_time,
                ordering_key: String::new(),
                execution: 1,
                turn: Default::default(),
            };
            match router.route(msg) {
                Route::Run { not_before, .. } => {
                    if publish_time == Some(now) {
                        let at = not_before.expect("the schedule's time");
                        assert!(at - now <= chrono::Duration::seconds(13), "{at}");
                    }
                }
                Route::Reject { .. } => panic!("a valid envelope is routed"),
            }
        }
    }
}
