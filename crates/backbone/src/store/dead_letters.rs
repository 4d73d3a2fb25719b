//! Parked dead letters (docs/spec.md §4 park/replay): idempotent parking, filtered
//! listing, and a claim → publish → mark protocol so two replays at once
//! never publish the same row twice.

use std::borrow::Cow;
use std::collections::HashMap;

use chrono::Utc;
use serde::Serialize;
use sqlx::{Any, QueryBuilder, Row};

use super::ledger::{self, AuditRow};
use super::{get_opt_text, get_text, Store, StoreError};
use crate::model::limits::{self, truncate_bytes, truncate_chars};

/// A dead letter as the park stage records it.
#[derive(Debug, Clone)]
pub struct NewDeadLetter {
    pub dlq_message_id: String,
    pub origin_message_id: Option<String>,
    pub stage: String,
    pub reason: String,
    pub attempts: i32,
    pub fingerprint: Option<String>,
    pub record_type: Option<String>,
    pub record_id: Option<String>,
    pub last_error: Option<String>,
    pub errors: Vec<String>,
    pub data: Vec<u8>,
    pub attributes: HashMap<String, String>,
    pub ordering_key: Option<String>,
    pub source_subscription: Option<String>,
    pub delivery_count: Option<i32>,
    /// Set when this is a replayed message that died again: the row to reopen.
    pub replay_of: Option<i64>,
}

impl NewDeadLetter {
    /// The fields too long for their columns: [`Store::park`] stores them
    /// cut to the column's width (on a char boundary). `data` and
    /// `attributes` always go in whole (LONGBLOB / LONGTEXT).
    pub fn oversized_fields(&self) -> Vec<&'static str> {
        Columns::of(self).truncated
    }

    /// The row to park when the full one was refused: the message's data
    /// and attributes (all a replay needs) plus why, nothing else.
    pub fn minimal(&self, why: &str) -> NewDeadLetter {
        let note = format!("parked without its details: {why}");
        NewDeadLetter {
            dlq_message_id: self.dlq_message_id.clone(),
            origin_message_id: None,
            stage: self.stage.clone(),
            reason: self.reason.clone(),
            attempts: self.attempts,
            fingerprint: self.fingerprint.clone(),
            record_type: None,
            record_id: None,
            last_error: Some(note.clone()),
            errors: vec![note],
            data: self.data.clone(),
            attributes: self.attributes.clone(),
            ordering_key: None,
            source_subscription: None,
            delivery_count: self.delivery_count,
            replay_of: self.replay_of,
        }
    }
}

/// A dead letter's column values, each cut to fit its column.
struct Columns<'a> {
    dlq_message_id: Cow<'a, str>,
    origin_message_id: Option<&'a str>,
    stage: &'a str,
    reason: &'a str,
    fingerprint: Option<&'a str>,
    record_type: Option<&'a str>,
    record_id: Option<&'a str>,
    last_error: Option<&'a str>,
    ordering_key: Option<&'a str>,
    source_subscription: Option<&'a str>,
    truncated: Vec<&'static str>,
}

impl<'a> Columns<'a> {
    fn of(dl: &'a NewDeadLetter) -> Self {
        let mut truncated = Vec::new();
        let mut fit = |name: &'static str, v: &'a str, max: usize| {
            let cut = truncate_chars(v, max);
            if cut.len() < v.len() {
                truncated.push(name);
            }
            cut
        };
        let origin_message_id = dl
            .origin_message_id
            .as_deref()
            .map(|v| fit("origin_message_id", v, limits::MESSAGE_ID_MAX));
        let stage = fit("stage", &dl.stage, limits::STAGE_MAX);
        let reason = fit("reason", &dl.reason, limits::REASON_MAX);
        let fingerprint = dl
            .fingerprint
            .as_deref()
            .map(|v| fit("fingerprint", v, limits::FINGERPRINT_LEN));
        let record_type = dl
            .record_type
            .as_deref()
            .map(|v| fit("record_type", v, limits::RECORD_TYPE_MAX));
        let record_id = dl
            .record_id
            .as_deref()
            .map(|v| fit("record_id", v, limits::RECORD_ID_MAX));
        let ordering_key = dl
            .ordering_key
            .as_deref()
            .map(|v| fit("ordering_key", v, limits::ORDERING_KEY_MAX));
        let source_subscription = dl
            .source_subscription
            .as_deref()
            .map(|v| fit("source_subscription", v, limits::SUBSCRIPTION_MAX));
        let last_error = dl.last_error.as_deref().map(|v| {
            let cut = truncate_bytes(v, limits::TEXT_MAX_BYTES);
            if cut.len() < v.len() {
                truncated.push("last_error");
            }
            cut
        });
        // The dlq message id is the idempotency key: a cut one keeps a
        // digest of the whole so two long ids never collide.
        let dlq_message_id = if dl.dlq_message_id.chars().count() <= limits::MESSAGE_ID_MAX {
            Cow::Borrowed(dl.dlq_message_id.as_str())
        } else {
            truncated.push("dlq_message_id");
            let digest = crate::model::fingerprint::sha256_hex(dl.dlq_message_id.as_bytes());
            let keep = limits::MESSAGE_ID_MAX - digest.len() - 1;
            Cow::Owned(format!(
                "{}~{digest}",
                truncate_chars(&dl.dlq_message_id, keep)
            ))
        };
        Columns {
            dlq_message_id,
            origin_message_id,
            stage,
            reason,
            fingerprint,
            record_type,
            record_id,
            last_error,
            ordering_key,
            source_subscription,
            truncated,
        }
    }
}

