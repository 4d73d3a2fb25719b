//! What the daemon can write into the audit log and the dead-letter table,
//! in one line each: the vocabulary `list_event_types` teaches a model and
//! `query_events` checks its `outcome` filter against.

use schemars::JsonSchema;
use serde::Serialize;

/// A value the daemon writes, with where and what it means.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Term {
    pub name: &'static str,
    /// The stages that write it (`merge`, `deliver.netsuite`, …).
    pub stages: &'static [&'static str],
    pub description: &'static str,
}

const MERGE: &[&str] = &["merge"];
const DELIVER: &[&str] = &["deliver.netsuite", "deliver.suitex"];
const FAILING: &[&str] = &["merge", "deliver.netsuite", "deliver.suitex"];

/// `event_audit_log.processing_outcome` values.
pub const OUTCOMES: &[Term] = &[
    Term {
        name: "merged",
        stages: MERGE,
        description: "The event was stored and merged; a merged event was published.",
    },
    Term {
        name: "noop",
        stages: MERGE,
        description: "The event was stored but changed nothing (every field lost or was unchanged).",
    },
    Term {
        name: "duplicate",
        stages: &["merge", "deliver.netsuite", "deliver.suitex"],
        description: "The same fingerprint was seen before (redelivery or publisher retry); nothing new was written.",
    },
    Term {
        name: "pending",
        stages: MERGE,
        description: "base_version is ahead of the record: the event waits until the missing version is merged (docs/spec.md §4.1).",
    },
    Term {
        name: "delivered",
        stages: DELIVER,
        description: "The target answered 2xx to the merged event.",
    },
    Term {
        name: "skipped",
        stages: DELIVER,
        description: "Nothing for this target: it was the origin and lost no conflict, or nothing applied.",
    },
    Term {
        name: "superseded",
        stages: DELIVER,
        description: "The target already acknowledged this version or a later one; no request was sent.",
    },
    Term {
        name: "transient",
        stages: FAILING,
        description: "A failed execution that will be retried (sink 5xx/429/timeout, base_version ahead, snapshot not readable yet).",
    },
    Term {
        name: "invalid",
        stages: FAILING,
        description: "The message can never be processed as it is (bad JSON or a bad field); dead-lettered at once.",
    },
    Term {
        name: "permanent",
        stages: FAILING,
        description: "A permanent failure (target 4xx other than 408/429, id reused with other content); dead-lettered at once.",
    },
    Term {
        name: "exhausted",
        stages: FAILING,
        description: "The last allowed execution failed (retry.max_attempts); dead-lettered.",
    },
    Term {
        name: "parked",
        stages: &["park"],
        description: "The dead letter was stored in dead_letters, ready to be replayed.",
    },
    Term {
        name: "emitted",
        stages: &["mcp"],
        description: "An operator published this raw event through the MCP emit_event tool (detail names the caller).",
    },
    Term {
        name: "dlq_replayed",
        stages: &["mcp"],
        description: "An operator replayed this dead letter through the MCP replay_dead_letters tool.",
    },
];

/// `dead_letters.reason` (the `dead_reason` attribute) values.
pub const DEAD_REASONS: &[Term] = &[
    Term {
        name: "invalid",
        stages: FAILING,
        description: "The message can never be processed as it is (not JSON, a missing or bad field).",
    },
    Term {
        name: "permanent",
        stages: FAILING,
        description: "Refused for good: a target's 4xx (not 408/429), or an id reused with other content.",
    },
    Term {
        name: "exhausted",
        stages: FAILING,
        description: "Failed retry.max_attempts times (5 by default) with transient errors.",
    },
    Term {
        name: "gap",
        stages: MERGE,
        description: "A missing version did not arrive within merge.gap_timeout; its pending events merge once it does.",
    },
];

/// The stages a dead letter can be parked for.
pub const DEAD_LETTER_STAGES: &[&str] = &[
    "merge",
    "deliver.netsuite",
    "deliver.suitex",
    "retry",
    "unknown",
];

pub fn is_outcome(name: &str) -> bool {
    OUTCOMES.iter().any(|t| t.name == name)
}

pub fn names(terms: &[Term]) -> String {
    terms.iter().map(|t| t.name).collect::<Vec<_>>().join(", ")
}
