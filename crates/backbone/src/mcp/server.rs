//! The MCP server: its instructions, and the router of the tools of
//! [`super::tools`] (one file each, its input schema derived from the
//! argument type and its output schema from the result type by rmcp's
//! `#[tool]`). Write tools are removed from the router unless their switch
//! is on, so a model never sees them; a call to one anyway gets a tool error
//! naming the switch.

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::ToolCallContext;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{tool_handler, ErrorData, RoleServer, ServerHandler};

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

impl McpServer {
    pub fn new(ctx: Ctx) -> Self {
        let mut tool_router = Self::all_tools();
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
