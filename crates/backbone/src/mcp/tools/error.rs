//! The error of the event-store tools (the [`super::Ctx`] methods), and how
//! the errors of the modules they call become it.

use crate::explain::ExplainError;
use crate::history::HistoryError;
use crate::store::StoreError;

/// A failure the caller can act on; shown to the model as the tool's error text.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The record, field or dead letter does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// An argument is wrong; the message names it and what is allowed.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// The tool is switched off in this server's configuration.
    #[error("disabled: {0}")]
    Disabled(String),
    /// The stored history cannot be folded, or the broker refused.
    #[error("failed: {0}")]
    Failed(String),
    /// The database did not answer; try again.
    #[error("unavailable: the event store did not answer ({0}); try again")]
    Unavailable(String),
}

impl From<StoreError> for ToolError {
    fn from(e: StoreError) -> Self {
        tracing::warn!(error = %e, "An MCP tool's database read failed.");
        ToolError::Unavailable(e.to_string())
    }
}

impl From<HistoryError> for ToolError {
    fn from(e: HistoryError) -> Self {
        match e {
            HistoryError::Store(s) => s.into(),
            HistoryError::BadLimit(_) => ToolError::Invalid(e.to_string()),
            // Archived (docs/spec.md §6.1): the message names the segment and `archive restore`.
            HistoryError::Replay { .. } | HistoryError::Archived { .. } => {
                ToolError::Failed(e.to_string())
            }
        }
    }
}

impl From<ExplainError> for ToolError {
    fn from(e: ExplainError) -> Self {
        match e {
            ExplainError::UnknownRecord { .. } | ExplainError::UnknownField { .. } => {
                ToolError::NotFound(e.to_string())
            }
            ExplainError::Replay(h) => h.into(),
            ExplainError::Store(s) => s.into(),
        }
    }
}
