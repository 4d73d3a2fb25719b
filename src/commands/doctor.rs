//! `event-backbone doctor`: live checks of everything the daemon needs, with
//! the configured credentials — one line per check, exit 1 if any fails.
//! Nothing it does leaves a trace in the ledger: the database probes are
//! rolled back, the Pub/Sub probe subscription is deleted, and the probe
//! message is acked unrecorded by the merge stage.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use google_cloud_pubsub::model::{ExpirationPolicy, Subscription};
use serde_json::json;

use crate::config::Settings;
use crate::pubsub::clients::{self, Endpoint};
use crate::pubsub::provision::{differences, is_not_found};
use crate::pubsub::publisher::Publishers;
use crate::stages::merge::PROBE_ATTRIBUTE;
use crate::store::{schema, Backend, Store};
use crate::topology::{ConsumerKind, TopicKind, Topology};

/// Longest any single check may take, so doctor never hangs on a dead peer.
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the probe message may take to come back through the probe subscription.
const PULL_TIMEOUT: Duration = Duration::from_secs(20);
/// The ledger tables the runtime user may only append to.
const LEDGER: [&str; 2] = ["events", "event_audit_log"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// Passes, but says something the operator should know.
    Warn,
    Fail,
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    pub status: Status,
    pub detail: String,
}

impl Check {
    fn from(name: impl Into<String>, r: Result<String, String>) -> Self {
        let (status, detail) = match r {
            Ok(d) => (Status::Ok, d),
            Err(d) => (Status::Fail, d),
        };
        Check {
            name: name.into(),
            status,
            detail,
        }
    }

    /// Passed (possibly with a warning).
    pub fn ok(&self) -> bool {
        self.status != Status::Fail
    }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = match self.status {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        };
        write!(f, "{status:<5} {:<42} {}", self.name, self.detail)
    }
}

/// Runs `fut` with the per-check time limit.
async fn bounded(fut: impl Future<Output = Result<String, String>>) -> Result<String, String> {
    tokio::time::timeout(CHECK_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} s", CHECK_TIMEOUT.as_secs())))
}

/// Every check, in order; each runs even when an earlier one failed.
pub async fn checks(settings: &Settings) -> Vec<Check> {
    let topology = settings.topology();
    let ep = crate::app::endpoint(settings);
    let mut out = Vec::new();

    out.push(Check::from(
        "pubsub: topics exist",
        bounded(topics(&topology, &ep)).await,
    ));
    out.push(Check::from(
        format!("pubsub: publish+pull {}", topology.topic_id(TopicKind::Raw)),
        bounded(raw_round_trip(&topology, &ep)).await,
    ));
    for kind in ConsumerKind::all() {
        if !settings.consumers.get(kind).enabled {
            continue;
        }
        out.push(Check::from(
            format!("pubsub: {}", topology.subscription_id(kind)),
            bounded(subscription(&topology, &ep, kind)).await,
        ));
    }

    let connected = tokio::time::timeout(CHECK_TIMEOUT, crate::app::connect_store(settings)).await;
    match connected {
        Ok(Ok(store)) => {
            out.push(Check::from(
                "database: connect",
                bounded(async {
                    store.ping().await.map_err(|e| e.to_string())?;
                    Ok(format!("{} answers", settings.database.url_masked()))
                })
                .await,
            ));
            out.push(migrations(&store).await);
            out.push(Check::from(
                "database: write and roll back",
                bounded(write_and_roll_back(&store)).await,
            ));
            out.push(Check::from(
                "database: ledger refuses UPDATE/DELETE",
                bounded(ledger_immutable(&store)).await,
            ));
            store.close().await;
        }
        Ok(Err(e)) => out.push(Check::from("database: connect", Err(format!("{e:#}")))),
        Err(_) => out.push(Check::from(
            "database: connect",
            Err(format!(
                "{} did not answer within {} s",
                settings.database.url_masked(),
                CHECK_TIMEOUT.as_secs()
            )),
        )),
    }

    out.push(Check::from(
        "snapshots: write and read",
        bounded(snapshots(settings)).await,
    ));
    out
}

pub async fn run(settings: Settings) -> anyhow::Result<i32> {
    let results = checks(&settings).await;
    for c in &results {
        println!("{c}");
    }
    let failed = results.iter().filter(|c| !c.ok()).count();
    let warned = results.iter().filter(|c| c.status == Status::Warn).count();
    if failed == 0 && warned > 0 {
        println!(
            "All {} checks passed ({warned} with a warning).",
            results.len()
        );
        Ok(0)
    } else if failed == 0 {
        println!("All {} checks passed.", results.len());
        Ok(0)
    } else {
        println!("{failed} of {} checks failed.", results.len());
        Ok(1)
    }
}

