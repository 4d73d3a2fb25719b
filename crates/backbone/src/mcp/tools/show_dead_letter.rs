//! `show_dead_letter`: one dead letter in full, its data as text, JSON or hex.

use std::collections::BTreeMap;

use rmcp::handler::server::wrapper::Parameters;
use rmcp::{tool, tool_router, Json};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::ToolError;
use super::list_dead_letters::DeadLetterOut;
use super::{err, McpServer};
use crate::mcp::Ctx;

#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct ShowDeadLetterInput {
    /// The row id (list_dead_letters' `id`).
    pub id: i64,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ShowDeadLetterOutput {
    #[serde(flatten)]
    pub summary: DeadLetterOut,
    /// Every error recorded, oldest first.
    pub errors: Vec<String>,
    pub attributes: BTreeMap<String, String>,
    pub ordering_key: Option<String>,
    pub dlq_message_id: String,
    pub origin_message_id: Option<String>,
    /// The message data as text (null when it is not UTF-8: see data_hex).
    pub data: Option<String>,
    /// The data parsed, when it is JSON.
    pub data_json: Option<Value>,
    pub data_hex: Option<String>,
}

impl Ctx {
    pub async fn show_dead_letter(
        &self,
        i: ShowDeadLetterInput,
    ) -> Result<ShowDeadLetterOutput, ToolError> {
        let Some(d) = self.store.timed(self.store.dead_letter(i.id)).await? else {
            return Err(ToolError::NotFound(format!(
                "no dead letter with id {} (list_dead_letters shows the ids)",
                i.id
            )));
        };
        let text = std::str::from_utf8(&d.data).ok().map(str::to_owned);
        Ok(ShowDeadLetterOutput {
            summary: DeadLetterOut::from(&d),
            errors: d.errors.clone(),
            attributes: d.attributes.clone().into_iter().collect(),
            ordering_key: d.ordering_key.clone(),
            dlq_message_id: d.dlq_message_id.clone(),
            origin_message_id: d.origin_message_id.clone(),
            data_json: text.as_deref().and_then(|t| serde_json::from_str(t).ok()),
            data_hex: text.is_none().then(|| hex::encode(&d.data)),
            data: text,
        })
    }
}

#[tool_router(router = show_dead_letter_tool, vis = "pub(super)")]
impl McpServer {
    #[tool(
        description = "One dead letter in full: its errors oldest first, attributes, ordering \
key, message ids and the message data (text, parsed JSON, or hex).",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn show_dead_letter(
        &self,
        Parameters(i): Parameters<ShowDeadLetterInput>,
    ) -> Result<Json<ShowDeadLetterOutput>, String> {
        self.ctx.show_dead_letter(i).await.map(Json).map_err(err)
    }
}
