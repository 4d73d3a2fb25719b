//! A dead letter's status (docs/spec.md §7.1, migration 0011): `parked`
//! (open), `replayed`, `superseded` or `discarded`, with who changed it last,
//! why and when. Each change is also an audit row (stage `operator`,
//! outcome the new status) in the same transaction: the daemon derives
//! `backbone_dlq_replayed_total` from those rows, so a replay by the CLI
//! (another process) counts too.
//!
//! Also here: the last failed answer of a delivery (`delivery_failures`),
//! copied onto its dead letter when it is parked.

use chrono::Utc;
use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::ledger;
use super::target_controls::{fit_actor, operator_audit, OPERATOR_STAGE};
use super::{get_opt_text, get_text, Store, StoreError};
use crate::model::limits::truncate_bytes;

/// Where a dead letter stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DlqStatus {
    /// Open: waiting for an operator (counted by the alerts).
    Parked,
    /// Republished; reopened as `parked` if it dies again.
    Replayed,
    /// A later version of the record reached the target (actor `auto`).
    Superseded,
    /// Closed by an operator with a reason; kept, never replayed by default.
    Discarded,
}

impl DlqStatus {
    pub const ALL: [DlqStatus; 4] = [
        DlqStatus::Parked,
        DlqStatus::Replayed,
        DlqStatus::Superseded,
        DlqStatus::Discarded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DlqStatus::Parked => "parked",
            DlqStatus::Replayed => "replayed",
            DlqStatus::Superseded => "superseded",
            DlqStatus::Discarded => "discarded",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// This process, as the operator audit rows name it (`message_id`
/// `process:<n>`): the daemon counts replays other processes recorded, its
/// own ones it counted as they happened.
pub fn process_tag() -> &'static str {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| format!("process:{:016x}", rand::random::<u64>()))
}

/// The cap on a kept request body and on a kept answer body.
pub const SENT_BODY_MAX: usize = 64 * 1024;
pub const ANSWER_BODY_MAX: usize = 4 * 1024;

/// What a target answered to a failed delivery.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetAnswer {
    /// HTTP status; `None` when no answer came (refused, timed out).
    pub status: Option<u16>,
    /// The answer's body, cut to [`ANSWER_BODY_MAX`].
    pub body: Option<String>,
    /// NetSuite's error code, when the target speaks its vocabulary.
    pub netsuite_code: Option<String>,
    /// What went wrong without an answer (connection refused, timeout).
    pub error: Option<String>,
}

/// The request and answer kept with a delivery dead letter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SentAndAnswer {
    /// The body sent, as text (cut to [`SENT_BODY_MAX`]).
    pub sent_body: Option<String>,
    pub answer: Option<TargetAnswer>,
}

/// A parked delivery dead letter and where its target stands for the record.
#[derive(Debug, Clone)]
pub struct SupersedeCandidate {
    pub id: i64,
    pub attributes: String,
    pub acked_seq: i64,
    pub acked_version: i64,
}

impl Store {
    /// Moves each of `ids` whose status is one of `from` to `to`, recording
    /// `actor` and `reason` and an audit row each; returns the ids changed.
    pub async fn change_dead_letter_status(
        &self,
        ids: &[i64],
        from: &[DlqStatus],
        to: DlqStatus,
        actor: &str,
        reason: Option<&str>,
    ) -> Result<Vec<i64>, StoreError> {
        let mut changed = Vec::new();
        for id in ids {
            if self.change_one(*id, from, to, actor, reason, None).await? {
                changed.push(*id);
            }
        }
        Ok(changed)
    }

