//! The MCP server: each tool is a thin wrapper over a [`Ctx`] method, its
//! input schema derived from the argument type and its output schema from
//! the result type (rmcp's `#[tool]`). Write tools are removed from the
//! router unless their switch is on, so a model never sees them; a call to
//! one anyway gets a tool error naming the switch.

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::ToolCallContext;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{tool, tool_handler, tool_router, ErrorData, Json, RoleServer, ServerHandler};

use super::status::PipelineStatusOutput;
use super::tools::*;
use super::Ctx;

/// The write tools and the switch each needs.
pub const WRITE_TOOLS: [(&str, &str); 6] = [
    ("replay_dead_letters", "mcp.allow_replay"),
    ("emit_event", "mcp.allow_emit"),
    ("discard_dead_letters", "mcp.allow_discard"),
    ("pause_target", "mcp.allow_pause"),
    ("resume_target", "mcp.allow_pause"),
    ("resync_records", "mcp.allow_resync"),
];

const INSTRUCTIONS: &str = "event-backbone's event store: the immutable events of every record \
(record_type + record_id, e.g. project/42) synced between SuiteX and NetSuite, their audit trail, \
the merge rules' decisions, deliveries to both targets, and the dead-letter queue. \
Start with list_event_types to learn the record types, fields and outcome names; \
query_events for a record's history (newest first, paged); replay_events for its state at a \
sequence number; explain_field for why a field holds its value and whether each target has it; \
list_dead_letters / show_dead_letter / preview_dead_letters for the DLQ; list_targets for \
paused targets; pipeline_status for readiness, held messages, \
gaps and targets. Write tools, when this server offers them, act on production data: \
replay_dead_letters only replays with confirm: true (ask the operator first), emit_event \
publishes a raw event.";

#[derive(Clone)]
pub struct McpServer {
    pub(super) ctx: Ctx,
    tool_router: ToolRouter<Self>,
}

fn err(e: ToolError) -> String {
    e.to_string()
}

#[tool_router]
impl McpServer {
    pub fn new(ctx: Ctx) -> Self {
        let mut tool_router = Self::tool_router() + Self::ops_tool_router();
        if !ctx.settings.mcp.allow_discard {
            tool_router.remove_route("discard_dead_letters");
        }
        if !ctx.settings.mcp.allow_pause {
            tool_router.remove_route("pause_target");
            tool_router.remove_route("resume_target");
        }
        if !ctx.settings.mcp.allow_resync {
            tool_router.remove_route("resync_records");
        }
        if !ctx.settings.mcp.allow_replay {
            tool_router.remove_route("replay_dead_letters");
        }
        if !ctx.settings.mcp.allow_emit {
            tool_router.remove_route("emit_event");
        }
        Self { ctx, tool_router }
    }

    /// The tools this server lists (the write ones only when switched on).
    pub fn tool_names(&self) -> Vec<String> {
        self.tool_router
            .list_all()
            .into_iter()
            .map(|t| t.name.to_string())
            .collect()
    }

    #[tool(
        description = "A record's events, newest first, each with its fingerprint and audit trail \
(stage, outcome, attempt, detail). Filters: source, outcome (an audit outcome at any stage, see \
list_event_types), since/until (RFC 3339, on the event's timestamp), keyword (text in the changes). \
Paged by limit (default 100, max 1000) and offset; returns total_count and has_more. \
An unknown record is a 'not found' error.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn query_events(
        &self,
        Parameters(i): Parameters<QueryEventsInput>,
    ) -> Result<Json<QueryEventsOutput>, String> {
        self.ctx.query_events(i).await.map(Json).map_err(err)
    }

    #[tool(
        description = "Rebuild a record's merged state by folding its stored events through the \
live merge rules, up to to_sequence_num (or the latest event): field values, each field's \
provenance (version, source, timestamp of its last change), the version, events_replayed and duration_ms.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn replay_events(
        &self,
        Parameters(i): Parameters<ReplayEventsInput>,
    ) -> Result<Json<ReplayEventsOutput>, String> {
        self.ctx.replay_events(i).await.map(Json).map_err(err)
    }

    #[tool(
        description = "Why a record's field holds its value (what `event-backbone explain` \
answers): the event that set it, every conflict on it (winner, loser, rule and why), and per \
target (netsuite, suitex) whether that value was delivered, is retrying or was dead-lettered. \
Omit field for every field. Unknown record or field is a 'not found' error listing the fields.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn explain_field(
        &self,
        Parameters(i): Parameters<ExplainFieldInput>,
    ) -> Result<Json<ExplainFieldOutput>, String> {
        self.ctx.explain_field(i).await.map(Json).map_err(err)
    }

    #[tool(
        description = "The record types the store holds, with record and event counts per \
source and the fields seen in their merged state (a sample of up to 500 records per type); and the \
vocabulary: the audit outcomes and dead-letter reasons the daemon writes, each with one line on \
what it means. Counts scan the tables: call it once per conversation, not per question.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn list_event_types(&self) -> Result<Json<ListEventTypesOutput>, String> {
        self.ctx.list_event_types().await.map(Json).map_err(err)
    }

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

    #[tool(
        description = "The pipeline now: readiness (database, Pub/Sub, each consumer, messages \
held for an outage), pending events and open gaps, parked dead letters by stage and reason, and \
each target's state (configured, consumer up, recent delivery outcomes, last delivery and failure).",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn pipeline_status(&self) -> Result<Json<PipelineStatusOutput>, String> {
        self.ctx.pipeline_status().await.map(Json).map_err(err)
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for McpServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(
                "event-backbone",
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions(INSTRUCTIONS)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        // A switched-off write tool: say which switch, rather than the
        // protocol's bare "unknown tool".
        if let Some((name, key)) = WRITE_TOOLS
            .iter()
            .find(|(n, _)| *n == request.name && !self.tool_router.has_route(n))
        {
            tracing::warn!(
                tool = name,
                caller = self.ctx.transport.caller(),
                "A disabled MCP write tool was called."
            );
            return Ok(CallToolResult::error(vec![ContentBlock::text(format!(
                "disabled: {name} is off on this server (set {key} = true in its configuration)"
            ))])
            .into());
        }
        let tcc = ToolCallContext::new(self, request, context);
        self.tool_router.call(tcc).await
    }
}
