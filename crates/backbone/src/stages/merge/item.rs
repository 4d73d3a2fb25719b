//! What the merge engine works on and answers: the items handlers submit
//! and the decision each one gets. Both the engine ([`super::batch`]) and the
//! pure decision ([`super::decide`]) speak these, so they live below both.

use std::collections::HashMap;

use crate::model::merged_event::MergedEvent;
use crate::model::raw_event::RawEvent;
use crate::store::ledger::AuditRow;
use crate::store::outbox::OutboxRow;
use crate::topology::StageName;

pub const STAGE: &str = StageName::Merge.as_str();
/// Attribute of merged messages: the producing event's `sequence_num`.
pub const SEQUENCE_ATTRIBUTE: &str = "sequence_num";
/// Attribute of merged messages: when the broker took the raw message whose
/// merge published them (RFC 3339). A delivery compares it with the merged
/// message's own publish time: a change merged long after it was sent (a
/// dead replica's message redelivered, a backlog) is past its burst's
/// `coalesce` already.
pub const RAW_PUBLISHED_ATTRIBUTE: &str = "raw_published_at";

/// A validated raw event ready to be merged.
#[derive(Debug, Clone)]
pub struct EventItem {
    pub event: RawEvent,
    /// Resolved changes (from the snapshot when the event had a ref).
    pub changes: serde_json::Map<String, serde_json::Value>,
    pub fingerprint: String,
    pub message_id: String,
    pub execution: u32,
    /// The message as received: a pending event keeps it for its gap dead letter.
    pub data: bytes::Bytes,
    pub attributes: HashMap<String, String>,
}

/// Work for the engine.
#[derive(Debug, Clone)]
pub enum Item {
    Event(Box<EventItem>),
    /// Only an audit row (e.g. for an invalid message).
    Audit(AuditRow),
}

/// What happened to one submitted item. `publish` lists, in version order,
/// the merged events of the record to publish now: leftovers of a process
/// that died before publishing, this event's own, and those of pending events
/// it let in (docs/spec.md §4.1).
#[derive(Debug, Clone)]
pub enum Decision {
    /// Persisted and merged.
    Merged {
        merged: Box<MergedEvent>,
        publish: Vec<OutboxRow>,
    },
    /// Persisted; nothing of its own to publish.
    Noop {
        event_id: String,
        publish: Vec<OutboxRow>,
    },
    /// The fingerprint was already claimed.
    Duplicate { publish: Vec<OutboxRow> },
    /// Stored as pending: an earlier version of the record is missing.
    Pending {
        base: i64,
        version: i64,
        publish: Vec<OutboxRow>,
    },
    /// The audit row was written.
    Audited,
    /// The publisher's id was used before for other content.
    IdReused { id: String },
}
