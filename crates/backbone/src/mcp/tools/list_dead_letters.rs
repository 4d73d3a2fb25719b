//! `list_dead_letters`: parked dead letters, oldest first, under the
//! filters of `dlq list`; and the row summary `show_dead_letter` extends.

use rmcp::handler::server::wrapper::Parameters;
use rmcp::{tool, tool_router, Json};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::args::DlqFilters;
use super::error::ToolError;
use super::{err, McpServer};
use crate::mcp::Ctx;
use crate::store::dead_letters::DeadLetter;

/// Dead letters per listing when the caller does not say, and at most.
pub const DEFAULT_DLQ_LIMIT: u32 = 100;
pub const MAX_DLQ_LIMIT: u32 = 1000;

#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct ListDeadLettersInput {
    #[serde(flatten)]
    pub filters: DlqFilters,
    /// Include rows already replayed (default: pending ones only).
    #[serde(default)]
    pub include_replayed: bool,
    /// Rows at most, 1-1000 (default 100), oldest first.
    #[serde(default)]
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct DeadLetterOut {
    pub id: i64,
    pub stage: String,
    pub reason: String,
    pub attempts: i32,
    pub record_type: Option<String>,
    pub record_id: Option<String>,
    pub fingerprint: Option<String>,
    pub last_error: Option<String>,
    pub parked_at: String,
    pub replay_count: i32,
    /// Null while pending.
    pub replayed_at: Option<String>,
    pub source_subscription: Option<String>,
}

impl From<&DeadLetter> for DeadLetterOut {
    fn from(d: &DeadLetter) -> Self {
        DeadLetterOut {
            id: d.id,
            stage: d.stage.clone(),
            reason: d.reason.clone(),
            attempts: d.attempts,
            record_type: d.record_type.clone(),
            record_id: d.record_id.clone(),
            fingerprint: d.fingerprint.clone(),
            last_error: d.last_error.clone(),
            parked_at: d.parked_at.clone(),
            replay_count: d.replay_count,
            replayed_at: d.replayed_at.clone(),
            source_subscription: d.source_subscription.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ListDeadLettersOutput {
    /// Parked and not replayed, whatever the filters.
    pub pending_total: i64,
    pub count: usize,
    pub dead_letters: Vec<DeadLetterOut>,
}

impl Ctx {
    pub async fn list_dead_letters(
        &self,
        i: ListDeadLettersInput,
    ) -> Result<ListDeadLettersOutput, ToolError> {
        let limit = i.limit.unwrap_or(DEFAULT_DLQ_LIMIT);
        if !(1..=MAX_DLQ_LIMIT).contains(&limit) {
            return Err(ToolError::Invalid(format!(
                "limit must be between 1 and {MAX_DLQ_LIMIT}, got {limit}"
            )));
        }
        let f = i.filters.filter(i.include_replayed)?;
        let rows = self
            .store
            .timed(self.store.dead_letter_page(&f, None, i64::from(limit)))
            .await?;
        let pending_total = self.store.timed(self.store.pending_dead_letters()).await?;
        let dead_letters: Vec<DeadLetterOut> = rows.iter().map(DeadLetterOut::from).collect();
        Ok(ListDeadLettersOutput {
            pending_total,
            count: dead_letters.len(),
            dead_letters,
        })
    }
}

#[tool_router(router = list_dead_letters_tool, vis = "pub(super)")]
impl McpServer {
    #[tool(
        description = "Parked dead letters, oldest first: pending ones (not yet replayed) unless \
include_replayed. Filters as `event-backbone dlq list`: ids, stage, record_type, record_id, reason; \
limit default 100, max 1000. pending_total counts every pending row.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn list_dead_letters(
        &self,
        Parameters(i): Parameters<ListDeadLettersInput>,
    ) -> Result<Json<ListDeadLettersOutput>, String> {
        self.ctx.list_dead_letters(i).await.map(Json).map_err(err)
    }
}
