//! `replay_events`: a record's merged state at any sequence, folded from its
//! stored events through the live merge rules.

use rmcp::handler::server::wrapper::Parameters;
use rmcp::{tool, tool_router, Json};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::args::RecordRef;
use super::error::ToolError;
use super::{err, McpServer};
use crate::history;
use crate::mcp::Ctx;

#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct ReplayEventsInput {
    #[serde(flatten)]
    pub record: RecordRef,
    /// Stop after this sequence number (1 or more); the whole history when absent.
    #[serde(default)]
    pub to_sequence_num: Option<i64>,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ReplayEventsOutput {
    pub record_type: String,
    pub record_id: String,
    /// The bound asked for; null means the latest event.
    pub to_sequence_num: Option<i64>,
    /// Sequence number of the last event folded.
    pub last_sequence_num: i64,
    /// The record's merged version at that point.
    pub version: i64,
    pub events_replayed: usize,
    /// Reading plus folding, in milliseconds.
    pub duration_ms: f64,
    /// Field → value at that point.
    pub state: Value,
    /// Field → {value, version, source, timestamp} of its last change.
    pub fields: Value,
}

impl Ctx {
    pub async fn replay_events(
        &self,
        i: ReplayEventsInput,
    ) -> Result<ReplayEventsOutput, ToolError> {
        i.record.check()?;
        if i.to_sequence_num.is_some_and(|s| s < 1) {
            return Err(ToolError::Invalid(
                "to_sequence_num must be 1 or more".into(),
            ));
        }
        let r = history::replay(
            &self.store,
            &self.policy,
            &i.record.record_type,
            &i.record.record_id,
            i.to_sequence_num,
        )
        .await?;
        if r.events_replayed == 0 {
            return Err(ToolError::NotFound(format!(
                "{} has no events (check record_type and record_id; list_event_types shows the types stored)",
                i.record.key()
            )));
        }
        let v = r.view();
        Ok(ReplayEventsOutput {
            record_type: r.record_type.clone(),
            record_id: r.record_id.clone(),
            to_sequence_num: r.to_seq,
            last_sequence_num: r.last_seq,
            version: r.state.version,
            events_replayed: r.events_replayed,
            duration_ms: v.elapsed_ms,
            state: Value::Object(v.state),
            fields: serde_json::to_value(v.fields).unwrap_or(Value::Null),
        })
    }
}

#[tool_router(router = replay_events_tool, vis = "pub(super)")]
impl McpServer {
    #[tool(
        description = "Rebuild a record's merged state by folding its stored events through the \
live merge rules, up to to_sequence_num (or the latest event): field values, each field's \
provenance (version, source, timestamp of its last change), the version, events_replayed and duration_ms.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn replay_events(
        &self,
        Parameters(i): Parameters<ReplayEventsInput>,
    ) -> Result<Json<ReplayEventsOutput>, String> {
        self.ctx.replay_events(i).await.map(Json).map_err(err)
    }
}
