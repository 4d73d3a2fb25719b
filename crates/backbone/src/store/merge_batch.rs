//! What one merge batch reads and writes (STYLE §10: one view, one decision,
//! one write). [`read`] gathers everything the decision needs in one call —
//! claims and used ids in one statement, the records' states under a lock,
//! their unpublished outbox rows and, only for records that have some, their
//! pending events; the merge stage decides on it without touching the
//! database; [`apply`] writes the result, one multi-row statement per table.

use std::collections::{HashMap, HashSet};

use sqlx::{Any, AnyConnection, QueryBuilder};

use super::ledger::{self, AuditRow, EventRow, RecordKey, StateRow};
use super::merged::{self, MergedRow};
use super::outbox::{self, ConfirmedSet, OutboxRow};
use super::pending::{self, PendingRow};
use super::{get_text, Dialect, StoreError};

/// Rows per statement: each key binds two values, each fingerprint or id one.
const CHUNK: usize = 200;

/// Everything a batch's decision reads.
#[derive(Debug, Default, Clone)]
pub struct View {
    /// Fingerprints already claimed by the stage.
    pub claimed: HashSet<String>,
    /// Given event ids already used (stored or pending).
    pub used_ids: HashSet<String>,
    /// The records' projections (absent: a record never seen).
    pub states: HashMap<RecordKey, StateRow>,
    /// Merged events committed but not known published, by ordering key.
    pub leftovers: HashMap<String, Vec<OutboxRow>>,
    /// Stored pending events of the records that have some.
    pub pending: Vec<PendingRow>,
}

/// What the batch asks for.
#[derive(Debug, Default)]
pub struct Wanted<'a> {
    pub stage: &'a str,
    pub fingerprints: Vec<&'a str>,
    pub ids: Vec<String>,
    pub keys: Vec<RecordKey>,
}

/// Everything a batch writes, in the order [`apply`] writes it.
#[derive(Debug, Default)]
pub struct Writes {
    pub events: Vec<EventRow>,
    pub audit: Vec<AuditRow>,
    pub states: Vec<(RecordKey, StateRow)>,
    pub outbox: Vec<OutboxRow>,
    pub merged: Vec<MergedRow>,
    pub pending_new: Vec<PendingRow>,
    /// Fingerprints of stored pending events merged in this batch.
    pub pending_done: Vec<String>,
}

/// Reads the batch's view inside `tx`; the states stay locked (MySQL) until
/// it ends, so replicas serialise per record.
pub async fn read(
    conn: &mut AnyConnection,
    d: Dialect,
    want: &Wanted<'_>,
    confirmed: &ConfirmedSet,
) -> Result<View, StoreError> {
    let (claimed, used_ids) = claims_and_ids(conn, want).await?;
    let states = if want.keys.is_empty() {
        HashMap::new()
    } else {
        ledger::load_states(conn, d, &want.keys, true).await?
    };
    let leftovers = outbox::unpublished_by_key(conn, d, &want.keys, confirmed).await?;
    let with_pending: Vec<RecordKey> = want
        .keys
        .iter()
        .filter(|k| states.get(*k).is_some_and(|s| s.pending > 0))
        .cloned()
        .collect();
    let pending = if with_pending.is_empty() {
        Vec::new()
    } else {
        pending::load(conn, d, &with_pending).await?
    };
    Ok(View {
        claimed,
        used_ids,
        states,
        leftovers,
        pending,
    })
}

/// The claimed fingerprints and the used ids, in one statement per chunk
/// (one round trip for a batch of the usual size).
async fn claims_and_ids(
    conn: &mut AnyConnection,
    want: &Wanted<'_>,
) -> Result<(HashSet<String>, HashSet<String>), StoreError> {
    let mut claimed = HashSet::new();
    let mut used = HashSet::new();
    let (fps, ids) = (&want.fingerprints, &want.ids);
    let chunks = fps.len().div_ceil(CHUNK).max(ids.len().div_ceil(CHUNK));
    for c in 0..chunks {
        let (fps, ids) = (chunk(fps, c), chunk(ids, c));
        let mut q: QueryBuilder<Any> = QueryBuilder::new("");
        let mut first = true;
        let mut union = |q: &mut QueryBuilder<Any>| {
            if !std::mem::take(&mut first) {
                q.push(" UNION ALL ");
            }
        };
        if !fps.is_empty() {
            union(&mut q);
            q.push("SELECT 'c' AS k, fingerprint AS v FROM event_audit_log WHERE claim = 1 AND stage = ");
            q.push_bind(want.stage.to_string());
            q.push(" AND fingerprint IN (");
            push_list(&mut q, &fps);
        }
        if !ids.is_empty() {
            union(&mut q);
            q.push("SELECT 'i' AS k, id AS v FROM events WHERE id IN (");
            push_list(&mut q, &ids);
            q.push(
                " UNION ALL SELECT 'i' AS k, event_id AS v FROM pending_events WHERE event_id IN (",
            );
            push_list(&mut q, &ids);
        }
        for row in q.build().fetch_all(&mut *conn).await? {
            let v = get_text(&row, "v")?;
            if get_text(&row, "k")? == "c" {
                claimed.insert(v);
            } else {
                used.insert(v);
            }
        }
    }
    Ok((claimed, used))
}

/// The `c`-th chunk of `v`.
fn chunk<S: AsRef<str>>(v: &[S], c: usize) -> Vec<String> {
    v.iter()
        .skip(c * CHUNK)
        .take(CHUNK)
        .map(|s| s.as_ref().to_string())
        .collect()
}

/// Appends `?, ?, …)`.
fn push_list(q: &mut QueryBuilder<'_, Any>, values: &[String]) {
    let mut sep = q.separated(", ");
    for v in values {
        sep.push_bind(v.clone());
    }
    q.push(")");
}

/// Writes a batch's rows; the caller commits. `steps` is told after each.
pub async fn apply(
    conn: &mut AnyConnection,
    d: Dialect,
    w: &Writes,
    mut mark: impl FnMut(&'static str),
) -> Result<(), StoreError> {
    if !w.events.is_empty() {
        ledger::insert_events(conn, d, &w.events).await?;
    }
    mark("write_events");
    if !w.audit.is_empty() {
        ledger::insert_audit(conn, &w.audit).await?;
    }
    mark("write_audit");
    if !w.states.is_empty() {
        ledger::upsert_states(conn, d, &w.states).await?;
    }
    mark("write_state");
    if !w.outbox.is_empty() {
        outbox::insert(conn, &w.outbox).await?;
        mark("write_outbox");
        merged::insert(conn, &w.merged, &w.events).await?;
        mark("write_merged");
    }
    if !w.pending_new.is_empty() {
        pending::insert(conn, &w.pending_new).await?;
    }
    if !w.pending_done.is_empty() {
        pending::delete(conn, &w.pending_done).await?;
    }
    mark("write_pending");
    Ok(())
}
