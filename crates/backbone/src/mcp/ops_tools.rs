//! The operator controls of docs/spec.md §7.1 over MCP, calling `crate::ops`
//! as the CLI and the admin API do (actor `mcp/stdio` or `mcp/http`).
//! Read: `preview_dead_letters`, `list_targets`. Write, each behind its
//! switch (removed from the router otherwise): `discard_dead_letters`
//! (`mcp.allow_discard`), `pause_target` / `resume_target`
//! (`mcp.allow_pause`), `resync_records` (`mcp.allow_resync`).

use chrono::{DateTime, Utc};
use rmcp::handler::server::wrapper::Parameters;
use rmcp::{tool, tool_router, Json};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::server::McpServer;
use crate::ops::dlq::{self, PreviewReport, Selection, StatusReport};
use crate::ops::targets::{self, TargetReport};
use crate::ops::Actor;

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

#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct DiscardDeadLettersInput {
    pub ids: Vec<i64>,
    /// Why (required): kept with each row and its audit row.
    pub reason: String,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct PauseTargetInput {
    /// `netsuite` or `suitex`.
    pub target: String,
    /// Why (required to pause).
    #[serde(default)]
    pub reason: String,
}

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

impl McpServer {
    fn actor(&self) -> Actor {
        Actor(self.ctx.transport.caller().to_string())
    }
}

#[tool_router(router = ops_tool_router, vis = "pub(super)")]
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
            crate::ops::records::resolve(&self.ctx.sinks, &i.target, &i.records)
                .map_err(|e| e.to_string())?;
        let rows = crate::ops::records::resync(&self.ctx.store, sink, source, &recs, &self.actor())
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
