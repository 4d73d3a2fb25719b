//! What a delivery and its target's pacer tell each other: how a request
//! ended ([`Answer`]), what the delivery does next ([`Verdict`]), and that
//! shutdown ended a wait ([`Stopped`]).

use std::time::Duration;

use super::circuit::Failure;

/// Shutdown came while a delivery waited: hand the message back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("shutting down while the delivery waited for its target")]
pub struct Stopped;

/// How a request to the target ended, as pacing sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// 2xx.
    Success,
    /// A 4xx other than 408/429: the target is up and refused this message.
    Rejected,
    /// 429, or 503 with `Retry-After`: slow down (for this long).
    Throttled {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// Refused, reset, timed out or 5xx; `back_pressure` for the kinds that
    /// mean "too much" (timeouts, 503, refused connections).
    Failed { kind: Failure, back_pressure: bool },
}

/// What the delivery does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Carry out the answer (delivered, or the target's refusal).
    Proceed,
    /// Send it again once the target allows: paced or held, no attempt spent.
    Again,
    /// A failure while the target may still serve others: wait for
    /// [`Pacer::verdict`] with this mark.
    Undecided(u64),
}
