//! The database ceiling `bench merge` measures the merge stage against: the
//! rows one merge run wrote (event, audit, projection, outbox, merged event),
//! read back and written again into an empty store with the same multi-row
//! inserts, in the same transaction sizes and with as many concurrent
//! writers, but with none of the stage's reads, locks or merge logic. The
//! stage's figure over this one is its overhead over the database itself.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::Row;
use tokio::sync::Mutex;

use backbone::store::ledger::{self, AuditRow, EventRow, RecordKey, StateRow};
use backbone::store::merged::{self, MergedRow};
use backbone::store::outbox::{self, OutboxRow};
use backbone::store::{get_opt_text, get_text, parse_ts, Store, StoreError};

/// What a merge run wrote for the records whose id starts with a prefix.
#[derive(Debug, Default, Clone)]
pub struct RunRows {
    pub events: Vec<EventRow>,
    pub audit: Vec<AuditRow>,
    pub states: HashMap<RecordKey, StateRow>,
    pub outbox: Vec<OutboxRow>,
    pub merged: Vec<MergedRow>,
}

/// Reads back everything a run wrote for records `record_id LIKE prefix%`,
/// events in the order they were written (sequence per record).
pub async fn read_run(store: &Store, prefix: &str) -> Result<RunRows, StoreError> {
    let d = store.dialect();
    let like = format!("{prefix}%");
    let mut out = RunRows::default();
    let sql = format!(
        "SELECT id, record_type, record_id, source, {} AS ts, base_version, {} AS changes, \
         full_snapshot_ref, sequence_num FROM events WHERE record_id LIKE ? \
         ORDER BY created_at, record_type, record_id, sequence_num",
        d.ts("`timestamp`"),
        d.text("changes")
    );
    for row in sqlx::query(&sql)
        .bind(like.clone())
        .fetch_all(store.pool())
        .await?
    {
        out.events.push(EventRow {
            id: get_text(&row, "id")?,
            record_type: get_text(&row, "record_type")?,
            record_id: get_text(&row, "record_id")?,
            source: get_text(&row, "source")?,
            timestamp: parse_ts(&get_text(&row, "ts")?)?,
            base_version: row.try_get("base_version")?,
            changes: get_text(&row, "changes")?,
            full_snapshot_ref: get_opt_text(&row, "full_snapshot_ref")?,
            processed: false,
            sequence_num: row.try_get("sequence_num")?,
        });
    }
    let sql = format!(
        "SELECT event_id, fingerprint, record_type, record_id, stage, processing_outcome, \
         {} AS detail, message_id, attempt, {} AS claim FROM event_audit_log \
         WHERE record_id LIKE ? ORDER BY id",
        d.text("detail"),
        d.int("claim")
    );
    for row in sqlx::query(&sql)
        .bind(like.clone())
        .fetch_all(store.pool())
        .await?
    {
        let claim: Option<i64> = row.try_get("claim")?;
        out.audit.push(AuditRow {
            event_id: get_opt_text(&row, "event_id")?,
            fingerprint: get_text(&row, "fingerprint")?,
            record_type: get_opt_text(&row, "record_type")?,
            record_id: get_opt_text(&row, "record_id")?,
            stage: get_text(&row, "stage")?,
            outcome: get_text(&row, "processing_outcome")?,
            detail: get_opt_text(&row, "detail")?,
            message_id: get_opt_text(&row, "message_id")?,
            attempt: row.try_get::<i32, _>("attempt")?,
            claim: claim.is_some(),
        });
    }
    let keys: Vec<RecordKey> = {
        let mut k: Vec<RecordKey> = out
            .events
            .iter()
            .map(|e| (e.record_type.clone(), e.record_id.clone()))
            .collect();
        k.sort();
        k.dedup();
        k
    };
    let mut conn = store.pool().acquire().await?;
    out.states = ledger::load_states(&mut conn, d, &keys, false).await?;
    drop(conn);
    let sql = format!(
        "{} WHERE m.record_id LIKE ? ORDER BY m.record_type, m.record_id, m.sequence_num",
        merged::select_sql(d)
    );
    for row in sqlx::query(&sql)
        .bind(like.clone())
        .fetch_all(store.pool())
        .await?
    {
        out.merged.push(merged::from_row(&row)?);
    }
    // The outbox row of a merged event carries the same payload; the run's
    // own rows are deleted once published, so they are rebuilt here.
    out.outbox = out
        .merged
        .iter()
        .map(|m| OutboxRow {
            event_id: m.event_id.clone(),
            topic: format!("projects/bench-proj/topics/events.merged.{}", m.record_type),
            ordering_key: backbone::model::raw_event::ordering_key(&m.record_type, &m.record_id),
            payload: m.payload.clone(),
            attributes: HashMap::from([
                ("sequence_num".to_string(), m.sequence_num.to_string()),
                ("fingerprint".to_string(), "0".repeat(64)),
            ]),
            sequence_num: m.sequence_num,
        })
        .collect();
    Ok(out)
}

