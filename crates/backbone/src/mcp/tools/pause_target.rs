//! `pause_target` (write, `mcp.allow_pause`): hold a target's deliveries on
//! every replica, through `crate::ops::targets`.

use rmcp::handler::server::wrapper::Parameters;
use rmcp::{tool, tool_router, Json};
use schemars::JsonSchema;
use serde::Deserialize;

use super::list_targets::TargetOutput;
use super::McpServer;
use crate::ops::targets;

// Also resume_target's argument. A `///` here would enter both tools' schemas.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct PauseTargetInput {
    /// `netsuite` or `suitex`.
    pub target: String,
    /// Why (required to pause).
    #[serde(default)]
    pub reason: String,
}

#[tool_router(router = pause_target_tool, vis = "pub(super)")]
impl McpServer {
    #[tool(
        description = "Pause a delivery target on every replica (within seconds, kept across \
restarts): its deliveries are held like an open circuit, no attempt spent, nothing \
dead-lettered, until resume_target. A reason is required; audited with the caller.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn pause_target(
        &self,
        Parameters(i): Parameters<PauseTargetInput>,
    ) -> Result<Json<TargetOutput>, String> {
        targets::pause(&self.ctx.store, &i.target, &self.actor(), &i.reason)
            .await
            .map(|r| Json(r.into()))
            .map_err(|e| e.to_string())
    }
}
