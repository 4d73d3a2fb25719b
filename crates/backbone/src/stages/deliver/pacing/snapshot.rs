//! What `/readyz`, the console and MCP show of a target's pacing.

use super::circuit::Cause;

/// What `/readyz` shows of a target.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TargetSnapshot {
    pub target: &'static str,
    pub concurrency_limit: usize,
    pub inflight: usize,
    pub held: usize,
    pub circuit_open: bool,
    /// Why it is open: `outage`, `auth`, `config`, or `paused` by an operator.
    pub circuit_cause: Option<Cause>,
    /// Who paused the target by hand, why and since when (docs/spec.md §7.1).
    pub paused_by: Option<OperatorPause>,
    /// Seconds the circuit has been open.
    pub circuit_open_for_seconds: Option<f64>,
    /// Seconds left of a `Retry-After` pause.
    pub paused_for_seconds: Option<f64>,
    pub mean_rtt_ms: Option<f64>,
    /// The level refusals showed the target's limit to be, while trusted.
    pub concurrency_ceiling: Option<usize>,
    /// The account-wide cap across replicas (docs/spec.md §4.3), when set, and the
    /// slots of it this process holds.
    pub account_concurrency: Option<usize>,
    pub account_slots_held: Option<usize>,
}

/// A pause by an operator, as `target_controls` records it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OperatorPause {
    pub actor: Option<String>,
    pub reason: Option<String>,
    pub since: Option<String>,
}
