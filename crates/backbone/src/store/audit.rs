//! The audit log as read back (history, explain): one row type and the
//! columns it is read from, shared so the two readers cannot drift.

use serde::Serialize;
use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{get_opt_text, get_text, Dialect, StoreError};

/// One `event_audit_log` row.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AuditFact {
    pub id: i64,
    pub event_id: Option<String>,
    pub fingerprint: String,
    pub stage: String,
    pub outcome: String,
    pub detail: Option<Value>,
    pub message_id: Option<String>,
    pub attempt: i64,
    /// RFC 3339, microseconds.
    pub created_at: String,
    /// This row is a (fingerprint, stage) claim.
    #[serde(skip)]
    pub claim: bool,
}

/// The columns of `event_audit_log` in the shape [`AuditFact::from_row`] reads.
pub(crate) fn audit_columns(d: Dialect) -> String {
    format!(
        "id, event_id, fingerprint, stage, processing_outcome, {} AS detail, message_id, \
         {} AS attempt_i, {} AS claim_i, {} AS created",
        d.text("detail"),
        d.int("attempt"),
        d.int("claim"),
        d.ts("created_at")
    )
}

impl AuditFact {
    pub(crate) fn from_row(row: &AnyRow) -> Result<Self, StoreError> {
        let detail = get_opt_text(row, "detail")?
            .map(|t| serde_json::from_str(&t))
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("event_audit_log.detail: {e}")))?;
        Ok(AuditFact {
            id: row.try_get("id")?,
            event_id: get_opt_text(row, "event_id")?,
            fingerprint: get_text(row, "fingerprint")?,
            stage: get_text(row, "stage")?,
            outcome: get_text(row, "processing_outcome")?,
            detail,
            message_id: get_opt_text(row, "message_id")?,
            attempt: row.try_get("attempt_i")?,
            created_at: get_text(row, "created")?,
            claim: row.try_get::<Option<i64>, _>("claim_i")?.unwrap_or(0) != 0,
        })
    }
}
