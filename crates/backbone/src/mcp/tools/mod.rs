//! The MCP tools, one file each: the tool's input and output types (each
//! derives its JSON Schema), its logic, and its `#[tool]` wrapper with the
//! description a model reads. The event-store tools keep their logic in
//! plain async methods of [`super::Ctx`], which the bench also calls
//! in-process, failing with a [`ToolError`] a model can act on; the operator
//! controls of docs/spec.md §7.1 call `crate::ops` as the CLI and the admin
//! API do (actor `mcp/stdio` or `mcp/http`). `pipeline_status` gathers its
//! answer in [`super::status`].
//!
//! This file registers every tool (`McpServer::all_tools`); the argument
//! shapes several tools share are in `args`.

mod args;
mod discard_dead_letters;
mod emit_event;
mod error;
mod explain_field;
mod list_dead_letters;
mod list_event_types;
mod list_targets;
mod pause_target;
mod pipeline_status;
mod preview_dead_letters;
mod query_events;
mod replay_dead_letters;
mod replay_events;
mod resume_target;
mod resync_records;
mod show_dead_letter;

use rmcp::handler::server::router::tool::ToolRouter;

pub use self::args::{DlqFilters, ReasonArg, RecordRef, SourceArg, StageArg};
pub use self::discard_dead_letters::DiscardDeadLettersInput;
pub use self::emit_event::{EmitEventInput, EmitEventOutput};
pub use self::error::ToolError;
pub use self::explain_field::{ExplainFieldInput, ExplainFieldOutput};
pub use self::list_dead_letters::{
    DeadLetterOut, ListDeadLettersInput, ListDeadLettersOutput, DEFAULT_DLQ_LIMIT, MAX_DLQ_LIMIT,
};
pub use self::list_event_types::{FieldSeen, ListEventTypesOutput, RecordTypeOut, FIELD_SAMPLE};
pub use self::list_targets::{ListTargetsOutput, TargetOutput};
pub use self::pause_target::PauseTargetInput;
pub use self::preview_dead_letters::PreviewDeadLettersInput;
pub use self::query_events::{
    AuditOut, EventOut, QueryEventsInput, QueryEventsOutput, DEFAULT_LIMIT, MAX_LIMIT,
};
pub use self::replay_dead_letters::{
    ReplayDeadLettersInput, ReplayDeadLettersOutput, ReplayFailure,
};
pub use self::replay_events::{ReplayEventsInput, ReplayEventsOutput};
pub use self::resync_records::{ResyncRecordsInput, ResyncRecordsOutput};
pub use self::show_dead_letter::{ShowDeadLetterInput, ShowDeadLetterOutput};
use super::server::McpServer;
use crate::ops::Actor;

/// The audit stage of writes made through MCP.
pub const AUDIT_STAGE: &str = "mcp";

impl McpServer {
    /// Every tool, the write ones included: [`McpServer::new`] removes those
    /// whose switch is off.
    pub(super) fn all_tools() -> ToolRouter<Self> {
        Self::query_events_tool()
            + Self::replay_events_tool()
            + Self::explain_field_tool()
            + Self::list_event_types_tool()
            + Self::list_dead_letters_tool()
            + Self::show_dead_letter_tool()
            + Self::replay_dead_letters_tool()
            + Self::emit_event_tool()
            + Self::pipeline_status_tool()
            + Self::preview_dead_letters_tool()
            + Self::list_targets_tool()
            + Self::discard_dead_letters_tool()
            + Self::pause_target_tool()
            + Self::resume_target_tool()
            + Self::resync_records_tool()
    }

    /// Who the operator controls record as having acted.
    fn actor(&self) -> Actor {
        Actor(self.ctx.transport.caller().to_string())
    }
}

/// A tool's error as the text the model reads.
fn err(e: ToolError) -> String {
    e.to_string()
}
