//! The outbox: merged events committed with their raw event and deleted once
//! the broker confirmed the publish. A row still here after a crash is
//! published again by the relay, so nothing committed is ever lost.

use std::collections::HashMap;

use sqlx::{Any, AnyConnection, QueryBuilder};

use super::{get_text, Store, StoreError};

/// A message waiting to be published.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    pub event_id: String,
    pub topic: String,
    pub ordering_key: String,
    pub payload: String,
    pub attributes: HashMap<String, String>,
}

pub async fn insert(conn: &mut AnyConnection, rows: &[OutboxRow]) -> Result<(), StoreError> {
    let size = |r: &OutboxRow| r.payload.len() + r.ordering_key.len();
    for chunk in super::ledger::statement_chunks(rows, 100, size) {
        let mut q: QueryBuilder<Any> = QueryBuilder::new(
            "INSERT INTO outbox (event_id, topic, ordering_key, payload, attributes) ",
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
                .push_bind(attrs);
        });
        q.build().execute(&mut *conn).await?;
    }
    Ok(())
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
            "SELECT event_id, topic, ordering_key, {} AS payload, {} AS attributes FROM outbox \
             WHERE created_at <= ? ORDER BY created_at LIMIT ?",
            d.text("payload"),
            d.text("attributes")
        );
        let rows = sqlx::query(&sql)
            .bind(d.ts_value(&cutoff))
            .bind(limit)
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|row| {
                let attrs = get_text(row, "attributes")?;
                Ok(OutboxRow {
                    event_id: get_text(row, "event_id")?,
                    topic: get_text(row, "topic")?,
                    ordering_key: get_text(row, "ordering_key")?,
                    payload: get_text(row, "payload")?,
                    attributes: serde_json::from_str(&attrs)
                        .map_err(|e| StoreError::Corrupt(format!("outbox attributes: {e}")))?,
                })
            })
            .collect()
    }

    pub async fn outbox_len(&self) -> Result<i64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox")
            .fetch_one(self.pool())
            .await?;
        Ok(n)
    }
}