// ---------------------------------------------------------------------------
// Pub/Sub

async fn topics(t: &Topology, ep: &Endpoint) -> Result<String, String> {
    let admin = clients::topic_admin(ep).await.map_err(|e| e.to_string())?;
    let mut missing = Vec::new();
    for kind in TopicKind::all() {
        let path = t.topic_path(kind);
        match admin.get_topic().set_topic(path.clone()).send().await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => missing.push(t.topic_id(kind)),
            Err(e) => return Err(format!("cannot read {path}: {e}")),
        }
    }
    if missing.is_empty() {
        Ok(format!(
            "all 4 topics of env `{}` exist in project {}",
            t.env, t.project_id
        ))
    } else {
        Err(format!(
            "missing: {}; run `event-backbone provision`",
            missing.join(", ")
        ))
    }
}

/// Publishes a unique probe to the raw topic and pulls it back through a
/// probe subscription of its own (unordered), which is deleted afterwards.
async fn raw_round_trip(t: &Topology, ep: &Endpoint) -> Result<String, String> {
    let admin = clients::subscription_admin(ep)
        .await
        .map_err(|e| e.to_string())?;
    let probe = uuid::Uuid::new_v4().simple().to_string();
    let sub = format!(
        "projects/{}/subscriptions/doctor-probe-{}",
        t.project_id,
        &probe[..12]
    );
    admin
        .create_subscription()
        .with_request(
            Subscription::new()
                .set_name(sub.clone())
                .set_topic(t.topic_path(TopicKind::Raw))
                .set_ack_deadline_seconds(10)
                // The shortest TTL Pub/Sub allows: cleans up after a crashed doctor.
                .set_expiration_policy(
                    ExpirationPolicy::new().set_ttl(google_cloud_wkt::Duration::clamp(86_400, 0)),
                ),
        )
        .send()
        .await
        .map_err(|e| format!("cannot create the probe subscription {sub}: {e}"))?;
    let result = publish_and_pull(t, ep, &sub, &probe).await;
    let deleted = admin
        .delete_subscription()
        .set_subscription(sub.clone())
        .send()
        .await;
    match (result, deleted) {
        (Ok(d), Ok(_)) => Ok(format!("{d}; probe subscription deleted")),
        (Ok(d), Err(e)) => Err(format!(
            "{d}, but deleting the probe subscription {sub} failed: {e}"
        )),
        (Err(e), _) => Err(e),
    }
}

async fn publish_and_pull(
    t: &Topology,
    ep: &Endpoint,
    sub: &str,
    probe: &str,
) -> Result<String, String> {
    let publishers = Publishers::new(t.clone(), ep)
        .await
        .map_err(|e| e.to_string())?;
    let subscriber = clients::subscriber(ep).await.map_err(|e| e.to_string())?;
    let started = Instant::now();
    let data = json!({ "doctor_probe": probe }).to_string();
    let attributes = HashMap::from([(PROBE_ATTRIBUTE.to_string(), probe.to_string())]);
    let id = publishers
        .publish_to(TopicKind::Raw, Bytes::from(data), attributes, "")
        .await
        .map_err(|e| format!("cannot publish: {e}"))?;
    publishers.flush().await;
    let mut stream = subscriber.subscribe(sub.to_string()).build();
    let deadline = tokio::time::Instant::now() + PULL_TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => {
                return Err(format!(
                    "published probe message {id} but it did not arrive through {sub} within {} s",
                    PULL_TIMEOUT.as_secs()
                ))
            }
            Ok(None) => return Err(format!("the pull stream of {sub} ended early")),
            Ok(Some(Err(e))) => return Err(format!("cannot pull from {sub}: {e}")),
            Ok(Some(Ok((m, h)))) => {
                // Live traffic reaches the probe subscription too; only ours counts.
                h.ack();
                if m.attributes.get(PROBE_ATTRIBUTE).map(String::as_str) == Some(probe) {
                    return Ok(format!(
                        "published probe message {id} and pulled it back in {} ms",
                        started.elapsed().as_millis()
                    ));
                }
            }
        }
    }
}

async fn subscription(t: &Topology, ep: &Endpoint, kind: ConsumerKind) -> Result<String, String> {
    let admin = clients::subscription_admin(ep)
        .await
        .map_err(|e| e.to_string())?;
    let spec = t.subscription_spec(kind);
    match admin
        .get_subscription()
        .set_subscription(spec.name.clone())
        .send()
        .await
    {
        Ok(live) => {
            let diff = differences(&live, &spec);
            if diff.is_empty() {
                Ok(format!(
                    "exists with the settings `provision` gives it (consumer {kind})"
                ))
            } else {
                Err(format!(
                    "differs from what `provision` creates: {}",
                    diff.join("; ")
                ))
            }
        }
        Err(e) if is_not_found(&e) => Err(format!(
            "does not exist, so the {kind} consumer cannot run; run `event-backbone provision`"
        )),
        Err(e) => Err(format!("cannot read it: {e}")),
    }
}

