//! Group commit for the delivery stages' bookkeeping.
//!
//! Every delivery wrote its rows on its own: the attempted position before
//! the POST, then the audit claim with the acknowledged position, each a
//! commit, hundreds of lanes at once through one pool. Here a worker takes
//! what its lanes submitted within one commit's time, writes it in one
//! transaction (one multi-row insert per table) and answers each submitter
//! after the commit, so each write is as durable as before when its caller
//! goes on. Records are sharded over the workers, so two transactions never
//! update the same `delivery_state` row at once.
//!
//! The read before each delivery (was the fingerprint delivered, where does
//! the target stand for the record) is batched the same way: one query for
//! what the lanes asked while the previous one ran.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use sqlx::{Any, AnyConnection, QueryBuilder};
use tokio::sync::{mpsc, oneshot};

use super::delivery::DeliveryState;
use super::delivery_lease::{self, Claim, Lease};
use super::ledger::{self, AuditRow};
use super::{get_text, Backend, Store, StoreError};

/// Most writes one transaction carries.
const BATCH_MAX: usize = 256;

/// A target's place in one record's history to raise (never lowered).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PositionRow {
    pub target: String,
    pub record_type: String,
    pub record_id: String,
    /// The merged event's `sequence_num`.
    pub seq: i64,
    pub version: i64,
    /// Acknowledged (2xx) as well as attempted.
    pub acked: bool,
}

/// One write of a delivery.
#[derive(Debug, Clone)]
pub enum DeliveryWrite {
    /// An audit row that claims nothing (superseded, skipped, a failure…).
    Audit(AuditRow),
    /// Raises a position: attempted, and acknowledged too with `acked` (a
    /// skipped merged event: the target is up to date through it).
    Position(PositionRow),
    /// The target acknowledged: the audit claim and the acknowledged
    /// position, committed together (a claim another replica won fails both).
    Done(AuditRow, Option<PositionRow>),
    /// Gives the (target, record) delivery lease back.
    Release(Lease),
    /// Takes the lease and raises the attempted position, if the target
    /// still stands where the delivery planned (see [`Claim`]); its answer
    /// says whether it did.
    Claim(Claim),
}

/// What a delivery hands a writer: a write, and the lease to release in the
/// same transaction (docs/spec.md §4.2: released with its bookkeeping).
#[derive(Debug, Clone)]
struct Submission {
    write: DeliveryWrite,
    release: Option<Lease>,
}

impl DeliveryWrite {
    fn record(&self) -> (&str, &str) {
        fn of_audit(a: &AuditRow) -> (&str, &str) {
            (
                a.record_type.as_deref().unwrap_or_default(),
                a.record_id.as_deref().unwrap_or(a.fingerprint.as_str()),
            )
        }
        match self {
            DeliveryWrite::Audit(a) | DeliveryWrite::Done(a, None) => of_audit(a),
            DeliveryWrite::Position(p) | DeliveryWrite::Done(_, Some(p)) => {
                (p.record_type.as_str(), p.record_id.as_str())
            }
            DeliveryWrite::Release(l) | DeliveryWrite::Claim(Claim { lease: l, .. }) => {
                (l.record_type.as_str(), l.record_id.as_str())
            }
        }
    }
}

/// Where a worker answers one request.
type Reply<R> = oneshot::Sender<Result<R, Arc<StoreError>>>;
/// A worker's queue of requests.
type Inbox<T, R> = mpsc::Sender<(T, Reply<R>)>;

/// A delivery's question before it runs: its merged event's fingerprint and record.
#[derive(Debug, Clone)]
pub struct ViewKey {
    pub fingerprint: String,
    pub record_type: String,
    pub record_id: String,
}

/// Whether the stage claimed the fingerprint (delivered before), and where
/// the target stands for the record.
pub type View = (bool, DeliveryState);

/// Handle to one target's writers and readers; cheap to clone. Workers stop
/// when every handle is dropped.
#[derive(Clone)]
pub struct DeliveryLog {
    senders: Arc<Vec<Inbox<Submission, bool>>>,
    readers: Arc<Vec<Inbox<ViewKey, View>>>,
}