/// A parked row.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct DeadLetter {
    pub id: i64,
    pub dlq_message_id: String,
    pub origin_message_id: Option<String>,
    pub stage: String,
    pub reason: String,
    pub attempts: i32,
    pub fingerprint: Option<String>,
    pub record_type: Option<String>,
    pub record_id: Option<String>,
    pub last_error: Option<String>,
    pub errors: Vec<String>,
    /// Empty in a listing ([`Store::dead_letter_page`]); whole from
    /// [`Store::dead_letter`] and [`Store::dead_letters`].
    #[serde(skip)]
    pub data: Vec<u8>,
    /// The size of `data`, read by the database (listings load no data).
    #[serde(default)]
    pub data_bytes: i64,
    pub attributes: HashMap<String, String>,
    pub ordering_key: Option<String>,
    pub source_subscription: Option<String>,
    pub delivery_count: Option<i32>,
    pub parked_at: String,
    pub replay_count: i32,
    pub replayed_at: Option<String>,
    /// `parked`, `replayed`, `superseded` or `discarded` (migration 0011).
    #[serde(default = "parked")]
    pub status: String,
    /// Who changed the status last, why and when.
    #[serde(default)]
    pub status_actor: Option<String>,
    #[serde(default)]
    pub status_reason: Option<String>,
    #[serde(default)]
    pub status_at: Option<String>,
}

fn parked() -> String {
    "parked".into()
}

/// Which rows a listing or replay covers.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct DlqFilter {
    #[serde(default)]
    pub ids: Vec<i64>,
    pub stage: Option<String>,
    pub record_type: Option<String>,
    pub record_id: Option<String>,
    pub reason: Option<String>,
    /// Include rows already replayed (listing only; replay never does).
    /// Without it and without `status`, only `parked` rows are selected.
    #[serde(default)]
    pub include_replayed: bool,
    /// Only rows with this status (`parked`, `replayed`, `superseded`,
    /// `discarded`); wins over `include_replayed`.
    #[serde(default)]
    pub status: Option<String>,
    /// Only rows parked at or after / before this time (RFC 3339).
    #[serde(default)]
    pub since: Option<chrono::DateTime<Utc>>,
    #[serde(default)]
    pub until: Option<chrono::DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parked {
    /// A new row.
    Inserted,
    /// A replayed row died again and is pending once more.
    Reopened,
    /// This dlq message was parked before (redelivery).
    AlreadyParked,
}

pub(super) fn columns(store: &Store) -> String {
    columns_with(store, true)
}

/// The columns of a row; `data` only when `with_data` (its size always).
fn columns_with(store: &Store, with_data: bool) -> String {
    let d = store.dialect();
    format!(
        "id, dlq_message_id, origin_message_id, stage, reason, attempts, fingerprint, record_type, \
         record_id, {} AS last_error, {} AS errors, {}LENGTH(data) AS data_bytes, {} AS attributes, \
         ordering_key, source_subscription, delivery_count, {} AS parked, replay_count, {} AS replayed, \
         status, status_actor, {} AS status_reason_t, {} AS status_at_t",
        d.text("last_error"),
        d.text("errors"),
        if with_data { "data, " } else { "" },
        d.text("attributes"),
        d.ts("parked_at"),
        d.ts("replayed_at"),
        d.text("status_reason"),
        d.ts("status_at"),
    )
}

pub(super) fn from_row(row: &sqlx::any::AnyRow) -> Result<DeadLetter, StoreError> {
    from_row_with(row, true)
}

