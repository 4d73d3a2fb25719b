//! `explain_field`: why a record's field holds its value and whether each
//! target has it (what `event-backbone explain` answers).

use rmcp::handler::server::wrapper::Parameters;
use rmcp::{tool, tool_router, Json};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::args::RecordRef;
use super::error::ToolError;
use super::{err, McpServer};
use crate::explain;
use crate::mcp::Ctx;

#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct ExplainFieldInput {
    #[serde(flatten)]
    pub record: RecordRef,
    /// Only this field; every field of the record when absent.
    #[serde(default)]
    pub field: Option<String>,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ExplainFieldOutput {
    pub record_type: String,
    pub record_id: String,
    pub version: i64,
    pub last_seq: i64,
    /// Events in the record's history.
    pub events: usize,
    /// Events waiting for an earlier version (not part of any value yet).
    pub pending: i64,
    /// The merge policy the history was replayed with.
    pub policy: Value,
    /// Field → {value, set_by (the event that set it), conflicts (winner,
    /// loser, rule, why), delivery per target (status, delivered, last_attempt)}.
    pub fields: Value,
    /// Disagreements between the replay and what is stored (empty when none).
    pub warnings: Vec<String>,
}

impl Ctx {
    pub async fn explain_field(
        &self,
        i: ExplainFieldInput,
    ) -> Result<ExplainFieldOutput, ToolError> {
        i.record.check()?;
        let x = explain::explain_record(
            &self.store,
            &self.policy,
            &i.record.record_type,
            &i.record.record_id,
            i.field.as_deref(),
        )
        .await?;
        Ok(ExplainFieldOutput {
            record_type: x.record_type,
            record_id: x.record_id,
            version: x.version,
            last_seq: x.last_seq,
            events: x.events,
            pending: x.pending,
            policy: serde_json::to_value(&x.policy).unwrap_or(Value::Null),
            fields: serde_json::to_value(&x.fields).unwrap_or(Value::Null),
            warnings: x.warnings,
        })
    }
}

#[tool_router(router = explain_field_tool, vis = "pub(super)")]
impl McpServer {
    #[tool(
        description = "Why a record's field holds its value (what `event-backbone explain` \
answers): the event that set it, every conflict on it (winner, loser, rule and why), and per \
target (netsuite, suitex) whether that value was delivered, is retrying or was dead-lettered. \
Omit field for every field. Unknown record or field is a 'not found' error listing the fields.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn explain_field(
        &self,
        Parameters(i): Parameters<ExplainFieldInput>,
    ) -> Result<Json<ExplainFieldOutput>, String> {
        self.ctx.explain_field(i).await.map(Json).map_err(err)
    }
}