impl DeliveryLog {
    /// Starts `workers` writers and as many readers (at least one each) on
    /// the current runtime, for the delivery stage `stage` to `target`.
    pub fn start(store: Store, workers: usize, stage: &str, target: &str) -> Self {
        // SQLite has one writer anyway: more workers would only queue on it.
        let workers = match store.backend() {
            Backend::Sqlite => 1,
            Backend::Mysql => workers.max(1),
        };
        let senders = (0..workers)
            .map(|_| {
                let (tx, rx) = mpsc::channel(BATCH_MAX * 2);
                tokio::spawn(worker(store.clone(), rx));
                tx
            })
            .collect();
        let who = Arc::new((stage.to_string(), target.to_string()));
        let readers = (0..workers)
            .map(|_| {
                let (tx, rx) = mpsc::channel(BATCH_MAX * 2);
                tokio::spawn(reader(store.clone(), who.clone(), rx));
                tx
            })
            .collect();
        Self {
            senders: Arc::new(senders),
            readers: Arc::new(readers),
        }
    }

    /// Reads what a delivery needs before it runs (see [`View`]).
    pub async fn view(&self, key: ViewKey) -> Result<View, Arc<StoreError>> {
        let record = (key.record_type.clone(), key.record_id.clone());
        ask(&self.readers, &record, key).await
    }

    /// Writes `w` and returns once it is committed.
    pub async fn write(&self, w: DeliveryWrite) -> Result<(), Arc<StoreError>> {
        self.submit(Submission {
            write: w,
            release: None,
        })
        .await
        .map(|_| ())
    }

    /// Makes `c` with the next group commit: `Ok(true)` once the lease is
    /// held and the attempted position durable, `Ok(false)` if the target
    /// moved on or another replica holds the lease.
    pub async fn claim(&self, c: Claim) -> Result<bool, Arc<StoreError>> {
        self.submit(Submission {
            write: DeliveryWrite::Claim(c),
            release: None,
        })
        .await
    }

    /// Writes `w` and releases `lease` in the same transaction.
    pub async fn write_releasing(
        &self,
        w: DeliveryWrite,
        lease: Lease,
    ) -> Result<(), Arc<StoreError>> {
        self.submit(Submission {
            write: w,
            release: Some(lease),
        })
        .await
        .map(|_| ())
    }

    async fn submit(&self, s: Submission) -> Result<bool, Arc<StoreError>> {
        let (t, id) = s.write.record();
        let record = (t.to_string(), id.to_string());
        ask(&self.senders, &record, s).await
    }
}

/// Hands `item` to the worker that owns `record` and waits for its answer.
async fn ask<T, R>(
    workers: &[Inbox<T, R>],
    record: &(String, String),
    item: T,
) -> Result<R, Arc<StoreError>> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    record.hash(&mut h);
    let shard = (h.finish() % workers.len() as u64) as usize;
    let closed = || Arc::new(StoreError::Sqlx(sqlx::Error::PoolClosed));
    let (reply, rx) = oneshot::channel();
    workers[shard]
        .send((item, reply))
        .await
        .map_err(|_| closed())?;
    rx.await.map_err(|_| closed())?
}

