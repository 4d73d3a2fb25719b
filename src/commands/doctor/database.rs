//! Event store checks: the schema gate, a write that is rolled back, and the
//! ledger refusing UPDATE/DELETE. The statements are the store's
//! ([`backbone::store::ledger_probe`]); this file judges the answers.

use serde_json::json;

use super::report::{Check, Status};
use super::CHECK_TIMEOUT;
use backbone::store::ledger_probe::{LedgerTable, Mutation, ProbeTx, Refusal, REFUSED_STATEMENTS};
use backbone::store::probe::ProbeError;
use backbone::store::{schema, Backend, Store};

/// The schema gate `run` applies ([`schema::ensure`]), read-only: behind
/// fails, ahead passes with a warning (the daemon runs on it).
pub(super) async fn migrations(store: &Store) -> Check {
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
            at: String::new(),
            status: Status::Warn,
            detail: format!("{applied}; {}", status.ahead_message()),
        }
    } else {
        Check::from(NAME, Ok(applied))
    }
}

/// A probe fingerprint: 64 hex characters, unique per run.
fn probe_fingerprint() -> String {
    backbone::model::fingerprint::sha256_hex(
        format!("event-backbone doctor probe {}", uuid::Uuid::new_v4()).as_bytes(),
    )
}

pub(super) async fn write_and_roll_back(store: &Store) -> Result<String, String> {
    let fp = probe_fingerprint();
    {
        let mut tx = store.begin_probe().await.map_err(|e| e.to_string())?;
        tx.insert_audit_probe(&fp, &json!({"probe": "event-backbone doctor"}).to_string())
            .await
            .map_err(|e| format!("cannot insert into event_audit_log: {e}"))?;
        let seen = tx
            .count_audit_fingerprint(&fp)
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
    let left = store
        .count_audit_fingerprint(&fp)
        .await
        .map_err(|e| e.to_string())?;
    if left != 0 {
        return Err("the probe row is still there after the rollback".into());
    }
    Ok("inserted a probe row into event_audit_log, read it back, rolled it back".into())
}

/// Inside one transaction that is always rolled back: a no-op UPDATE (grants
/// are checked before any row is touched), then a probe row per ledger table
/// and an UPDATE and a DELETE of it (the triggers fire only on real rows).
pub(super) async fn ledger_immutable(store: &Store) -> Result<String, String> {
    let mut tx = store.begin_probe().await.map_err(|e| e.to_string())?;
    let result = probe_ledger(&mut tx).await;
    let rolled_back = tx.rollback().await;
    let refusals = result?;
    rolled_back.map_err(|e| format!("cannot roll back the probe rows: {e}"))?;
    let by_grants = refusals.contains(&Refusal::Grants);
    let by_trigger = refusals.contains(&Refusal::Trigger);
    Ok(match (store.backend(), by_grants, by_trigger) {
        (Backend::Sqlite, _, _) => {
            format!("{REFUSED_STATEMENTS} are refused by the immutability triggers")
        }
        (Backend::Mysql, true, false) => {
            format!("{REFUSED_STATEMENTS} are denied to this user by its grants")
        }
        (Backend::Mysql, true, true) => {
            format!("{REFUSED_STATEMENTS} are refused (grants and triggers)")
        }
        (Backend::Mysql, false, _) => format!(
            "{REFUSED_STATEMENTS} are refused by the immutability triggers; \
             this user still holds UPDATE/DELETE grants (apply sql/grants-mysql.sql for the runtime user)"
        ),
    })
}

async fn probe_ledger(tx: &mut ProbeTx) -> Result<Vec<Refusal>, String> {
    let mut refusals = Vec::new();
    for table in LedgerTable::ALL {
        let r = tx.noop_update(table).await;
        // Without a grants denial this touches nothing; the probe rows below decide.
        if let Some(how) = judge(&format!("a no-op UPDATE on {}", table.name()), r, true)? {
            refusals.push(how);
        }
    }
    let id = uuid::Uuid::new_v4().to_string();
    tx.insert_probe_event(&id)
        .await
        .map_err(|e| format!("cannot insert a probe event: {e}"))?;
    let fp = probe_fingerprint();
    tx.insert_probe_event_audit(&id, &fp)
        .await
        .map_err(|e| format!("cannot insert a probe audit row: {e}"))?;
    for (table, key) in [(LedgerTable::Events, &id), (LedgerTable::AuditLog, &fp)] {
        for how in [Mutation::Update, Mutation::Delete] {
            let r = tx.mutate_probe_row(table, key, how).await;
            refusals.extend(judge(
                &format!("{} of a probe row in {}", how.verb(), table.name()),
                r,
                false,
            )?);
        }
    }
    Ok(refusals)
}

/// A refused statement is what we want; one that changed rows is a failure
/// (`may_pass`: a statement that matches no rows may also go through).
fn judge(
    what: &str,
    r: Result<u64, ProbeError>,
    may_pass: bool,
) -> Result<Option<Refusal>, String> {
    match r {
        Err(e) => match e.refusal() {
            Some(how) => Ok(Some(how)),
            None => Err(format!("{what} failed in an unexpected way: {e}")),
        },
        Ok(0) if may_pass => Ok(None),
        Ok(rows) => Err(format!(
            "{what} was accepted ({rows} row(s)): the ledger is not protected; check the triggers and sql/grants-mysql.sql"
        )),
    }
}
