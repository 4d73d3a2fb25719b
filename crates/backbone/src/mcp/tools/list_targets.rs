//! `list_targets`: each delivery target's pause as stored; and the shape
//! `pause_target` and `resume_target` answer with.

use rmcp::{tool, tool_router, Json};
use schemars::JsonSchema;
use serde::Serialize;

use super::McpServer;
use crate::ops::targets::{self, TargetReport};

/// A target's pause as stored.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct TargetOutput {
    pub target: String,
    pub paused: bool,
    pub actor: Option<String>,
    pub reason: Option<String>,
    pub changed_at: Option<String>,
}

impl From<TargetReport> for TargetOutput {
    fn from(r: TargetReport) -> Self {
        Self {
            target: r.target,
            paused: r.paused,
            actor: r.actor,
            reason: r.reason,
            changed_at: r.changed_at,
        }
    }
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ListTargetsOutput {
    pub targets: Vec<TargetOutput>,
}

#[tool_router(router = list_targets_tool, vis = "pub(super)")]
impl McpServer {
    #[tool(
        description = "Each delivery target (netsuite, suitex): whether an operator paused it, \
by whom, why and since when.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn list_targets(&self) -> Result<Json<ListTargetsOutput>, String> {
        let rows = targets::list(&self.ctx.store, None)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Json(ListTargetsOutput {
            targets: rows.into_iter().map(TargetOutput::from).collect(),
        }))
    }
}
