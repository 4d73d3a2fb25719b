//! `pipeline_status`: the tool's wrapper; what it gathers is in
//! [`crate::mcp::status`].

use rmcp::{tool, tool_router, Json};

use super::{err, McpServer};
use crate::mcp::status::PipelineStatusOutput;

#[tool_router(router = pipeline_status_tool, vis = "pub(super)")]
impl McpServer {
    #[tool(
        description = "The pipeline now: readiness (database, Pub/Sub, each consumer, messages \
held for an outage), pending events and open gaps, parked dead letters by stage and reason, and \
each target's state (configured, consumer up, recent delivery outcomes, last delivery and failure).",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn pipeline_status(&self) -> Result<Json<PipelineStatusOutput>, String> {
        self.ctx.pipeline_status().await.map(Json).map_err(err)
    }
}
