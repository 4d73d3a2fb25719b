//! Recent activity for the operator console: the newest audit rows, read
//! as a backwards walk of the primary key over a bounded window (cheap at
//! any table size), so the overview and a target's last answers never scan
//! the ledger.

use sqlx::Row;

use super::{get_opt_text, get_text, Store, StoreError};

/// One audit row, as the console lists it.
#[derive(Debug, Clone)]
pub struct Activity {
    pub id: i64,
    pub stage: String,
    pub outcome: String,
    pub record_type: Option<String>,
    pub record_id: Option<String>,
    /// JSON text (a delivery's status, a failure's error).
    pub detail: Option<String>,
    pub at: String,
}

impl Store {
    /// The rows among the newest `window` audit rows whose stage starts
    /// with `stage_prefix` (all with `""`), newest first, at most `limit`.
    pub async fn recent_activity(
        &self,
        stage_prefix: &str,
        window: i64,
        limit: i64,
    ) -> Result<Vec<Activity>, StoreError> {
        let d = self.dialect();
        let sql = format!(
            "SELECT id, stage, processing_outcome, record_type, record_id, {} AS detail, {} AS at \
             FROM (SELECT id, stage, processing_outcome, record_type, record_id, detail, created_at \
             FROM event_audit_log ORDER BY id DESC LIMIT ?) t \
             WHERE SUBSTR(stage, 1, ?) = ? ORDER BY id DESC LIMIT ?",
            d.text("detail"),
            d.ts("created_at")
        );
        let rows = sqlx::query(&sql)
            .bind(window)
            .bind(stage_prefix.chars().count() as i64)
            .bind(stage_prefix.to_string())
            .bind(limit)
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Activity {
                    id: r.try_get("id")?,
                    stage: get_text(r, "stage")?,
                    outcome: get_text(r, "processing_outcome")?,
                    record_type: get_opt_text(r, "record_type")?,
                    record_id: get_opt_text(r, "record_id")?,
                    detail: get_opt_text(r, "detail")?,
                    at: get_text(r, "at")?,
                })
            })
            .collect()
    }
}
