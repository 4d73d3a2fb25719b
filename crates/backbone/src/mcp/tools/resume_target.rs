//! `resume_target` (write, `mcp.allow_pause`): deliver what a paused target
//! held, through `crate::ops::targets`.

use rmcp::handler::server::wrapper::Parameters;
use rmcp::{tool, tool_router, Json};

use super::list_targets::TargetOutput;
use super::pause_target::PauseTargetInput;
use super::McpServer;
use crate::ops::targets;

#[tool_router(router = resume_target_tool, vis = "pub(super)")]
impl McpServer {
    #[tool(
        description = "Resume a paused delivery target: what it held is delivered first. \
Audited with the caller.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn resume_target(
        &self,
        Parameters(i): Parameters<PauseTargetInput>,
    ) -> Result<Json<TargetOutput>, String> {
        targets::resume(&self.ctx.store, &i.target, &self.actor())
            .await
            .map(|r| Json(r.into()))
            .map_err(|e| e.to_string())
    }
}