    /// One row's change; `extra_set` adds assignments (replay bookkeeping).
    pub(super) async fn change_one(
        &self,
        id: i64,
        from: &[DlqStatus],
        to: DlqStatus,
        actor: &str,
        reason: Option<&str>,
        extra_set: Option<&str>,
    ) -> Result<bool, StoreError> {
        let d = self.dialect();
        let actor = fit_actor(actor);
        let reason = reason.map(|r| truncate_bytes(r, 4096).to_string());
        let from_list = from
            .iter()
            .map(|s| format!("'{}'", s.as_str()))
            .collect::<Vec<_>>()
            .join(", ");
        let _guard = self.write_guard().await;
        let mut tx = self.pool().begin().await?;
        let n = sqlx::query(&format!(
            "UPDATE dead_letters SET status = ?, status_actor = ?, status_reason = ?, status_at = ?{} \
             WHERE id = ? AND status IN ({from_list})",
            extra_set.map(|s| format!(", {s}")).unwrap_or_default()
        ))
        .bind(to.as_str())
        .bind(actor.clone())
        .bind(reason.clone())
        .bind(d.ts_value(&Utc::now()))
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        let row = sqlx::query(
            "SELECT stage, fingerprint, record_type, record_id FROM dead_letters WHERE id = ?",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        let stage = get_text(&row, "stage")?;
        let fingerprint = get_opt_text(&row, "fingerprint")?;
        let rt = get_opt_text(&row, "record_type")?;
        let rid = get_opt_text(&row, "record_id")?;
        let record = rt.as_deref().zip(rid.as_deref());
        let mut audit = operator_audit(
            &format!("dead_letter:{id}"),
            record,
            to.as_str(),
            serde_json::json!({
                "dead_letter_id": id, "dead_letter_stage": stage,
                "actor": actor, "reason": reason,
            }),
        );
        if let Some(fp) = fingerprint.filter(|f| f.len() == 64) {
            audit.fingerprint = fp;
        }
        audit.message_id = Some(process_tag().to_string());
        audit.fit_columns();
        ledger::insert_audit(&mut tx, &[audit]).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The audit log's newest row id (its primary key: no scan).
    pub async fn audit_max_id(&self) -> Result<i64, StoreError> {
        let d = self.dialect();
        Ok(sqlx::query_scalar(&format!(
            "SELECT {} FROM event_audit_log",
            d.int("COALESCE(MAX(id), 0)")
        ))
        .fetch_one(self.pool())
        .await?)
    }

    /// Operator audit rows with outcome `replayed` after row `after_id`:
    /// (the highest such id, how many of them another process recorded).
    /// The daemon counts those into `backbone_dlq_replayed_total`, so a
    /// replay by the CLI shows on the running daemon's metric.
    pub async fn replays_recorded_after(&self, after_id: i64) -> Result<(i64, i64), StoreError> {
        let d = self.dialect();
        let row = sqlx::query(&format!(
            "SELECT {} AS max_id, {} AS n FROM event_audit_log \
             WHERE id > ? AND stage = ? AND processing_outcome = 'replayed'",
            d.int("COALESCE(MAX(id), 0)"),
            d.int("COALESCE(SUM(CASE WHEN message_id = ? THEN 0 ELSE 1 END), 0)"),
        ))
        .bind(process_tag())
        .bind(after_id)
        .bind(OPERATOR_STAGE)
        .fetch_one(self.pool())
        .await?;
        Ok((row.try_get("max_id")?, row.try_get("n")?))
    }

    /// Parked delivery dead letters whose target has acknowledged something
    /// for their record (the candidates for `superseded`), at most `limit`.
    pub async fn supersede_candidates(
        &self,
        limit: i64,
    ) -> Result<Vec<SupersedeCandidate>, StoreError> {
        let d = self.dialect();
        let rows = sqlx::query(&format!(
            "SELECT dl.id AS id, {} AS attrs, ds.acked_seq AS acked_seq, \
             ds.acked_version AS acked_version FROM dead_letters dl \
             JOIN delivery_state ds ON ds.target = SUBSTR(dl.stage, 9) \
             AND ds.record_type = dl.record_type AND ds.record_id = dl.record_id \
             WHERE dl.status = 'parked' AND dl.stage LIKE 'deliver.%' AND ds.acked_seq > 0 \
             ORDER BY dl.id LIMIT ?",
            d.text("dl.attributes")
        ))
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(SupersedeCandidate {
                    id: r.try_get("id")?,
                    attributes: get_text(r, "attrs")?,
                    acked_seq: r.try_get("acked_seq")?,
                    acked_version: r.try_get("acked_version")?,
                })
            })
            .collect()
    }