// ---------------------------------------------------------------------------
// Event store

/// The schema gate `run` applies ([`schema::ensure`]), read-only: behind
/// fails, ahead passes with a warning (the daemon runs on it).
async fn migrations(store: &Store) -> Check {
    const NAME: &str = "database: migrations applied";
    let status = match tokio::time::timeout(CHECK_TIMEOUT, schema::inspect(store)).await {
        Err(_) => {
            return Check::from(
                NAME,
                Err(format!("no answer within {} s", CHECK_TIMEOUT.as_secs())),
            )
        }
        Ok(Err(e)) => {
            return Check::from(NAME, Err(schema::SchemaError::Unreadable(e).to_string()))
        }
        Ok(Ok(s)) => s,
    };
    if status.is_behind() {
        return Check::from(NAME, Err(status.behind_message()));
    }
    let latest = status.latest().map(ToString::to_string).unwrap_or_default();
    let applied = format!(
        "all {} migrations of this binary applied, the latest {latest}",
        status.embedded.len()
    );
    if status.is_ahead() {
        Check {
            name: NAME.into(),
            status: Status::Warn,
            detail: format!("{applied}; {}", status.ahead_message()),
        }
    } else {
        Check::from(NAME, Ok(applied))
    }
}

/// A probe fingerprint: 64 hex characters, unique per run.
fn probe_fingerprint() -> String {
    crate::model::fingerprint::sha256_hex(
        format!("event-backbone doctor probe {}", uuid::Uuid::new_v4()).as_bytes(),
    )
}

async fn write_and_roll_back(store: &Store) -> Result<String, String> {
    let fp = probe_fingerprint();
    let count_sql = "SELECT COUNT(*) FROM event_audit_log WHERE fingerprint = ?";
    {
        let _guard = store.write_guard().await;
        let mut tx = store.pool().begin().await.map_err(|e| e.to_string())?;
        sqlx::query(
            "INSERT INTO event_audit_log (fingerprint, stage, processing_outcome, detail, attempt) \
             VALUES (?, 'doctor', 'probe', ?, 1)",
        )
        .bind(fp.clone())
        .bind(json!({"probe": "event-backbone doctor"}).to_string())
        .execute(&mut *tx)
        .await
        .map_err(|e| format!("cannot insert into event_audit_log: {e}"))?;
        let seen: i64 = sqlx::query_scalar(count_sql)
            .bind(fp.clone())
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| format!("cannot read the probe row back: {e}"))?;
        tx.rollback()
            .await
            .map_err(|e| format!("cannot roll back: {e}"))?;
        if seen != 1 {
            return Err(format!(
                "the probe row was inserted but {seen} rows read back"
            ));
        }
    }
    let left: i64 = sqlx::query_scalar(count_sql)
        .bind(fp)
        .fetch_one(store.pool())
        .await
        .map_err(|e| e.to_string())?;
    if left != 0 {
        return Err("the probe row is still there after the rollback".into());
    }
    Ok("inserted a probe row into event_audit_log, read it back, rolled it back".into())
}

/// Why a statement on the ledger was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// The user lacks the privilege (MySQL error 1142/1143).
    Grants,
    /// The immutability trigger fired.
    Trigger,
}

fn refusal(e: &sqlx::Error) -> Option<Refusal> {
    let sqlx::Error::Database(d) = e else {
        return None;
    };
    let number = d
        .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
        .map(|m| m.number());
    let msg = d.message();
    if matches!(number, Some(1142 | 1143)) || msg.contains("command denied") {
        Some(Refusal::Grants)
    } else if msg.contains("Event records are immutable") {
        Some(Refusal::Trigger)
    } else {
        None
    }
}

/// Inside one transaction that is always rolled back: a no-op UPDATE (grants
/// are checked before any row is touched), then a probe row per ledger table
/// and an UPDATE and a DELETE of it (the triggers fire only on real rows).
async fn ledger_immutable(store: &Store) -> Result<String, String> {
    let _guard = store.write_guard().await;
    let mut tx = store.pool().begin().await.map_err(|e| e.to_string())?;
    let result = probe_ledger(store, &mut tx).await;
    let rolled_back = tx.rollback().await;
    let refusals = result?;
    rolled_back.map_err(|e| format!("cannot roll back the probe rows: {e}"))?;
    let by_grants = refusals.contains(&Refusal::Grants);
    let by_trigger = refusals.contains(&Refusal::Trigger);
    Ok(match (store.backend(), by_grants, by_trigger) {
        (Backend::Sqlite, _, _) => {
            "UPDATE and DELETE on events and event_audit_log are refused by the immutability triggers".into()
        }
        (Backend::Mysql, true, false) => {
            "UPDATE and DELETE on events and event_audit_log are denied to this user by its grants".into()
        }
        (Backend::Mysql, true, true) => {
            "UPDATE and DELETE on events and event_audit_log are refused (grants and triggers)".into()
        }
        (Backend::Mysql, false, _) => {
            "UPDATE and DELETE on events and event_audit_log are refused by the immutability triggers; \
             this user still holds UPDATE/DELETE grants (apply sql/grants-mysql.sql for the runtime user)"
                .into()
        }
    })
}

