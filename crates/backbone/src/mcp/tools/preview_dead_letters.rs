//! `preview_dead_letters`: what a replay of a selection would cover, through
//! `crate::ops::dlq` as the CLI and the admin API preview it.

use chrono::{DateTime, Utc};
use rmcp::handler::server::wrapper::Parameters;
use rmcp::{tool, tool_router, Json};
use schemars::JsonSchema;
use serde::Deserialize;

use super::McpServer;
use crate::ops::dlq::{self, PreviewReport, Selection};

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
pub struct PreviewDeadLettersInput {
    /// Only these ids.
    #[serde(default)]
    pub ids: Vec<i64>,
    /// A delivery target: `netsuite` or `suitex`.
    pub target: Option<String>,
    /// A stage: `merge`, `deliver.netsuite`, `deliver.suitex`, `retry`.
    pub stage: Option<String>,
    /// A dead reason: invalid, permanent, exhausted, gap, unpublishable.
    pub reason: Option<String>,
    pub record_type: Option<String>,
    pub record_id: Option<String>,
    /// Parked at or after / before (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// An issue's group key (`group` of a preview's groups).
    pub group: Option<String>,
}

#[tool_router(router = preview_dead_letters_tool, vis = "pub(super)")]
impl McpServer {
    #[tool(
        description = "What a replay of a selection of parked dead letters would cover, \
publishing nothing: how many, their ids, which records, per stage (target) and reason, and the \
issues (groups of stage + reason + normalised error) with counts and first/last seen. Filters: \
ids, target, stage, reason, record_type, record_id, since/until (RFC 3339), group.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn preview_dead_letters(
        &self,
        Parameters(i): Parameters<PreviewDeadLettersInput>,
    ) -> Result<Json<PreviewReport>, String> {
        let sel = Selection {
            ids: i.ids,
            stage: i.stage,
            target: i.target,
            reason: i.reason,
            record_type: i.record_type,
            record_id: i.record_id,
            since: i.since,
            until: i.until,
            group: i.group,
            status: None,
            all: false,
        };
        dlq::preview(&self.ctx.store, &sel)
            .await
            .map(Json)
            .map_err(|e| e.to_string())
    }
}