    /// Keeps the last failed request and answer of a delivery until its
    /// dead letter is parked (or the delivery succeeds later).
    pub async fn record_delivery_failure(
        &self,
        stage: &str,
        fingerprint: &str,
        sent_body: &[u8],
        answer: &TargetAnswer,
    ) -> Result<(), StoreError> {
        let d = self.dialect();
        let body = truncate_body(sent_body);
        let answer = serde_json::to_string(answer)
            .map_err(|e| StoreError::Corrupt(format!("answer: {e}")))?;
        let now = d.ts_value(&Utc::now());
        let _guard = self.write_guard().await;
        let n = sqlx::query(
            "UPDATE delivery_failures SET sent_body = ?, answer = ?, failed_at = ? \
             WHERE stage = ? AND fingerprint = ?",
        )
        .bind(body.clone())
        .bind(answer.clone())
        .bind(now.clone())
        .bind(stage)
        .bind(fingerprint)
        .execute(self.pool())
        .await?
        .rows_affected();
        if n == 0 {
            sqlx::query(&format!(
                "{} INTO delivery_failures (stage, fingerprint, sent_body, answer, failed_at) \
                 VALUES (?, ?, ?, ?, ?)",
                d.insert_ignore()
            ))
            .bind(stage)
            .bind(fingerprint)
            .bind(body)
            .bind(answer)
            .bind(now)
            .execute(self.pool())
            .await?;
        }
        Ok(())
    }

    /// Copies a delivery's last failed request and answer onto dead letter
    /// `id` and forgets them (nothing when none was kept).
    pub async fn attach_delivery_failure(
        &self,
        id: Option<i64>,
        dlq_message_id: &str,
        stage: &str,
        fingerprint: &str,
    ) -> Result<bool, StoreError> {
        let _guard = self.write_guard().await;
        let n = sqlx::query(
            "UPDATE dead_letters SET sent_body = (SELECT f.sent_body FROM delivery_failures f \
             WHERE f.stage = ? AND f.fingerprint = ?), answer = (SELECT f.answer FROM \
             delivery_failures f WHERE f.stage = ? AND f.fingerprint = ?) WHERE (id = ? OR dlq_message_id = ?) AND \
             EXISTS (SELECT 1 FROM delivery_failures f WHERE f.stage = ? AND f.fingerprint = ?)",
        )
        .bind(stage)
        .bind(fingerprint)
        .bind(stage)
        .bind(fingerprint)
        .bind(id.unwrap_or(-1))
        .bind(dlq_message_id)
        .bind(stage)
        .bind(fingerprint)
        .execute(self.pool())
        .await?
        .rows_affected();
        sqlx::query("DELETE FROM delivery_failures WHERE stage = ? AND fingerprint = ?")
            .bind(stage)
            .bind(fingerprint)
            .execute(self.pool())
            .await?;
        Ok(n >= 1)
    }

    /// The request and answer kept with dead letter `id`.
    pub async fn dead_letter_sent(&self, id: i64) -> Result<SentAndAnswer, StoreError> {
        let d = self.dialect();
        let row = sqlx::query(&format!(
            "SELECT sent_body, {} AS answer_t FROM dead_letters WHERE id = ?",
            d.text("answer")
        ))
        .bind(id)
        .fetch_optional(self.pool())
        .await?;
        let Some(row) = row else {
            return Ok(SentAndAnswer::default());
        };
        let body: Option<Vec<u8>> = row.try_get("sent_body")?;
        let answer = get_opt_text(&row, "answer_t")?
            .map(|t| serde_json::from_str(&t))
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("dead_letters.answer: {e}")))?;
        Ok(SentAndAnswer {
            sent_body: body.map(|b| String::from_utf8_lossy(&b).into_owned()),
            answer,
        })
    }

    /// Kept failures older than `older_than_secs` whose dead letter never
    /// came (the delivery succeeded later): removed by the daemon's sweep.
    pub async fn forget_old_delivery_failures(
        &self,
        older_than: chrono::Duration,
    ) -> Result<u64, StoreError> {
        let d = self.dialect();
        let _guard = self.write_guard().await;
        Ok(
            sqlx::query("DELETE FROM delivery_failures WHERE failed_at < ?")
                .bind(d.ts_value(&(Utc::now() - older_than)))
                .execute(self.pool())
                .await?
                .rows_affected(),
        )
    }
}

/// A body cut to [`SENT_BODY_MAX`] on a char boundary when it is text.
fn truncate_body(b: &[u8]) -> Vec<u8> {
    match std::str::from_utf8(b) {
        Ok(s) => truncate_bytes(s, SENT_BODY_MAX).as_bytes().to_vec(),
        Err(_) => b[..b.len().min(SENT_BODY_MAX)].to_vec(),
    }
}