async fn probe_ledger(
    store: &Store,
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
) -> Result<Vec<Refusal>, String> {
    let mut refusals = Vec::new();
    for table in LEDGER {
        let r = sqlx::query(&format!(
            "UPDATE {table} SET record_id = record_id WHERE 1 = 0"
        ))
        .execute(&mut **tx)
        .await;
        // Without a grants denial this touches nothing; the probe rows below decide.
        if let Some(how) = judge(&format!("a no-op UPDATE on {table}"), r, true)? {
            refusals.push(how);
        }
    }
    let id = uuid::Uuid::new_v4().to_string();
    let ts = store.dialect().ts_value(&chrono::Utc::now());
    sqlx::query(
        "INSERT INTO events (id, record_type, record_id, source, `timestamp`, base_version, changes, processed, sequence_num) \
         VALUES (?, 'doctor_probe', ?, 'suitex', ?, 0, '{}', 0, 1)",
    )
    .bind(id.clone())
    .bind(id.clone())
    .bind(ts)
    .execute(&mut **tx)
    .await
    .map_err(|e| format!("cannot insert a probe event: {e}"))?;
    let fp = probe_fingerprint();
    sqlx::query(
        "INSERT INTO event_audit_log (event_id, fingerprint, stage, processing_outcome, attempt) \
         VALUES (?, ?, 'doctor', 'probe', 1)",
    )
    .bind(id.clone())
    .bind(fp.clone())
    .execute(&mut **tx)
    .await
    .map_err(|e| format!("cannot insert a probe audit row: {e}"))?;
    for (table, key, value) in [
        ("events", "id", &id),
        ("event_audit_log", "fingerprint", &fp),
    ] {
        let r = sqlx::query(&format!(
            "UPDATE {table} SET record_id = 'doctor' WHERE {key} = ?"
        ))
        .bind(value.clone())
        .execute(&mut **tx)
        .await;
        refusals.extend(judge(
            &format!("UPDATE of a probe row in {table}"),
            r,
            false,
        )?);
        let r = sqlx::query(&format!("DELETE FROM {table} WHERE {key} = ?"))
            .bind(value.clone())
            .execute(&mut **tx)
            .await;
        refusals.extend(judge(
            &format!("DELETE of a probe row in {table}"),
            r,
            false,
        )?);
    }
    Ok(refusals)
}

/// A refused statement is what we want; one that changed rows is a failure
/// (`may_pass`: a statement that matches no rows may also go through).
fn judge(
    what: &str,
    r: Result<sqlx::any::AnyQueryResult, sqlx::Error>,
    may_pass: bool,
) -> Result<Option<Refusal>, String> {
    match r {
        Err(e) => match refusal(&e) {
            Some(how) => Ok(Some(how)),
            None => Err(format!("{what} failed in an unexpected way: {e}")),
        },
        Ok(done) if may_pass && done.rows_affected() == 0 => Ok(None),
        Ok(done) => Err(format!(
            "{what} was accepted ({} row(s)): the ledger is not protected; check the triggers and sql/grants-mysql.sql",
            done.rows_affected()
        )),
    }
}

// ---------------------------------------------------------------------------
// Snapshots

async fn snapshots(settings: &Settings) -> Result<String, String> {
    let store = crate::app::snapshot_store(settings)
        .await
        .map_err(|e| format!("{e:#}"))?;
    let data = Bytes::from(
        json!({
            "doctor_probe": uuid::Uuid::new_v4().to_string(),
            "at": chrono::Utc::now().to_rfc3339(),
        })
        .to_string(),
    );
    let reference = store
        .put(data.clone())
        .await
        .map_err(|e| format!("cannot write to {}: {e}", settings.snapshots.url))?;
    let back = store
        .get(&reference)
        .await
        .map_err(|e| format!("wrote {reference} but cannot read it back: {e}"))?;
    if back != data {
        return Err(format!("{reference} read back different bytes"));
    }
    Ok(format!("wrote and read back {reference}"))
}