fn from_row_with(row: &sqlx::any::AnyRow, with_data: bool) -> Result<DeadLetter, StoreError> {
    let corrupt =
        |c: &str, e: serde_json::Error| StoreError::Corrupt(format!("dead_letters.{c}: {e}"));
    Ok(DeadLetter {
        id: row.try_get("id")?,
        dlq_message_id: get_text(row, "dlq_message_id")?,
        origin_message_id: get_opt_text(row, "origin_message_id")?,
        stage: get_text(row, "stage")?,
        reason: get_text(row, "reason")?,
        attempts: row.try_get::<i64, _>("attempts")? as i32,
        fingerprint: get_opt_text(row, "fingerprint")?,
        record_type: get_opt_text(row, "record_type")?,
        record_id: get_opt_text(row, "record_id")?,
        last_error: get_opt_text(row, "last_error")?,
        errors: serde_json::from_str(&get_text(row, "errors")?)
            .map_err(|e| corrupt("errors", e))?,
        data: if with_data {
            row.try_get("data")?
        } else {
            Vec::new()
        },
        data_bytes: row.try_get::<Option<i64>, _>("data_bytes")?.unwrap_or(0),
        attributes: serde_json::from_str(&get_text(row, "attributes")?)
            .map_err(|e| corrupt("attributes", e))?,
        ordering_key: get_opt_text(row, "ordering_key")?,
        source_subscription: get_opt_text(row, "source_subscription")?,
        delivery_count: row
            .try_get::<Option<i64>, _>("delivery_count")?
            .map(|v| v as i32),
        parked_at: get_text(row, "parked")?,
        replay_count: row.try_get::<i64, _>("replay_count")? as i32,
        replayed_at: get_opt_text(row, "replayed")?,
        status: get_text(row, "status")?,
        status_actor: get_opt_text(row, "status_actor")?,
        status_reason: get_opt_text(row, "status_reason_t")?,
        status_at: get_opt_text(row, "status_at_t")?,
    })
}

/// After this long a replay claim is considered abandoned (crashed replayer).
const CLAIM_TTL: chrono::Duration = chrono::Duration::minutes(5);

