//! `replay_dead_letters` (write, `mcp.allow_replay`): republish pending dead
//! letters to the error topic; a dry run unless `confirm` is true.

use rmcp::handler::server::wrapper::Parameters;
use rmcp::{tool, tool_router, Json};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::args::DlqFilters;
use super::error::ToolError;
use super::{err, McpServer, AUDIT_STAGE};
use crate::dlq;
use crate::mcp::Ctx;
use crate::model::fingerprint::fingerprint_bytes;
use crate::store::dead_letters::{DeadLetter, DlqFilter};
use crate::store::ledger::AuditRow;

#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct ReplayDeadLettersInput {
    #[serde(flatten)]
    pub filters: DlqFilters,
    /// Republish for real. Without it (the default) nothing is published:
    /// the answer lists what would be replayed.
    #[serde(default)]
    pub confirm: bool,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ReplayFailure {
    pub id: i64,
    pub error: String,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ReplayDeadLettersOutput {
    /// True when nothing was published (no `confirm: true`).
    pub dry_run: bool,
    /// Rows republished to the error topic (attempt=0, replay=true), or, in
    /// a dry run, the rows that would be.
    pub replayed: Vec<i64>,
    /// Rows another replay had claimed.
    pub skipped: Vec<i64>,
    /// Rows whose publish failed (left pending).
    pub failed: Vec<ReplayFailure>,
    /// In words, what happened and what to do next.
    pub message: String,
}

impl Ctx {
    /// The rows a replay with `f` covers (at most [`dlq::MAX_BATCH`]), page
    /// by page and without their data.
    async fn dead_letter_heads(&self, f: &DlqFilter) -> Result<Vec<DeadLetter>, ToolError> {
        let mut rows = Vec::new();
        let mut after = None;
        while (rows.len() as i64) < dlq::MAX_BATCH {
            let limit = dlq::PAGE.min(dlq::MAX_BATCH - rows.len() as i64);
            let page = self
                .store
                .timed(self.store.dead_letter_page(f, after, limit))
                .await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            rows.extend(page.into_iter().map(|mut d| {
                // Only what the audit rows need.
                d.attributes.clear();
                d.errors.clear();
                d
            }));
        }
        Ok(rows)
    }

    pub async fn replay_dead_letters(
        &self,
        i: ReplayDeadLettersInput,
    ) -> Result<ReplayDeadLettersOutput, ToolError> {
        if !self.settings.mcp.allow_replay {
            return Err(ToolError::Disabled(
                "replay_dead_letters is off on this server (set mcp.allow_replay = true)".into(),
            ));
        }
        let f = i.filters.filter(false)?;
        if !i.confirm {
            return self.replay_dry_run(&f).await;
        }
        let publishers = self.publishers().await?;
        let rows_before = self.dead_letter_heads(&f).await?;
        let report =
            dlq::replay_by(&self.store, &publishers, &f, false, self.transport.caller()).await?;
        publishers.flush().await;
        tracing::info!(
            caller = self.transport.caller(),
            replayed = ?report.replayed,
            failed = report.failed.len(),
            "Dead letters were replayed through MCP."
        );
        self.audit_replayed(&rows_before, &report.replayed).await;
        Ok(ReplayDeadLettersOutput {
            dry_run: false,
            message: format!(
                "replayed {} dead letter(s) to the error topic; {} skipped (claimed by another replay), {} failed. \
                 A replayed message that fails again is parked again (its replay_count grows).",
                report.replayed.len(),
                report.skipped.len(),
                report.failed.len()
            ),
            replayed: report.replayed,
            skipped: report.skipped,
            failed: report
                .failed
                .into_iter()
                .map(|(id, error)| ReplayFailure { id, error })
                .collect(),
        })
    }

    /// Without `confirm`: what would be replayed, nothing published.
    async fn replay_dry_run(&self, f: &DlqFilter) -> Result<ReplayDeadLettersOutput, ToolError> {
        let ids: Vec<i64> = self
            .dead_letter_heads(f)
            .await?
            .into_iter()
            .map(|d| d.id)
            .collect();
        Ok(ReplayDeadLettersOutput {
            dry_run: true,
            message: format!(
                "dry run: nothing was published. {} dead letter(s) would be replayed; \
                 call replay_dead_letters again with the same filters and confirm: true to replay them.",
                ids.len()
            ),
            replayed: ids,
            skipped: Vec::new(),
            failed: Vec::new(),
        })
    }

    /// One `dlq_replayed` audit row per replayed dead letter, naming the
    /// caller; a row that cannot be written is logged, not an error (the
    /// replay happened).
    async fn audit_replayed(&self, rows: &[DeadLetter], replayed: &[i64]) {
        let caller = self.transport.caller();
        for dl in rows.iter().filter(|d| replayed.contains(&d.id)) {
            // A message that never parsed has no fingerprint: its bytes'
            // (the park stage records one, so this read is rare).
            let fp = match &dl.fingerprint {
                Some(fp) => fp.clone(),
                None => match self.store.timed(self.store.dead_letter(dl.id)).await {
                    Ok(Some(full)) => fingerprint_bytes(&full.data),
                    _ => String::new(),
                },
            };
            let row = AuditRow {
                event_id: None,
                fingerprint: fp,
                record_type: dl.record_type.clone(),
                record_id: dl.record_id.clone(),
                stage: AUDIT_STAGE.into(),
                outcome: "dlq_replayed".into(),
                detail: Some(
                    json!({"caller": caller, "dead_letter_id": dl.id, "stage": dl.stage})
                        .to_string(),
                ),
                message_id: None,
                attempt: 0,
                claim: false,
            };
            if let Err(e) = self.store.record_audit(row).await {
                tracing::warn!(error = %e, id = dl.id, "The audit row of an MCP replay could not be written.");
            }
        }
    }
}

#[tool_router(router = replay_dead_letters_tool, vis = "pub(super)")]
impl McpServer {
    #[tool(
        description = "Replay pending dead letters (the filters of list_dead_letters) to the \
error topic with attempt=0, so the retry consumer runs their stage at once. A DRY RUN unless \
confirm is true: without it nothing is published and the answer lists what would be. Confirm only \
after the operator agreed. Reports what was replayed, skipped and failed; audited with the caller.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = true
        )
    )]
    async fn replay_dead_letters(
        &self,
        Parameters(i): Parameters<ReplayDeadLettersInput>,
    ) -> Result<Json<ReplayDeadLettersOutput>, String> {
        self.ctx.replay_dead_letters(i).await.map(Json).map_err(err)
    }
}
