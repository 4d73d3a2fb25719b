//! `query_events`: a record's events, newest first and paged, each with its
//! fingerprint and audit trail.

use rmcp::handler::server::wrapper::Parameters;
use rmcp::{tool, tool_router, Json};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::args::{parse_time, RecordRef, SourceArg};
use super::error::ToolError;
use super::{err, McpServer};
use crate::history::{self, EventEntry};
use crate::mcp::catalog;
use crate::mcp::Ctx;
use crate::store::mcp::EventFilter;

/// Events per `query_events` page when the caller does not say.
pub const DEFAULT_LIMIT: u32 = 100;
/// Upper bound on a page.
pub const MAX_LIMIT: u32 = 1000;

#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct QueryEventsInput {
    #[serde(flatten)]
    pub record: RecordRef,
    /// Only events from this source.
    #[serde(default)]
    pub source: Option<SourceArg>,
    /// Only events with an audit row of this outcome at any stage, e.g.
    /// `merged`, `duplicate`, `delivered` (list_event_types lists them all).
    #[serde(default)]
    pub outcome: Option<String>,
    /// Only events whose timestamp is at or after this instant (RFC 3339).
    #[serde(default)]
    pub since: Option<String>,
    /// Only events whose timestamp is before this instant (RFC 3339).
    #[serde(default)]
    pub until: Option<String>,
    /// Only events whose changes contain this text (field names or values;
    /// case-insensitive).
    #[serde(default)]
    pub keyword: Option<String>,
    /// Events per page, 1-1000 (default 100).
    #[serde(default)]
    pub limit: Option<u32>,
    /// Events to skip, newest first (default 0).
    #[serde(default)]
    pub offset: Option<u32>,
}

/// One audit-log row about an event.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct AuditOut {
    pub stage: String,
    pub outcome: String,
    /// Failed executions before this one (0 for a first run).
    pub attempt: i64,
    /// RFC 3339, microseconds.
    pub at: String,
    /// What the stage recorded (error text, target answer, conflicts…).
    pub detail: Option<Value>,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct EventOut {
    pub event_id: String,
    /// Position in the record's history (1-based).
    pub sequence_num: i64,
    pub source: String,
    /// The event's own timestamp (RFC 3339, microseconds).
    pub timestamp: String,
    pub base_version: i64,
    /// Field → new value (`null` clears it).
    pub changes: Value,
    pub full_snapshot_ref: Option<String>,
    /// docs/spec.md §3.2 fingerprint.
    pub fingerprint: Option<String>,
    /// When the daemon stored it.
    pub stored_at: String,
    pub audit: Vec<AuditOut>,
}

impl From<EventEntry> for EventOut {
    fn from(e: EventEntry) -> Self {
        EventOut {
            event_id: e.event.id,
            sequence_num: e.event.sequence_num,
            source: e.event.source,
            timestamp: e.event.timestamp,
            base_version: e.event.base_version,
            changes: e.event.changes,
            full_snapshot_ref: e.event.full_snapshot_ref,
            fingerprint: e.fingerprint,
            stored_at: e.event.created_at,
            audit: e
                .audit
                .into_iter()
                .map(|a| AuditOut {
                    stage: a.stage,
                    outcome: a.outcome,
                    attempt: a.attempt,
                    at: a.created_at,
                    detail: a.detail,
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct QueryEventsOutput {
    pub record_type: String,
    pub record_id: String,
    /// Events matching the filters, in all pages.
    pub total_count: i64,
    /// More matching events follow: call again with `offset + limit`.
    pub has_more: bool,
    pub offset: u32,
    pub limit: u32,
    /// Newest first.
    pub events: Vec<EventOut>,
}

impl Ctx {
    pub async fn query_events(&self, i: QueryEventsInput) -> Result<QueryEventsOutput, ToolError> {
        i.record.check()?;
        let limit = i.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(ToolError::Invalid(format!(
                "limit must be between 1 and {MAX_LIMIT}, got {limit}"
            )));
        }
        let offset = i.offset.unwrap_or(0);
        if let Some(o) = &i.outcome {
            if !catalog::is_outcome(o) {
                return Err(ToolError::Invalid(format!(
                    "outcome {o:?} is not one the daemon writes; use one of: {}",
                    catalog::names(catalog::OUTCOMES)
                )));
            }
        }
        let (since, until) = (
            parse_time("since", &i.since)?,
            parse_time("until", &i.until)?,
        );
        let source = i.source.map(|s| s.source());
        let filter = EventFilter {
            source: source.map(|s| s.as_str()),
            outcome: i.outcome.as_deref(),
            since: since.as_ref(),
            until: until.as_ref(),
            keyword: i.keyword.as_deref().filter(|k| !k.is_empty()),
            limit: i64::from(limit),
            offset: i64::from(offset),
        };
        let record = (i.record.record_type.as_str(), i.record.record_id.as_str());
        let (events, total) = self
            .store
            .timed(self.store.filtered_events(record, &filter))
            .await?;
        if total == 0 {
            self.any_events(&i.record).await?;
        }
        let mut reader = self.store.history_reader().await?;
        let entries = history::attach_audit(&mut reader, record, events).await?;
        drop(reader);
        let events: Vec<EventOut> = entries.into_iter().map(EventOut::from).collect();
        Ok(QueryEventsOutput {
            record_type: i.record.record_type,
            record_id: i.record.record_id,
            total_count: total,
            has_more: i64::from(offset) + (events.len() as i64) < total,
            offset,
            limit,
            events,
        })
    }

    /// Nothing matched the filters: an unknown record is an error, a known
    /// one an empty page.
    async fn any_events(&self, record: &RecordRef) -> Result<(), ToolError> {
        let any = EventFilter {
            limit: 1,
            ..Default::default()
        };
        let key = (record.record_type.as_str(), record.record_id.as_str());
        let (_, all) = self
            .store
            .timed(self.store.filtered_events(key, &any))
            .await?;
        if all == 0 {
            return Err(ToolError::NotFound(format!(
                "{} has no events (check record_type and record_id; list_event_types shows the types stored)",
                record.key()
            )));
        }
        Ok(())
    }
}

#[tool_router(router = query_events_tool, vis = "pub(super)")]
impl McpServer {
    #[tool(
        description = "A record's events, newest first, each with its fingerprint and audit trail \
(stage, outcome, attempt, detail). Filters: source, outcome (an audit outcome at any stage, see \
list_event_types), since/until (RFC 3339, on the event's timestamp), keyword (text in the changes). \
Paged by limit (default 100, max 1000) and offset; returns total_count and has_more. \
An unknown record is a 'not found' error.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn query_events(
        &self,
        Parameters(i): Parameters<QueryEventsInput>,
    ) -> Result<Json<QueryEventsOutput>, String> {
        self.ctx.query_events(i).await.map(Json).map_err(err)
    }
}
