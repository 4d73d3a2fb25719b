//! `target_controls` (docs/spec.md §7.1, migration 0011): targets paused by
//! hand. Every replica reads the table every few seconds and holds a paused
//! target's deliveries; a restart keeps the pause. Each change also writes
//! an audit row (stage `operator`, outcome `paused` / `resumed`).

use chrono::Utc;
use serde::Serialize;

use super::ledger::{self, AuditRow};
use super::{get_opt_text, get_text, Store, StoreError};
use crate::model::fingerprint::sha256_hex;
use crate::model::limits::truncate_chars;

/// The audit log's stage for operator actions.
pub const OPERATOR_STAGE: &str = "operator";

/// One target's control row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetControl {
    pub target: String,
    pub paused: bool,
    /// Who paused or resumed it last (`cli:<user>`, `admin-api`, `mcp`, `console`).
    pub actor: Option<String>,
    pub reason: Option<String>,
    /// RFC 3339, microseconds.
    pub changed_at: Option<String>,
}

/// An audit row about an operator action on something that is not an event.
pub(crate) fn operator_audit(
    subject: &str,
    record: Option<(&str, &str)>,
    outcome: &str,
    detail: serde_json::Value,
) -> AuditRow {
    AuditRow {
        event_id: None,
        fingerprint: sha256_hex(subject.as_bytes()),
        record_type: record.map(|r| r.0.to_string()),
        record_id: record.map(|r| r.1.to_string()),
        stage: OPERATOR_STAGE.into(),
        outcome: outcome.into(),
        detail: Some(detail.to_string()),
        message_id: None,
        attempt: 0,
        claim: false,
    }
}

/// Actors and reasons are cut to fit their columns.
pub(crate) fn fit_actor(actor: &str) -> String {
    truncate_chars(actor, 128).to_string()
}

impl Store {
    /// Pauses (`paused`) or resumes `target`, recording who and why, with an
    /// audit row, in one transaction.
    pub async fn set_target_paused(
        &self,
        target: &str,
        paused: bool,
        actor: &str,
        reason: Option<&str>,
    ) -> Result<TargetControl, StoreError> {
        let d = self.dialect();
        let actor = fit_actor(actor);
        let now = d.ts_value(&Utc::now());
        let _guard = self.write_guard().await;
        let mut tx = self.pool().begin().await?;
        let n = sqlx::query(
            "UPDATE target_controls SET paused = ?, actor = ?, reason = ?, changed_at = ? \
             WHERE target = ?",
        )
        .bind(i64::from(paused))
        .bind(actor.clone())
        .bind(reason.map(str::to_string))
        .bind(now.clone())
        .bind(target)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            sqlx::query(
                "INSERT INTO target_controls (target, paused, actor, reason, changed_at) \
                 VALUES (?, ?, ?, ?, ?)",
            )
            .bind(target)
            .bind(i64::from(paused))
            .bind(actor.clone())
            .bind(reason.map(str::to_string))
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        let outcome = if paused { "paused" } else { "resumed" };
        let mut audit = operator_audit(
            &format!("target:{target}"),
            None,
            outcome,
            serde_json::json!({"target": target, "actor": actor, "reason": reason}),
        );
        audit.fit_columns();
        ledger::insert_audit(&mut tx, &[audit]).await?;
        tx.commit().await?;
        drop(_guard);
        Ok(self.target_control(target).await?.unwrap_or(TargetControl {
            target: target.to_string(),
            paused,
            actor: Some(actor),
            reason: reason.map(str::to_string),
            changed_at: None,
        }))
    }

    /// Every target ever paused or resumed, by name.
    pub async fn target_controls(&self) -> Result<Vec<TargetControl>, StoreError> {
        let d = self.dialect();
        let rows = sqlx::query(&format!(
            "SELECT target, {} AS paused_i, actor, {} AS reason, {} AS changed FROM target_controls \
             ORDER BY target",
            d.int("paused"),
            d.text("reason"),
            d.ts("changed_at"),
        ))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                use sqlx::Row;
                Ok(TargetControl {
                    target: get_text(r, "target")?,
                    paused: r.try_get::<i64, _>("paused_i")? != 0,
                    actor: get_opt_text(r, "actor")?,
                    reason: get_opt_text(r, "reason")?,
                    changed_at: get_opt_text(r, "changed")?,
                })
            })
            .collect()
    }

    /// A record's live merged state (`None`: no such record).
    pub async fn current_state(
        &self,
        record_type: &str,
        record_id: &str,
    ) -> Result<Option<crate::model::rules::RecordState>, StoreError> {
        let mut conn = self.pool().acquire().await?;
        let row =
            super::ledger::record_state(&mut conn, self.dialect(), record_type, record_id).await?;
        Ok(row.map(|r| r.state))
    }

    /// Records a resync in the audit log (stage `operator`, outcome `resynced`).
    pub async fn audit_resync(
        &self,
        target: &str,
        record: (&str, &str),
        version: i64,
        actor: &str,
        status: Option<u16>,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut audit = operator_audit(
            &format!("resync:{target}:{}:{}:{version}", record.0, record.1),
            Some(record),
            if error.is_none() {
                "resynced"
            } else {
                "resync_failed"
            },
            serde_json::json!({"target": target, "version": version, "actor": fit_actor(actor),
                               "status": status, "error": error}),
        );
        audit.fit_columns();
        let _guard = self.write_guard().await;
        let mut conn = self.pool().acquire().await?;
        ledger::insert_audit(&mut conn, &[audit]).await
    }

    pub async fn target_control(&self, target: &str) -> Result<Option<TargetControl>, StoreError> {
        Ok(self
            .target_controls()
            .await?
            .into_iter()
            .find(|c| c.target == target))
    }
}