async fn worker(store: Store, mut rx: mpsc::Receiver<(Submission, Reply<bool>)>) {
    let mut batch = Vec::with_capacity(BATCH_MAX);
    // No linger: what queued while the last commit ran is the batch.
    while rx.recv_many(&mut batch, BATCH_MAX).await > 0 {
        let batch = std::mem::take(&mut batch);
        let writes: Vec<Submission> = batch.iter().map(|(w, _)| w.clone()).collect();
        match write_retrying(&store, &writes).await {
            Ok(answers) => {
                for ((_, reply), ok) in batch.into_iter().zip(answers) {
                    let _ = reply.send(Ok(ok));
                }
            }
            // One write refused (a claim another replica won, a value the
            // database rejects) must not fail the others: each on its own.
            Err(e) if batch.len() > 1 && !e.is_unavailable() => {
                for (w, reply) in batch {
                    let one = store
                        .timed(write_batch(&store, std::slice::from_ref(&w)))
                        .await
                        .map(|a| a.first().copied().unwrap_or(true))
                        .map_err(Arc::new);
                    let _ = reply.send(one);
                }
            }
            Err(e) => {
                let e = Arc::new(e);
                for (_, reply) in batch {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

async fn reader(
    store: Store,
    who: Arc<(String, String)>,
    mut rx: mpsc::Receiver<(ViewKey, Reply<View>)>,
) {
    let mut batch = Vec::with_capacity(BATCH_MAX);
    while rx.recv_many(&mut batch, BATCH_MAX).await > 0 {
        let batch = std::mem::take(&mut batch);
        let keys: Vec<&ViewKey> = batch.iter().map(|(k, _)| k).collect();
        match store.timed(read_views(&store, &who.0, &who.1, &keys)).await {
            Ok(views) => {
                for ((k, reply), _) in batch.into_iter().zip(0..) {
                    let v = views
                        .get(&(
                            k.fingerprint.clone(),
                            k.record_type.clone(),
                            k.record_id.clone(),
                        ))
                        .copied()
                        .unwrap_or_default();
                    let _ = reply.send(Ok(v));
                }
            }
            Err(e) => {
                let e = Arc::new(e);
                for (_, reply) in batch {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// One query per 200 keys: a derived list of (fingerprint, record) joined to
/// `delivery_state` by primary key, with the claim looked up by its unique key.
async fn read_views(
    store: &Store,
    stage: &str,
    target: &str,
    keys: &[&ViewKey],
) -> Result<BTreeMap<(String, String, String), View>, StoreError> {
    let mut out = BTreeMap::new();
    let mut conn = store.pool().acquire().await?;
    for chunk in keys.chunks(200) {
        let mut q: QueryBuilder<Any> = QueryBuilder::new(
            "SELECT k.f AS fingerprint, k.t AS record_type, k.i AS record_id, \
             (SELECT COUNT(*) FROM event_audit_log a WHERE a.fingerprint = k.f \
             AND a.stage = ",
        );
        q.push_bind(stage.to_string());
        q.push(
            " AND a.claim = 1) AS claimed, d.acked_seq, d.acked_version, d.attempted_seq FROM (",
        );
        for (i, k) in chunk.iter().enumerate() {
            q.push(if i == 0 {
                "SELECT "
            } else {
                " UNION ALL SELECT "
            });
            q.push_bind(k.fingerprint.clone());
            q.push(" AS f, ");
            q.push_bind(k.record_type.clone());
            q.push(" AS t, ");
            q.push_bind(k.record_id.clone());
            q.push(" AS i");
        }
        q.push(") k LEFT JOIN delivery_state d ON d.target = ");
        q.push_bind(target.to_string());
        q.push(" AND d.record_type = k.t AND d.record_id = k.i");
        for row in q.build().fetch_all(&mut *conn).await? {
            let key = (
                get_text(&row, "fingerprint")?,
                get_text(&row, "record_type")?,
                get_text(&row, "record_id")?,
            );
            let claimed: i64 = sqlx::Row::try_get(&row, "claimed")?;
            let num = |c: &str| -> Result<i64, StoreError> {
                Ok(sqlx::Row::try_get::<Option<i64>, _>(&row, c)?.unwrap_or(0))
            };
            let state = DeliveryState {
                acked: num("acked_seq")?,
                acked_version: num("acked_version")?,
                attempted: num("attempted_seq")?,
            };
            out.insert(key, (claimed > 0, state));
        }
    }
    Ok(out)
}

/// [`write_batch`], again on a deadlock or lock timeout.
async fn write_retrying(store: &Store, writes: &[Submission]) -> Result<Vec<bool>, StoreError> {
    let attempt = || async { store.timed(write_batch(store, writes)).await };
    attempt
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(10))
                .with_max_delay(Duration::from_millis(200))
                .with_max_times(3)
                .with_jitter(),
        )
        // A claim someone else holds will not go away: the batch is split.
        .when(|e: &StoreError| e.is_contention() && !e.is_unique_violation())
        .await
}

/// Writes a batch in one transaction: every audit row in one insert, the
/// positions folded per record (highest attempted, highest acknowledged),
/// the releases, then each claim; answers each submission (a claim may say
/// no, every other write says yes).
async fn write_batch(store: &Store, submissions: &[Submission]) -> Result<Vec<bool>, StoreError> {
    let mut audits: Vec<AuditRow> = Vec::new();
    let mut releases: Vec<&Lease> = Vec::new();
    let mut claims: Vec<(usize, &Claim)> = Vec::new();
    // (target, type, id) → (acked seq, its version, attempted seq); a
    // BTreeMap so every transaction locks rows in the same order.
    let mut positions: BTreeMap<(String, String, String), (i64, i64, i64)> = BTreeMap::new();
    let mut raise = |p: &PositionRow| {
        let e = positions
            .entry((p.target.clone(), p.record_type.clone(), p.record_id.clone()))
            .or_insert((0, 0, 0));
        if p.acked && p.seq > e.0 {
            e.0 = p.seq;
            e.1 = p.version;
        }
        e.2 = e.2.max(p.seq);
    };
    for (i, sub) in submissions.iter().enumerate() {
        match &sub.write {
            DeliveryWrite::Audit(a) => audits.push(a.clone()),
            DeliveryWrite::Position(p) => raise(p),
            DeliveryWrite::Done(a, p) => {
                audits.push(a.clone());
                if let Some(p) = p {
                    raise(p);
                }
            }
            DeliveryWrite::Release(l) => releases.push(l),
            DeliveryWrite::Claim(c) => claims.push((i, c)),
        }
        releases.extend(sub.release.as_ref());
    }
    let _guard = store.write_guard().await;
    let mut tx = store.pool().begin().await?;
    if !audits.is_empty() {
        ledger::insert_audit(&mut tx, &audits).await?;
    }
    if !positions.is_empty() {
        let rows: Vec<_> = positions.into_iter().collect();
        for chunk in rows.chunks(200) {
            upsert_positions(&mut tx, store.backend(), chunk).await?;
        }
    }
    for chunk in releases.chunks(100) {
        release_leases(&mut tx, chunk).await?;
    }
    let mut answers = vec![true; submissions.len()];
    // In record order, as the positions above, so two transactions lock
    // rows in the same order.
    claims.sort_by(|a, b| {
        let key = |c: &Claim| (c.lease.record_type.clone(), c.lease.record_id.clone());
        key(a.1).cmp(&key(b.1))
    });
    let (index, list): (Vec<usize>, Vec<&Claim>) = claims.into_iter().unzip();
    let got = delivery_lease::claim_all(&mut tx, store.backend(), &list).await?;
    for (i, ok) in index.into_iter().zip(got) {
        answers[i] = ok;
    }
    tx.commit().await?;
    Ok(answers)
}

type PositionEntry = ((String, String, String), (i64, i64, i64));

/// Raises positions; never lowers one (the same rule as
/// [`Store::delivery_advance`]).
async fn upsert_positions(
    conn: &mut AnyConnection,
    backend: Backend,
    rows: &[PositionEntry],
) -> Result<(), StoreError> {
    let mut q: QueryBuilder<Any> = QueryBuilder::new(
        "INSERT INTO delivery_state (target, record_type, record_id, acked_seq, \
         acked_version, attempted_seq) ",
    );
    q.push_values(rows, |mut b, ((t, rt, id), (acked, version, attempted))| {
        b.push_bind(t.clone())
            .push_bind(rt.clone())
            .push_bind(id.clone())
            .push_bind(*acked)
            .push_bind(*version)
            .push_bind(*attempted);
    });
    q.push(match backend {
        Backend::Mysql => {
            " ON DUPLICATE KEY UPDATE \
             acked_version = IF(VALUES(acked_seq) > acked_seq, VALUES(acked_version), acked_version), \
             acked_seq = GREATEST(acked_seq, VALUES(acked_seq)), \
             attempted_seq = GREATEST(attempted_seq, VALUES(attempted_seq))"
        }
        Backend::Sqlite => {
            " ON CONFLICT (target, record_type, record_id) DO UPDATE SET \
             acked_version = CASE WHEN excluded.acked_seq > acked_seq \
               THEN excluded.acked_version ELSE acked_version END, \
             acked_seq = MAX(acked_seq, excluded.acked_seq), \
             attempted_seq = MAX(attempted_seq, excluded.attempted_seq), \
             updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
        }
    });
    q.build().execute(&mut *conn).await?;
    Ok(())
}

/// Releases leases this process holds: one statement per chunk (a lease
/// another replica took over after ours expired is left alone).
async fn release_leases(conn: &mut AnyConnection, leases: &[&Lease]) -> Result<(), StoreError> {
    let mut q: QueryBuilder<Any> = QueryBuilder::new(
        "UPDATE delivery_state SET lease_holder = NULL, lease_until = NULL WHERE ",
    );
    for (i, l) in leases.iter().enumerate() {
        if i > 0 {
            q.push(" OR ");
        }
        q.push("(target = ");
        q.push_bind(l.target.clone());
        q.push(" AND record_type = ");
        q.push_bind(l.record_type.clone());
        q.push(" AND record_id = ");
        q.push_bind(l.record_id.clone());
        q.push(" AND lease_holder = ");
        q.push_bind(l.holder);
        q.push(")");
    }
    q.build().execute(conn).await?;
    Ok(())
}
