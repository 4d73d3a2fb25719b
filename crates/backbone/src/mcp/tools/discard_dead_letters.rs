//! `discard_dead_letters` (write, `mcp.allow_discard`): close parked dead
//! letters without replaying them, through `crate::ops::dlq`.

use rmcp::handler::server::wrapper::Parameters;
use rmcp::{tool, tool_router, Json};
use schemars::JsonSchema;
use serde::Deserialize;

use super::McpServer;
use crate::ops::dlq::{self, StatusReport};

#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct DiscardDeadLettersInput {
    pub ids: Vec<i64>,
    /// Why (required): kept with each row and its audit row.
    pub reason: String,
}

#[tool_router(router = discard_dead_letters_tool, vis = "pub(super)")]
impl McpServer {
    #[tool(
        description = "Close parked dead letters without replaying them: each row is kept, \
marked discarded with the caller and the reason (required), audited, and no longer alerted on. \
Only with the operator's agreement.",
        annotations(
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn discard_dead_letters(
        &self,
        Parameters(i): Parameters<DiscardDeadLettersInput>,
    ) -> Result<Json<StatusReport>, String> {
        dlq::discard(&self.ctx.store, &i.ids, &self.actor(), &i.reason)
            .await
            .map(Json)
            .map_err(|e| e.to_string())
    }
}
