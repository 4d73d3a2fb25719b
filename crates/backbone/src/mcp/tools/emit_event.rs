//! `emit_event` (write, `mcp.allow_emit`): validate a raw event and publish
//! it to the raw topic, as a source would.

use bytes::Bytes;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::{tool, tool_router, Json};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::error::ToolError;
use super::{err, McpServer, AUDIT_STAGE};
use crate::mcp::Ctx;
use crate::model::fingerprint::fingerprint;
use crate::model::raw_event::parse_raw_event;
use crate::store::ledger::AuditRow;
use crate::topology::TopicKind;

#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct EmitEventInput {
    /// The raw event of docs/spec.md §3.1: {"record_type", "record_id", "source"
    /// ("suitex" | "netsuite"), "timestamp" (RFC 3339), "base_version"
    /// (the merged version the source last saw), "changes" (field → value),
    /// optional "id" (UUID) and "full_snapshot_ref"}.
    pub event: Value,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct EmitEventOutput {
    /// The broker's message id.
    pub message_id: String,
    pub topic: String,
    /// `{record_type}:{record_id}`.
    pub ordering_key: String,
    /// docs/spec.md §3.2 fingerprint of the event (over the changes as given).
    pub fingerprint: String,
    /// query_events on this record shows it once merged.
    pub record_type: String,
    pub record_id: String,
}

impl Ctx {
    pub async fn emit_event(&self, i: EmitEventInput) -> Result<EmitEventOutput, ToolError> {
        if !self.settings.mcp.allow_emit {
            return Err(ToolError::Disabled(
                "emit_event is off on this server (set mcp.allow_emit = true)".into(),
            ));
        }
        let data =
            serde_json::to_vec(&i.event).map_err(|e| ToolError::Invalid(format!("event: {e}")))?;
        let ev = parse_raw_event(&data).map_err(|e| ToolError::Invalid(e.to_string()))?;
        let ordering_key = ev.ordering_key();
        let fp = fingerprint(&ev, &ev.changes);
        let publishers = self.publishers().await?;
        let message_id = publishers
            .publish_to(
                TopicKind::Raw,
                Bytes::from(data),
                Default::default(),
                &ordering_key,
            )
            .await
            .map_err(|e| ToolError::Failed(e.to_string()))?;
        let caller = self.transport.caller();
        tracing::info!(
            caller,
            message_id = %message_id,
            ordering_key = %ordering_key,
            fingerprint = %fp,
            "A raw event was published through MCP."
        );
        let row = AuditRow {
            event_id: None,
            fingerprint: fp.clone(),
            record_type: Some(ev.record_type.clone()),
            record_id: Some(ev.record_id.clone()),
            stage: AUDIT_STAGE.into(),
            outcome: "emitted".into(),
            detail: Some(json!({"caller": caller, "topic": TopicKind::Raw.as_str()}).to_string()),
            message_id: Some(message_id.clone()),
            attempt: 0,
            claim: false,
        };
        if let Err(e) = self.store.record_audit(row).await {
            tracing::warn!(error = %e, message_id = %message_id, "The audit row of an MCP emit could not be written.");
        }
        Ok(EmitEventOutput {
            message_id,
            topic: self.settings.topology().topic_id(TopicKind::Raw),
            ordering_key,
            fingerprint: fp,
            record_type: ev.record_type,
            record_id: ev.record_id,
        })
    }
}

#[tool_router(router = emit_event_tool, vis = "pub(super)")]
impl McpServer {
    #[tool(
        description = "Publish a raw event (docs/spec.md §3.1) to events.raw.{env} with the ordering key \
{record_type}:{record_id}; it is validated first (an invalid event is an error naming the field, \
nothing is sent). The daemon then merges it like any source's event. Audited with the caller.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = true
        )
    )]
    async fn emit_event(
        &self,
        Parameters(i): Parameters<EmitEventInput>,
    ) -> Result<Json<EmitEventOutput>, String> {
        self.ctx.emit_event(i).await.map(Json).map_err(err)
    }
}
