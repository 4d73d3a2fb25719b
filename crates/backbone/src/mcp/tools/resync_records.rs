//! `resync_records` (write, `mcp.allow_resync`): send records' merged state
//! to a target again, through `crate::ops::records`.

use rmcp::handler::server::wrapper::Parameters;
use rmcp::{tool, tool_router, Json};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::McpServer;
use crate::ops::records;

#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct ResyncRecordsInput {
    /// `netsuite` or `suitex`.
    pub target: String,
    /// Records as `record_type:record_id`.
    pub records: Vec<String>,
}

/// One result per record: `record`, `version`, `fields` sent, `ok`,
/// `status`, `error`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ResyncRecordsOutput {
    pub results: Vec<serde_json::Value>,
}

#[tool_router(router = resync_records_tool, vis = "pub(super)")]
impl McpServer {
    #[tool(
        description = "Send records' current merged state to a target as one signed request \
each, with X-Backbone-Resync: true, even at a version the target already acknowledged (the fix \
for drift verify finds, or a target restored from a backup). Audited with the caller. Only \
with the operator's agreement.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = true
        )
    )]
    async fn resync_records(
        &self,
        Parameters(i): Parameters<ResyncRecordsInput>,
    ) -> Result<Json<ResyncRecordsOutput>, String> {
        let (source, sink, recs) =
            records::resolve(&self.ctx.sinks, &i.target, &i.records).map_err(|e| e.to_string())?;
        let rows = records::resync(&self.ctx.store, sink, source, &recs, &self.actor())
            .await
            .map_err(|e| e.to_string())?;
        let results = rows
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        Ok(Json(ResyncRecordsOutput { results }))
    }
}