/// One transaction's share of a run.
#[derive(Default)]
struct TxRows {
    events: Vec<EventRow>,
    audit: Vec<AuditRow>,
    states: Vec<(RecordKey, StateRow)>,
    outbox: Vec<OutboxRow>,
    merged: Vec<MergedRow>,
}

/// Writes `rows` into `store` (empty of them) in transactions of about
/// `per_tx` events each, from `writers` concurrent writers; returns the
/// wall time. Each transaction carries its events' audit, outbox and merged
/// rows and one projection upsert per record it touches, as the stage does.
pub async fn write_run(
    store: &Store,
    rows: RunRows,
    per_tx: usize,
    writers: usize,
) -> Result<Duration, StoreError> {
    let per_tx = per_tx.max(1);
    let mut audit_by_event: HashMap<String, Vec<AuditRow>> = HashMap::new();
    for a in rows.audit {
        audit_by_event
            .entry(a.event_id.clone().unwrap_or_default())
            .or_default()
            .push(a);
    }
    let mut outbox_by_event: HashMap<String, OutboxRow> = rows
        .outbox
        .into_iter()
        .map(|o| (o.event_id.clone(), o))
        .collect();
    let mut merged_by_event: HashMap<String, MergedRow> = rows
        .merged
        .into_iter()
        .map(|m| (m.event_id.clone(), m))
        .collect();
    let mut txs = Vec::new();
    for chunk in rows.events.chunks(per_tx) {
        let mut t = TxRows::default();
        let mut keys: Vec<RecordKey> = Vec::new();
        for e in chunk {
            t.audit
                .extend(audit_by_event.remove(&e.id).unwrap_or_default());
            t.outbox.extend(outbox_by_event.remove(&e.id));
            t.merged.extend(merged_by_event.remove(&e.id));
            keys.push((e.record_type.clone(), e.record_id.clone()));
            t.events.push(e.clone());
        }
        keys.sort();
        keys.dedup();
        for k in keys {
            if let Some(s) = rows.states.get(&k) {
                t.states.push((k, s.clone()));
            }
        }
        txs.push(t);
    }
    let queue = Arc::new(Mutex::new(txs.into_iter()));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..writers.max(1) {
        let store = store.clone();
        let queue = queue.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let Some(t) = queue.lock().await.next() else {
                    return Ok::<_, StoreError>(());
                };
                write_tx(&store, &t).await?;
            }
        }));
    }
    for t in tasks {
        t.await
            .map_err(|e| StoreError::Corrupt(format!("ceiling writer died: {e}")))??;
    }
    Ok(started.elapsed())
}

async fn write_tx(store: &Store, t: &TxRows) -> Result<(), StoreError> {
    let d = store.dialect();
    let _guard = store.write_guard().await;
    let mut tx = store.pool().begin().await?;
    ledger::insert_events(&mut tx, d, &t.events).await?;
    if !t.audit.is_empty() {
        ledger::insert_audit(&mut tx, &t.audit).await?;
    }
    if !t.states.is_empty() {
        ledger::upsert_states(&mut tx, d, &t.states).await?;
    }
    if !t.outbox.is_empty() {
        outbox::insert(&mut tx, &t.outbox).await?;
    }
    if !t.merged.is_empty() {
        merged::insert(&mut tx, &t.merged, &t.events).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Empties the outbox (a bench's rows are never published).
pub async fn clear_outbox(store: &Store) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM outbox")
        .execute(store.pool())
        .await?;
    Ok(())
}

/// How many events a run stored for records `record_id LIKE prefix%`.
pub async fn events_with_prefix(store: &Store, prefix: &str) -> Result<i64, StoreError> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE record_id LIKE ?")
        .bind(format!("{prefix}%"))
        .fetch_one(store.pool())
        .await?;
    Ok(n)
}
