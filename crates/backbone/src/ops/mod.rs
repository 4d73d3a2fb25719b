//! Operator actions (docs/spec.md §7.1): one implementation, four front
//! doors — the CLI (`commands::dlq`, `commands::targets`), the admin API
//! (`admin_ops`), MCP (`mcp::tools`) and the console all call these
//! functions with typed requests and get typed, `Serialize` reports.
//!
//! Public signatures (the console calls exactly these):
//!
//! ```text
//! // Dead letters (ops::dlq)
//! dlq::list(store, &Selection, limit: i64, after_id: Option<i64>) -> Result<ListReport, OpsError>
//! dlq::show(store, id: i64) -> Result<ShowReport, OpsError>              // NotFound if absent
//! dlq::preview(store, &Selection) -> Result<PreviewReport, OpsError>     // how many, which records/targets
//! dlq::replay(store, &Publishers, &Selection, &Actor, dry_run) -> Result<ReplayOutcome, OpsError>
//! dlq::discard(store, ids: &[i64], &Actor, reason: &str) -> Result<StatusReport, OpsError>
//! dlq::group_key(stage, reason, last_error) -> String                   // an "issue" id
//!
//! // Targets (ops::targets)
//! targets::list(store, live: Option<&Health>) -> Result<Vec<TargetReport>, OpsError>
//! targets::pause(store, target: &str, &Actor, reason: &str) -> Result<TargetReport, OpsError>
//! targets::resume(store, target: &str, &Actor) -> Result<TargetReport, OpsError>
//!
//! // Records (ops::records)
//! records::parse_record("type:id") -> Result<(String, String), OpsError>
//! records::resync(store, &HttpSink, target: Source, &[(type, id)], &Actor) -> Result<Vec<ResyncReport>, OpsError>
//!
//! // The daemon's own upkeep (ops::sweep), spawned by `run`
//! sweep::run(store, pacers, shutdown)   // pauses obeyed, replays counted, auto-resolve
//! ```
//!
//! Who acted is an [`Actor`]: `cli:<user>`, `admin-api`, `mcp/<transport>`,
//! `console`, `auto`. Every change writes the dead letter's (or target's)
//! status columns and an `event_audit_log` row (stage `operator`, outcome
//! the new status, detail `{actor, reason, …}`) in one transaction.

pub mod dlq;
pub mod records;
pub mod sweep;
pub mod targets;

use crate::store::StoreError;

/// Who carried out an operator action, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Actor(pub String);

impl Actor {
    /// The CLI: `cli:<login>` (`$USER`, else `unknown`).
    pub fn cli() -> Self {
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_else(|_| "unknown".into());
        Actor(format!("cli:{user}"))
    }

    pub fn admin_api() -> Self {
        Actor("admin-api".into())
    }

    pub fn console() -> Self {
        Actor("console".into())
    }

    /// The daemon itself (auto-resolve).
    pub fn auto() -> Self {
        Actor("auto".into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why an operator action failed.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// Bad input (an unknown target, a missing reason): permanent.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    /// Pub/Sub or another dependency did not answer: transient.
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl OpsError {
    /// Whether the same request may succeed later.
    pub fn is_transient(&self) -> bool {
        match self {
            OpsError::Invalid(_) | OpsError::NotFound(_) => false,
            OpsError::Unavailable(_) => true,
            OpsError::Store(e) => e.is_transient(),
        }
    }
}

/// A reason is required, non-blank and at most 1,000 characters.
pub fn check_reason(reason: &str) -> Result<&str, OpsError> {
    let r = reason.trim();
    if r.is_empty() {
        return Err(OpsError::Invalid("a reason is required (--reason)".into()));
    }
    if r.chars().count() > 1000 {
        return Err(OpsError::Invalid(
            "the reason is longer than 1000 characters".into(),
        ));
    }
    Ok(r)
}
