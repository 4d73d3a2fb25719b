//! The outbox: merged events committed with their raw event and deleted once
//! the broker confirmed the publish. A row still here after a crash is
//! published again by the relay, so nothing committed is ever lost.

use std::collections::HashMap;

use sqlx::{Any, AnyConnection, QueryBuilder, Row};

use super::{get_text, Store, StoreError};

/// A message waiting to be published.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    pub event_id: String,
    pub topic: String,
    pub ordering_key: String,
    pub payload: String,
    pub attributes: HashMap<String, String>,
    /// Its position in the record's history (the producing event's
    /// `sequence_num`): orders a record's merged events, versions can repeat.
    pub sequence_num: i64,
}

/// Ids of outbox rows whose publish the broker confirmed and whose delete
/// has not committed yet: the merge path must not publish them again as
/// leftovers. Shared by the merge engine and the outbox completer.
#[derive(Debug, Clone, Default)]
pub struct ConfirmedSet(std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>);

impl ConfirmedSet {
    pub fn insert(&self, id: String) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(id);
    }
    pub fn remove_all(&self, ids: &[String]) {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for id in ids {
            s.remove(id);
        }
    }
    pub fn contains(&self, id: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id)
    }
}

pub async fn insert(conn: &mut AnyConnection, rows: &[OutboxRow]) -> Result<(), StoreError> {
    let size = |r: &OutboxRow| r.payload.len() + r.ordering_key.len();
    for chunk in super::ledger::statement_chunks(rows, 100, size) {
        let mut q: QueryBuilder<Any> = QueryBuilder::new(
            "INSERT INTO outbox (event_id, topic, ordering_key, payload, attributes, sequence_num) ",
        );
        let mut encoded = Vec::with_capacity(chunk.len());
        for r in chunk {
            encoded.push(
                serde_json::to_string(&r.attributes)
                    .map_err(|e| StoreError::Corrupt(format!("outbox attributes: {e}")))?,
            );
        }
        q.push_values(chunk.iter().zip(encoded), |mut b, (r, attrs)| {
            b.push_bind(r.event_id.clone())
                .push_bind(r.topic.clone())
                .push_bind(r.ordering_key.clone())
                .push_bind(r.payload.clone())
                .push_bind(attrs)
                .push_bind(r.sequence_num);
        });
        q.build().execute(&mut *conn).await?;
    }
    Ok(())
}

fn from_row(row: &sqlx::any::AnyRow) -> Result<OutboxRow, StoreError> {
    let attrs = get_text(row, "attributes")?;
    Ok(OutboxRow {
        event_id: get_text(row, "event_id")?,
        topic: get_text(row, "topic")?,
        ordering_key: get_text(row, "ordering_key")?,
        payload: get_text(row, "payload")?,
        attributes: serde_json::from_str(&attrs)
            .map_err(|e| StoreError::Corrupt(format!("outbox attributes: {e}")))?,
        sequence_num: row.try_get("sequence_num")?,
    })
}

/// The (event id, ordering key, sequence_num) of every outbox row of `keys`:
/// merged events committed but not (known to be) published yet.
pub async fn unpublished(
    conn: &mut AnyConnection,
    keys: &[String],
) -> Result<Vec<(String, String, i64)>, StoreError> {
    let mut out = Vec::new();
    for chunk in keys.chunks(400) {
        let mut q: QueryBuilder<Any> = QueryBuilder::new(
            "SELECT event_id, ordering_key, sequence_num FROM outbox WHERE ordering_key IN (",
        );
        let mut sep = q.separated(", ");
        for k in chunk {
            sep.push_bind(k.clone());
        }
        q.push(")");
        for row in q.build().fetch_all(&mut *conn).await? {
            out.push((
                get_text(&row, "event_id")?,
                get_text(&row, "ordering_key")?,
                row.try_get("sequence_num")?,
            ));
        }
    }
    Ok(out)
}

/// Whole outbox rows by event id.
pub async fn rows(
    conn: &mut AnyConnection,
    d: super::Dialect,
    event_ids: &[String],
) -> Result<Vec<OutboxRow>, StoreError> {
    let mut out = Vec::new();
    for chunk in event_ids.chunks(400) {
        let mut q: QueryBuilder<Any> = QueryBuilder::new(format!(
            "SELECT event_id, topic, ordering_key, {} AS payload, {} AS attributes, sequence_num \
             FROM outbox WHERE event_id IN (",
            d.text("payload"),
            d.text("attributes")
        ));
        let mut sep = q.separated(", ");
        for id in chunk {
            sep.push_bind(id.clone());
        }
        q.push(")");
        for row in q.build().fetch_all(&mut *conn).await? {
            out.push(from_row(&row)?);
        }
    }
    Ok(out)
}

impl Store {
    /// Forgets rows whose publish the broker confirmed.
    pub async fn outbox_delete(&self, event_ids: &[String]) -> Result<(), StoreError> {
        for chunk in event_ids.chunks(400) {
            let _guard = self.write_guard().await;
            let mut q: QueryBuilder<Any> =
                QueryBuilder::new("DELETE FROM outbox WHERE event_id IN (");
            let mut sep = q.separated(", ");
            for id in chunk {
                sep.push_bind(id.clone());
            }
            q.push(")");
            q.build().execute(self.pool()).await?;
        }
        Ok(())
    }

    /// Rows older than `min_age` (the live path publishes within
    /// milliseconds, so these are left over from a crash or a failed publish).
    pub async fn outbox_stale(
        &self,
        min_age: std::time::Duration,
        limit: i64,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        let d = self.dialect();
        let cutoff = chrono::Utc::now()
            - chrono::Duration::from_std(min_age).unwrap_or(chrono::Duration::zero());
        let sql = format!(
            "SELECT event_id, topic, ordering_key, {} AS payload, {} AS attributes, sequence_num \
             FROM outbox WHERE created_at <= ? ORDER BY created_at, sequence_num LIMIT ?",
            d.text("payload"),
            d.text("attributes")
        );
        let rows = sqlx::query(&sql)
            .bind(d.ts_value(&cutoff))
            .bind(limit)
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(from_row).collect()
    }

    pub async fn outbox_len(&self) -> Result<i64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox")
            .fetch_one(self.pool())
            .await?;
        Ok(n)
    }
}

/// Unpublished outbox rows of `keys` by ordering key, in version order,
/// leaving out those this process already saw confirmed.
pub async fn unpublished_by_key(
    conn: &mut AnyConnection,
    d: super::Dialect,
    keys: &[super::ledger::RecordKey],
    confirmed: &ConfirmedSet,
) -> Result<HashMap<String, Vec<OutboxRow>>, StoreError> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let okeys: Vec<String> = keys
        .iter()
        .map(|(t, id)| crate::model::raw_event::ordering_key(t, id))
        .collect();
    let ids: Vec<String> = unpublished(conn, &okeys)
        .await?
        .into_iter()
        .filter(|(id, _, _)| !confirmed.contains(id))
        .map(|(id, _, _)| id)
        .collect();
    let mut by_key: HashMap<String, Vec<OutboxRow>> = HashMap::new();
    if ids.is_empty() {
        return Ok(by_key);
    }
    for row in rows(conn, d, &ids).await? {
        by_key
            .entry(row.ordering_key.clone())
            .or_default()
            .push(row);
    }
    for rows in by_key.values_mut() {
        rows.sort_by_key(|r| r.sequence_num);
    }
    Ok(by_key)
}