impl Store {
    /// Parks a dead letter and records the audit row, in one transaction.
    /// Values too long for their columns are stored cut to fit (see
    /// [`NewDeadLetter::oversized_fields`]); the data is kept whole.
    pub async fn park(
        &self,
        dl: &NewDeadLetter,
        mut audit: AuditRow,
    ) -> Result<Parked, StoreError> {
        let d = self.dialect();
        let c = Columns::of(dl);
        audit.fit_columns();
        let errors = serde_json::to_string(&dl.errors)
            .map_err(|e| StoreError::Corrupt(format!("errors: {e}")))?;
        let attributes = serde_json::to_string(&dl.attributes)
            .map_err(|e| StoreError::Corrupt(format!("attributes: {e}")))?;
        let _guard = self.write_guard().await;
        let mut tx = self.pool().begin().await?;
        let mut result = Parked::AlreadyParked;
        if let Some(row_id) = dl.replay_of {
            // Reopen the replayed row unless this very dlq message did it already.
            let n = sqlx::query(&format!(
                "UPDATE dead_letters SET dlq_message_id = ?, reason = ?, attempts = ?, last_error = ?, \
                 errors = ?, attributes = ?, replayed_at = NULL, replay_claimed_at = NULL, \
                 status = 'parked', status_actor = 'park', status_reason = 'failed again after a replay', \
                 status_at = {} WHERE id = ? AND dlq_message_id <> ?",
                d.now()
            ))
            .bind(c.dlq_message_id.to_string())
            .bind(c.reason.to_string())
            .bind(dl.attempts)
            .bind(c.last_error.map(str::to_string))
            .bind(errors.clone())
            .bind(attributes.clone())
            .bind(row_id)
            .bind(c.dlq_message_id.to_string())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n == 1 {
                result = Parked::Reopened;
            } else {
                let exists: Option<i64> =
                    sqlx::query_scalar("SELECT id FROM dead_letters WHERE id = ?")
                        .bind(row_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                if exists.is_none() {
                    // The row was purged: park it as new below.
                    result = Parked::Inserted;
                }
            }
        }
        if dl.replay_of.is_none() || result == Parked::Inserted {
            let n = sqlx::query(&format!(
                "{} INTO dead_letters (dlq_message_id, origin_message_id, stage, reason, attempts, \
                 fingerprint, record_type, record_id, last_error, errors, data, attributes, ordering_key, \
                 source_subscription, delivery_count) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                d.insert_ignore()
            ))
            .bind(c.dlq_message_id.to_string())
            .bind(c.origin_message_id.map(str::to_string))
            .bind(c.stage.to_string())
            .bind(c.reason.to_string())
            .bind(dl.attempts)
            .bind(c.fingerprint.map(str::to_string))
            .bind(c.record_type.map(str::to_string))
            .bind(c.record_id.map(str::to_string))
            .bind(c.last_error.map(str::to_string))
            .bind(errors)
            .bind(dl.data.clone())
            .bind(attributes)
            .bind(c.ordering_key.map(str::to_string))
            .bind(c.source_subscription.map(str::to_string))
            .bind(dl.delivery_count)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            result = if n == 1 {
                Parked::Inserted
            } else {
                Parked::AlreadyParked
            };
        }
        if result != Parked::AlreadyParked {
            ledger::insert_audit(&mut tx, &[audit]).await?;
        }
        tx.commit().await?;
        Ok(result)
    }

    /// The first `limit` rows `f` selects, each with its data: for tests
    /// and small sets. Listings and replays page with
    /// [`Store::dead_letter_page`], which loads no data.
    pub async fn dead_letters(
        &self,
        f: &DlqFilter,
        limit: i64,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        self.select_dead_letters(f, None, limit, true).await
    }

    /// One page of the rows `f` selects, in id order after `after_id`,
    /// without their data (`data` empty, `data_bytes` its size): a listing
    /// of 10,000 parked 1 MB messages reads their details, not 10 GB.
    pub async fn dead_letter_page(
        &self,
        f: &DlqFilter,
        after_id: Option<i64>,
        limit: i64,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        self.select_dead_letters(f, after_id, limit, false).await
    }

    async fn select_dead_letters(
        &self,
        f: &DlqFilter,
        after_id: Option<i64>,
        limit: i64,
        with_data: bool,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let mut q: QueryBuilder<Any> = QueryBuilder::new(format!(
            "SELECT {} FROM dead_letters WHERE 1 = 1",
            columns_with(self, with_data)
        ));
        if let Some(after) = after_id {
            q.push(" AND id > ");
            q.push_bind(after);
        }
        if let Some(status) = &f.status {
            q.push(" AND status = ");
            q.push_bind(status.clone());
        } else if !f.include_replayed {
            q.push(" AND status = 'parked'");
        }
        let d = self.dialect();
        if let Some(t) = &f.since {
            q.push(" AND parked_at >= ");
            q.push_bind(d.ts_value(t));
        }
        if let Some(t) = &f.until {
            q.push(" AND parked_at < ");
            q.push_bind(d.ts_value(t));
        }
        if !f.ids.is_empty() {
            q.push(" AND id IN (");
            let mut sep = q.separated(", ");
            for id in &f.ids {
                sep.push_bind(*id);
            }
            q.push(")");
        }
        for (col, v) in [
            ("stage", &f.stage),
            ("record_type", &f.record_type),
            ("record_id", &f.record_id),
            ("reason", &f.reason),
        ] {
            if let Some(v) = v {
                q.push(format!(" AND {col} = "));
                q.push_bind(v.clone());
            }
        }
        q.push(" ORDER BY id LIMIT ");
        q.push_bind(limit);
        let rows = q.build().fetch_all(self.pool()).await?;
        rows.iter().map(|r| from_row_with(r, with_data)).collect()
    }

    pub async fn dead_letter(&self, id: i64) -> Result<Option<DeadLetter>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {} FROM dead_letters WHERE id = ?",
            columns(self)
        ))
        .bind(id)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// Claims a pending row for replay; false if it is replayed or claimed.
    pub async fn claim_replay(&self, id: i64) -> Result<bool, StoreError> {
        let d = self.dialect();
        let now = Utc::now();
        let _guard = self.write_guard().await;
        let n = sqlx::query(
            "UPDATE dead_letters SET replay_claimed_at = ? WHERE id = ? AND replayed_at IS NULL \
             AND status = 'parked' AND (replay_claimed_at IS NULL OR replay_claimed_at < ?)",
        )
        .bind(d.ts_value(&now))
        .bind(id)
        .bind(d.ts_value(&(now - CLAIM_TTL)))
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Marks a claimed row replayed (its publish succeeded) by `actor`,
    /// with its audit row (which the daemon's replay counter reads).
    pub async fn mark_replayed(&self, id: i64, actor: &str) -> Result<(), StoreError> {
        let set = format!(
            "replayed_at = {}, replay_claimed_at = NULL, replay_count = replay_count + 1",
            self.dialect().now()
        );
        self.change_one(
            id,
            &[super::dlq_status::DlqStatus::Parked],
            super::dlq_status::DlqStatus::Replayed,
            actor,
            None,
            Some(&set),
        )
        .await?;
        Ok(())
    }

    /// Gives a claim back after a failed publish.
    pub async fn release_replay(&self, id: i64) -> Result<(), StoreError> {
        let _guard = self.write_guard().await;
        sqlx::query("UPDATE dead_letters SET replay_claimed_at = NULL WHERE id = ?")
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Rows with status `parked` (the `dead_letters_parked` gauge and its
    /// alert): discarded, superseded and replayed rows are not counted.
    pub async fn pending_dead_letters(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM dead_letters WHERE status = 'parked'")
                .fetch_one(self.pool())
                .await?,
        )
    }
}
