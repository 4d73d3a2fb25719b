//! The scripted story of SPEC §9. Each step publishes raw events, waits for
//! what the daemon did (read back from the database, the stand-in targets and
//! the merged topic, with bounded waits) and narrates it; anything other than
//! the expected result ends the story with an error.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Map, Value};
use sqlx::Row;
use tokio_util::sync::CancellationToken;

use super::observer::MergedObserver;
use super::targets::{Received, StandIn};
use super::{DemoError, Narrator, RunFiles, SUITEX_FAILURES};
use crate::model::fingerprint::{fingerprint, fingerprint_bytes};
use crate::model::raw_event::{parse_raw_event, Source};
use crate::pubsub::publisher::Publishers;
use crate::snapshots::local::LocalSnapshots;
use crate::snapshots::SnapshotStore;
use crate::stages::deliver::stage_name;
use crate::store::dead_letters::{DeadLetter, DlqFilter};
use crate::store::{get_opt_text, get_text, Store};
use crate::topology::{TopicKind, Topology};

pub const NETSUITE_TOKEN: &str = "demo-netsuite-token";
pub const SUITEX_TOKEN: &str = "demo-suitex-token";
/// The record type the NetSuite stand-in rejects with 500 in step 7.
const REJECTED_TYPE: &str = "invoice";
/// Bound on each wait for the daemon.
const WAIT: Duration = Duration::from_secs(20);
/// Long enough for five executions at the demo's backoff (0.2 s … 1 s).
const WAIT_EXHAUSTED: Duration = Duration::from_secs(40);
/// Silence that shows nothing more is coming (the duplicate).
const QUIET: Duration = Duration::from_millis(1500);

/// What the story works with.
pub struct Ctx<'a> {
    pub store: Store,
    pub publishers: Arc<Publishers>,
    pub netsuite: &'a StandIn,
    pub suitex: &'a StandIn,
    pub observer: &'a MergedObserver,
    pub snapshots_url: String,
    pub threshold: u64,
    pub max_attempts: u32,
    pub topology: Topology,
    pub interrupt: &'a CancellationToken,
    pub metrics_addr: String,
}

/// A raw event the story published.
#[derive(Debug, Clone)]
struct Sent {
    fingerprint: String,
    record_type: String,
    record_id: String,
}

impl Sent {
    fn record(&self) -> String {
        format!("{} {}", self.record_type, self.record_id)
    }
}

/// One audit row.
#[derive(Debug, Clone)]
struct Audit {
    outcome: String,
    attempt: i64,
    event_id: Option<String>,
    detail: Option<String>,
}

/// The persisted event behind a merge.
#[derive(Debug, Clone)]
struct Persisted {
    event_id: String,
    sequence_num: i64,
    full_snapshot_ref: Option<String>,
    changes_len: i64,
}

fn short(fp: &str) -> &str {
    fp.get(..12).unwrap_or(fp)
}

fn kib(n: usize) -> String {
    format!("{:.1} KiB", n as f64 / 1024.0)
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn expect(ok: bool, why: impl FnOnce() -> String) -> Result<(), DemoError> {
    if ok {
        Ok(())
    } else {
        Err(DemoError::Unexpected(why()))
    }
}

fn target_name(t: Source) -> &'static str {
    match t {
        Source::Netsuite => "NetSuite",
        Source::Suitex => "SuiteX",
    }
}

/// A long, readable text of about `bytes` bytes (the oversized payloads).
fn filler(bytes: usize) -> String {
    const S: &str =
        "The supplier shall deliver the services described in the attached statement of work. ";
    S.repeat(bytes / S.len() + 1)
}

impl Ctx<'_> {
    fn stand_in(&self, t: Source) -> &StandIn {
        match t {
            Source::Netsuite => self.netsuite,
            Source::Suitex => self.suitex,
        }
    }

    /// Polls `f` every 100 ms until it yields a value, `within` passes or the
    /// demo is interrupted.
    async fn wait_for<T, F, Fut>(
        &self,
        what: impl Into<String>,
        within: Duration,
        mut f: F,
    ) -> Result<T, DemoError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Option<T>, DemoError>>,
    {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(v) = f().await? {
                return Ok(v);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(DemoError::Timeout {
                    what: what.into(),
                    after: within,
                });
            }
            tokio::select! {
                _ = self.interrupt.cancelled() => return Err(DemoError::Interrupted),
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }

    async fn pause(&self, d: Duration) -> Result<(), DemoError> {
        tokio::select! {
            _ = self.interrupt.cancelled() => Err(DemoError::Interrupted),
            _ = tokio::time::sleep(d) => Ok(()),
        }
    }

    /// Publishes a raw event to `events.raw.{env}` with its ordering key.
    /// `resolved` are the changes behind a `full_snapshot_ref`.
    async fn send(
        &self,
        raw: &Value,
        resolved: Option<&Map<String, Value>>,
    ) -> Result<Sent, DemoError> {
        self.send_bytes(Bytes::from(raw.to_string()), resolved)
            .await
    }

    async fn send_bytes(
        &self,
        data: Bytes,
        resolved: Option<&Map<String, Value>>,
    ) -> Result<Sent, DemoError> {
        let ev = parse_raw_event(&data)
            .map_err(|e| DemoError::Unexpected(format!("the story's own event is invalid: {e}")))?;
        let changes = resolved.unwrap_or(&ev.changes);
        let sent = Sent {
            fingerprint: fingerprint(&ev, changes),
            record_type: ev.record_type.clone(),
            record_id: ev.record_id.clone(),
        };
        self.publish(data, &ev.ordering_key()).await?;
        Ok(sent)
    }

    async fn publish(&self, data: Bytes, ordering_key: &str) -> Result<(), DemoError> {
        self.publishers
            .publish_to(TopicKind::Raw, data, HashMap::new(), ordering_key)
            .await
            .map(|_| ())
            .map_err(|e| DemoError::Unexpected(format!("publishing to the raw topic failed: {e}")))
    }

    async fn audit(&self, stage: &str, fp: &str) -> Result<Vec<Audit>, DemoError> {
        let rows = sqlx::query(
            "SELECT processing_outcome, attempt, event_id, detail FROM event_audit_log \
             WHERE stage = ? AND fingerprint = ? ORDER BY id",
        )
        .bind(stage.to_string())
        .bind(fp.to_string())
        .fetch_all(self.store.pool())
        .await
        .map_err(crate::store::StoreError::from)?;
        rows.iter()
            .map(|r| {
                Ok(Audit {
                    outcome: get_text(r, "processing_outcome")?,
                    attempt: r
                        .try_get("attempt")
                        .map_err(crate::store::StoreError::from)?,
                    event_id: get_opt_text(r, "event_id")?,
                    detail: get_opt_text(r, "detail")?,
                })
            })
            .collect()
    }

    async fn count(&self, sql: &str, binds: &[&str]) -> Result<i64, DemoError> {
        let mut q = sqlx::query_scalar::<_, i64>(sql);
        for b in binds {
            q = q.bind(b.to_string());
        }
        Ok(q.fetch_one(self.store.pool())
            .await
            .map_err(crate::store::StoreError::from)?)
    }

    async fn version(&self, record_type: &str, record_id: &str) -> Result<i64, DemoError> {
        let mut conn = self
            .store
            .pool()
            .acquire()
            .await
            .map_err(crate::store::StoreError::from)?;
        let state = crate::store::ledger::record_state(
            &mut conn,
            self.store.dialect(),
            record_type,
            record_id,
        )
        .await?;
        Ok(state.map(|s| s.version).unwrap_or(0))
    }

    /// Waits for the merge stage to persist `sent`.
    async fn persisted(&self, sent: &Sent) -> Result<Persisted, DemoError> {
        let fp = sent.fingerprint.as_str();
        let claim = self
            .wait_for(
                format!("the merge stage to persist {}", sent.record()),
                WAIT,
                || async move {
                    let rows = self.audit("merge", fp).await?;
                    if let Some(bad) = rows
                        .iter()
                        .find(|a| a.outcome == "invalid" || a.outcome == "permanent")
                    {
                        return Err(DemoError::Unexpected(format!(
                            "the merge stage rejected {fp}: {}",
                            bad.detail.clone().unwrap_or_default()
                        )));
                    }
                    Ok(rows
                        .into_iter()
                        .find(|a| a.outcome == "merged" || a.outcome == "noop"))
                },
            )
            .await?;
        let event_id = claim.event_id.unwrap_or_default();
        let row = sqlx::query(
            "SELECT sequence_num, full_snapshot_ref, length(changes) AS changes_len FROM events WHERE id = ?",
        )
        .bind(event_id.clone())
        .fetch_optional(self.store.pool())
        .await
        .map_err(crate::store::StoreError::from)?
        .ok_or_else(|| {
            DemoError::Unexpected(format!("the audit log names event {event_id}, which is not in `events`"))
        })?;
        Ok(Persisted {
            event_id,
            sequence_num: row
                .try_get("sequence_num")
                .map_err(crate::store::StoreError::from)?,
            full_snapshot_ref: get_opt_text(&row, "full_snapshot_ref")?,
            changes_len: row
                .try_get("changes_len")
                .map_err(crate::store::StoreError::from)?,
        })
    }

    /// Waits until the delivery stage for `target` finished with `sent`
    /// (delivered or skipped) and returns its audit rows.
    async fn delivery(&self, target: Source, sent: &Sent) -> Result<Vec<Audit>, DemoError> {
        let stage = stage_name(target);
        let fp = sent.fingerprint.as_str();
        self.wait_for(
            format!("{} to handle {}", stage, sent.record()),
            WAIT,
            || async move {
                let rows = self.audit(stage, fp).await?;
                let done = rows.iter().any(|a| {
                    matches!(
                        a.outcome.as_str(),
                        "delivered" | "skipped" | "permanent" | "invalid"
                    )
                });
                Ok(done.then_some(rows))
            },
        )
        .await
    }

    async fn expect_delivered(
        &self,
        target: Source,
        sent: &Sent,
    ) -> Result<Vec<Received>, DemoError> {
        let rows = self.delivery(target, sent).await?;
        let last = rows.last().map(|a| a.outcome.as_str()).unwrap_or("");
        expect(last == "delivered", || {
            format!(
                "{} was not delivered to {} (audit: {last})",
                sent.record(),
                target_name(target)
            )
        })?;
        Ok(self.stand_in(target).received_for(&sent.fingerprint))
    }

    async fn expect_skipped(&self, target: Source, sent: &Sent) -> Result<(), DemoError> {
        let rows = self.delivery(target, sent).await?;
        let last = rows.last().map(|a| a.outcome.as_str()).unwrap_or("");
        expect(last == "skipped", || {
            format!(
                "{} should not go back to {} (audit: {last})",
                sent.record(),
                target_name(target)
            )
        })
    }

    async fn dead_letter(&self, fp: &str) -> Result<Option<DeadLetter>, DemoError> {
        let all = self
            .store
            .dead_letters(
                &DlqFilter {
                    include_replayed: true,
                    ..Default::default()
                },
                1000,
            )
            .await?;
        Ok(all
            .into_iter()
            .find(|d| d.fingerprint.as_deref() == Some(fp)))
    }

    /// "persisted … (sequence n); <record> is now vN".
    async fn narrate_persisted(
        &self,
        n: &mut Narrator,
        sent: &Sent,
        p: &Persisted,
    ) -> Result<i64, DemoError> {
        let v = self.version(&sent.record_type, &sent.record_id).await?;
        n.fact(
            "persisted",
            format!(
                "event {} (sequence {}, fingerprint {}…); {} is now v{v}",
                p.event_id,
                p.sequence_num,
                short(&sent.fingerprint),
                sent.record()
            ),
        );
        Ok(v)
    }

    /// Narrates a creation that goes to the other system only.
    async fn new_record(
        &self,
        n: &mut Narrator,
        sent: &Sent,
        origin: Source,
    ) -> Result<(), DemoError> {
        let p = self.persisted(sent).await?;
        let v = self.narrate_persisted(n, sent, &p).await?;
        expect(v == 1, || {
            format!("{} should be v1, is v{v}", sent.record())
        })?;
        let other = match origin {
            Source::Netsuite => Source::Suitex,
            Source::Suitex => Source::Netsuite,
        };
        let got = self.expect_delivered(other, sent).await?;
        n.fact(
            "delivered",
            format!(
                "to {}: HTTP {} on attempt 1 (bearer token and Idempotency-Key sent)",
                target_name(other),
                got.last().map(|r| r.status).unwrap_or(0)
            ),
        );
        self.expect_skipped(origin, sent).await?;
        n.fact(
            "skipped",
            format!(
                "{}: it is the origin, so nothing is echoed back",
                target_name(origin)
            ),
        );
        Ok(())
    }
}

/// The raw event JSON the sources publish.
fn raw(
    source: &str,
    record_type: &str,
    record_id: &str,
    base: i64,
    ts: &str,
    changes: Value,
) -> Value {
    json!({
        "source": source, "record_type": record_type, "record_id": record_id,
        "base_version": base, "timestamp": ts, "changes": changes,
    })
}

pub async fn play(ctx: &Ctx<'_>, n: &mut Narrator) -> Result<(), DemoError> {
    let e1 = step_new_records(ctx, n).await?;
    step_duplicate(ctx, n, &e1).await?;
    step_conflict(ctx, n).await?;
    step_oversized(ctx, n).await?;
    step_malformed(ctx, n).await?;
    step_recovering_sink(ctx, n).await?;
    step_dead_letter_and_replay(ctx, n).await?;
    summary(ctx, n).await
}

/// The creation of project 42, kept byte for byte for the duplicate.
fn project_42_created() -> Value {
    raw(
        "suitex",
        "project",
        "42",
        0,
        "2026-03-13T09:00:00.000000Z",
        json!({"name": "Website relaunch", "status": "open", "budget": 12000}),
    )
}

async fn step_new_records(ctx: &Ctx<'_>, n: &mut Narrator) -> Result<Sent, DemoError> {
    n.step(1, "New records from both sources");
    let e1 = ctx.send(&project_42_created(), None).await?;
    let e2 = ctx
        .send(
            &raw(
                "netsuite",
                "customer",
                "7",
                0,
                "2026-03-13T09:05:00.000000Z",
                json!({"name": "Acme GmbH", "terms": "Net 30"}),
            ),
            None,
        )
        .await?;
    n.event(
        "SuiteX creates project 42 {name: \"Website relaunch\", status: \"open\", budget: 12000}",
    );
    ctx.new_record(n, &e1, Source::Suitex).await?;
    n.event("NetSuite creates customer 7 {name: \"Acme GmbH\", terms: \"Net 30\"}");
    ctx.new_record(n, &e2, Source::Netsuite).await?;
    Ok(e1)
}

async fn step_duplicate(ctx: &Ctx<'_>, n: &mut Narrator, e1: &Sent) -> Result<(), DemoError> {
    n.step(2, "A duplicate");
    n.event("SuiteX's publisher retries and sends project 42's creation again, byte for byte");
    let again = ctx.send(&project_42_created(), None).await?;
    let fp = again.fingerprint.clone();
    ctx.wait_for("the merge stage to see the duplicate", WAIT, || async {
        let rows = ctx.audit("merge", &fp).await?;
        Ok(rows.iter().any(|a| a.outcome == "duplicate").then_some(()))
    })
    .await?;
    ctx.pause(QUIET).await?;
    let events = ctx
        .count(
            "SELECT COUNT(*) FROM events WHERE record_type = ? AND record_id = ?",
            &["project", "42"],
        )
        .await?;
    let merged = ctx.observer.for_fingerprint(&e1.fingerprint).len();
    let delivered = ctx.netsuite.received_for(&e1.fingerprint).len();
    let v = ctx.version("project", "42").await?;
    expect(
        events == 1 && merged == 1 && delivered == 1 && v == 1,
        || {
            format!("the duplicate had effects: {events} event rows, {merged} merged events, {delivered} deliveries, v{v}")
        },
    )?;
    n.fact(
        "duplicate",
        format!("recognised by its fingerprint {}…; acked", short(&fp)),
    );
    n.fact(
        "no effect",
        "still 1 event row and v1 for project 42, no second merged event, nothing delivered again",
    );
    Ok(())
}

async fn step_conflict(ctx: &Ctx<'_>, n: &mut Narrator) -> Result<(), DemoError> {
    n.step(3, "A conflict (the SPEC §5 worked example)");
    n.event("NetSuite edits project 42 six times (v2 … v7); the last edit, at 10:00, sets status \"closed\"");
    let edits = [
        ("09:10", json!({"budget": 12500})),
        ("09:20", json!({"progress": 20})),
        ("09:30", json!({"progress": 40})),
        ("09:40", json!({"owner": "j.doe"})),
        ("09:50", json!({"progress": 60})),
        ("10:00", json!({"status": "closed"})),
    ];
    let mut sent = Vec::new();
    for (i, (at, changes)) in edits.into_iter().enumerate() {
        let ev = raw(
            "netsuite",
            "project",
            "42",
            i as i64 + 1,
            &format!("2026-03-13T{at}:00.000000Z"),
            changes,
        );
        // Awaited one by one: the ordering key keeps them in this order.
        sent.push(ctx.send(&ev, None).await?);
    }
    let mut seqs = Vec::new();
    for s in &sent {
        seqs.push(ctx.persisted(s).await?.sequence_num);
        ctx.expect_delivered(Source::Suitex, s).await?;
        ctx.expect_skipped(Source::Netsuite, s).await?;
    }
    let v = ctx.version("project", "42").await?;
    expect(v == 7, || format!("project 42 should be v7, is v{v}"))?;
    let versions: Vec<i64> = ctx
        .suitex
        .received()
        .iter()
        .filter(|r| r.body.get("record_id").and_then(Value::as_str) == Some("42"))
        .filter_map(Received::version)
        .collect();
    expect(versions == [2, 3, 4, 5, 6, 7], || {
        format!("SuiteX received project 42's versions out of order: {versions:?}")
    })?;
    n.fact(
        "persisted",
        format!(
            "6 events (sequence {} … {}); project 42 is now v7",
            seqs.first().copied().unwrap_or(0),
            seqs.last().copied().unwrap_or(0)
        ),
    );
    n.fact(
        "delivered",
        "to SuiteX in order (v2, v3, v4, v5, v6, v7); not echoed back to NetSuite",
    );

    n.event("SuiteX, which last saw v6, sends {status: \"open\", name: \"Website relaunch 2026\"} stamped 09:59");
    let c = ctx
        .send(
            &raw(
                "suitex",
                "project",
                "42",
                6,
                "2026-03-13T09:59:00.000000Z",
                json!({"status": "open", "name": "Website relaunch 2026"}),
            ),
            None,
        )
        .await?;
    let p = ctx.persisted(&c).await?;
    let v = ctx.narrate_persisted(n, &c, &p).await?;
    let to_sx = ctx.expect_delivered(Source::Suitex, &c).await?;
    let to_ns = ctx.expect_delivered(Source::Netsuite, &c).await?;
    let body = to_sx.last().map(|r| r.body.clone()).unwrap_or(Value::Null);
    let conflicts = body
        .get("conflicts")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let applied = body.get("applied").cloned().unwrap_or(Value::Null);
    let conflict = conflicts.first().cloned().unwrap_or(Value::Null);
    expect(
        v == 8
            && conflicts.len() == 1
            && conflict["field"] == "status"
            && conflict["incoming"] == "open"
            && conflict["kept"] == "closed"
            && conflict["winner"] == "netsuite"
            && applied == json!({"name": "Website relaunch 2026"}),
        || {
            format!("the conflict did not resolve as in SPEC §5: v{v}, applied {applied}, conflicts {conflicts:?}")
        },
    )?;
    n.fact(
        "conflict",
        format!(
            "status: SuiteX's \"open\" (09:59) lost to NetSuite's \"closed\" (10:00); winner netsuite by {}",
            conflict["rule"].as_str().unwrap_or("last_writer_wins")
        ),
    );
    n.fact(
        "applied",
        "name = \"Website relaunch 2026\" (unchanged since v1, so no conflict)",
    );
    n.fact(
        "delivered",
        format!(
            "to NetSuite (it learns the new name), HTTP {}",
            to_ns.last().map(|r| r.status).unwrap_or(0)
        ),
    );
    n.fact(
        "delivered",
        format!(
            "to SuiteX (it lost the status conflict and learns the winning value), HTTP {}",
            to_sx.last().map(|r| r.status).unwrap_or(0)
        ),
    );
    Ok(())
}

async fn step_oversized(ctx: &Ctx<'_>, n: &mut Narrator) -> Result<(), DemoError> {
    n.step(
        4,
        &format!(
            "Oversized payloads (claim check above {} bytes)",
            ctx.threshold
        ),
    );
    // (a) The change set itself is too big for the message: the source puts
    // it in the snapshot folder and sends a reference.
    let mut big = Map::new();
    big.insert("title".into(), json!("Master services agreement"));
    big.insert("terms_text".into(), json!(filler(6 * 1024)));
    let big_bytes = Bytes::from(Value::Object(big.clone()).to_string());
    let snapshots = LocalSnapshots::new(&ctx.snapshots_url);
    let reference = snapshots.put(big_bytes.clone()).await.map_err(|e| {
        DemoError::Unexpected(format!(
            "writing the change set to the snapshot folder failed: {e}"
        ))
    })?;
    n.event(format!(
        "SuiteX creates contract C-7; its {} change set is in the snapshot folder and the message carries full_snapshot_ref {reference}",
        kib(big_bytes.len())
    ));
    let mut ev = raw(
        "suitex",
        "contract",
        "C-7",
        0,
        "2026-03-13T10:10:00.000000Z",
        json!({}),
    );
    ev["full_snapshot_ref"] = json!(reference);
    let a = ctx.send(&ev, Some(&big)).await?;
    oversized_outcome(ctx, n, &a, Source::Netsuite, Some(&reference)).await?;

    // (b) The change set fits in a message, but the merged event does not
    // fit under the threshold.
    let inline = json!({"title": "Support contract", "terms_text": filler(5 * 1024)});
    let ev = raw(
        "netsuite",
        "contract",
        "C-8",
        0,
        "2026-03-13T10:12:00.000000Z",
        inline,
    );
    n.event(format!(
        "NetSuite creates contract C-8 with a {} change set inline",
        kib(ev.to_string().len())
    ));
    let b = ctx.send(&ev, None).await?;
    oversized_outcome(ctx, n, &b, Source::Suitex, None).await
}

async fn oversized_outcome(
    ctx: &Ctx<'_>,
    n: &mut Narrator,
    sent: &Sent,
    to: Source,
    reference: Option<&str>,
) -> Result<(), DemoError> {
    let p = ctx.persisted(sent).await?;
    expect(p.full_snapshot_ref.as_deref() == reference, || {
        format!(
            "event {} should keep full_snapshot_ref {reference:?}, has {:?}",
            p.event_id, p.full_snapshot_ref
        )
    })?;
    ctx.narrate_persisted(n, sent, &p).await?;
    if reference.is_some() {
        n.fact(
            "resolved",
            format!(
                "the event row holds the resolved changes ({}) and keeps the reference",
                kib(usize::try_from(p.changes_len).unwrap_or(0))
            ),
        );
    }
    let got = ctx.expect_delivered(to, sent).await?;
    let fp = sent.fingerprint.clone();
    let seen = ctx
        .wait_for("the merged event on the merged topic", WAIT, || async {
            Ok(ctx.observer.for_fingerprint(&fp).into_iter().next())
        })
        .await?;
    let delivered_len = got.last().map(|r| r.body_len).unwrap_or(0);
    expect(
        seen.full_snapshot_ref.is_some() && delivered_len as u64 > ctx.threshold,
        || {
            format!(
                "the merged event should travel as a claim check and arrive whole: message {} bytes (ref {:?}), delivered {} bytes",
                seen.size, seen.full_snapshot_ref, delivered_len
            )
        },
    )?;
    n.fact(
        "claim check",
        format!(
            "the merged event went out as a {}-byte pointer to {}",
            seen.size,
            seen.full_snapshot_ref.as_deref().unwrap_or("")
        ),
    );
    n.fact(
        "delivered",
        format!(
            "to {}: the consumer resolved the pointer and POSTed the whole {} event, HTTP {}",
            target_name(to),
            kib(delivered_len),
            got.last().map(|r| r.status).unwrap_or(0)
        ),
    );
    Ok(())
}

async fn step_malformed(ctx: &Ctx<'_>, n: &mut Narrator) -> Result<(), DemoError> {
    n.step(5, "A malformed message");
    let data = Bytes::from_static(
        br#"{"source":"suitex","record_type":"project","record_id":"44","changes":{"name":"#,
    );
    n.event(format!(
        "a publisher sends {} bytes of truncated JSON: {}",
        data.len(),
        String::from_utf8_lossy(&data)
    ));
    ctx.publish(data.clone(), "").await?;
    let fp = fingerprint_bytes(&data);
    let dl = ctx
        .wait_for("the malformed message to be parked", WAIT, || {
            ctx.dead_letter(&fp)
        })
        .await?;
    expect(dl.reason == "invalid" && dl.stage == "merge", || {
        format!(
            "the malformed message should be dead-lettered as invalid by merge, got {} by {}",
            dl.reason, dl.stage
        )
    })?;
    n.fact(
        "dead-lettered",
        format!(
            "reason invalid at stage merge: {}",
            dl.last_error.as_deref().unwrap_or("")
        ),
    );
    n.fact(
        "parked",
        format!(
            "as dead letter #{}; the merge consumer keeps running",
            dl.id
        ),
    );
    Ok(())
}

async fn step_recovering_sink(ctx: &Ctx<'_>, n: &mut Narrator) -> Result<(), DemoError> {
    n.step(6, "A sink that fails and recovers");
    ctx.suitex.fail_next(SUITEX_FAILURES);
    n.event(format!(
        "SuiteX goes down: it answers 503 to its next {SUITEX_FAILURES} requests, then recovers"
    ));
    n.event("NetSuite updates customer 7 {terms: \"Net 45\"}");
    let s = ctx
        .send(
            &raw(
                "netsuite",
                "customer",
                "7",
                1,
                "2026-03-13T10:20:00.000000Z",
                json!({"terms": "Net 45"}),
            ),
            None,
        )
        .await?;
    let p = ctx.persisted(&s).await?;
    ctx.narrate_persisted(n, &s, &p).await?;
    let got = ctx.expect_delivered(Source::Suitex, &s).await?;
    let statuses: Vec<u16> = got.iter().map(|r| r.status).collect();
    let expected: Vec<u16> = std::iter::repeat_n(503, SUITEX_FAILURES as usize)
        .chain([200])
        .collect();
    expect(statuses == expected, || {
        format!("SuiteX should answer {expected:?}, answered {statuses:?}")
    })?;
    let waits: Vec<String> = got
        .windows(2)
        .map(|w| secs(w[1].at.duration_since(w[0].at)))
        .collect();
    n.fact(
        "retried",
        format!(
            "SuiteX answered 503 on attempts 1–{SUITEX_FAILURES}; the retry consumer ran the delivery again after {}",
            waits.join(" and ")
        ),
    );
    let rows = ctx
        .audit(stage_name(Source::Suitex), &s.fingerprint)
        .await?;
    let attempt = rows.last().map(|a| a.attempt).unwrap_or(0);
    expect(attempt == i64::from(SUITEX_FAILURES) + 1, || {
        format!(
            "the delivery should succeed on attempt {}, the audit log says {attempt}",
            SUITEX_FAILURES + 1
        )
    })?;
    n.fact(
        "delivered",
        format!("to SuiteX: HTTP 200 on attempt {attempt}"),
    );
    Ok(())
}

async fn step_dead_letter_and_replay(ctx: &Ctx<'_>, n: &mut Narrator) -> Result<(), DemoError> {
    n.step(7, "A sink that always fails → DLQ → replay");
    ctx.netsuite.reject_record_type(Some(REJECTED_TYPE));
    n.event("NetSuite breaks: it answers 500 to every invoice");
    n.event("SuiteX creates invoice INV-1001 {amount: 1250.0, currency: \"EUR\", customer: \"7\"}");
    let s = ctx
        .send(
            &raw(
                "suitex",
                REJECTED_TYPE,
                "INV-1001",
                0,
                "2026-03-13T10:30:00.000000Z",
                json!({"amount": 1250.0, "currency": "EUR", "customer": "7"}),
            ),
            None,
        )
        .await?;
    let p = ctx.persisted(&s).await?;
    ctx.narrate_persisted(n, &s, &p).await?;
    let fp = s.fingerprint.clone();
    let dl = ctx
        .wait_for(
            "the invoice to be dead-lettered after its last attempt",
            WAIT_EXHAUSTED,
            || ctx.dead_letter(&fp),
        )
        .await?;
    let tries = ctx.netsuite.received_for(&fp);
    let max = ctx.max_attempts as usize;
    expect(
        dl.reason == "exhausted"
            && dl.stage == stage_name(Source::Netsuite)
            && tries.len() == max
            && tries.iter().all(|r| r.status == 500),
        || {
            format!(
                "expected {max} failed deliveries and an `exhausted` dead letter, got {} requests and {} by {}",
                tries.len(),
                dl.reason,
                dl.stage
            )
        },
    )?;
    let waits: Vec<String> = tries
        .windows(2)
        .map(|w| secs(w[1].at.duration_since(w[0].at)))
        .collect();
    n.fact(
        "retried",
        format!(
            "NetSuite answered 500 on all {max} attempts; waits between them {} (exponential, capped at 1 s)",
            waits.join(", ")
        ),
    );
    n.fact(
        "dead-lettered",
        format!(
            "reason exhausted after {} attempts at stage {}; parked as dead letter #{}",
            dl.attempts, dl.stage, dl.id
        ),
    );

    ctx.netsuite.reject_record_type(None);
    n.event("The operator fixes NetSuite and replays the DLQ (as `event-backbone dlq replay --stage deliver.netsuite` does)");
    let report = crate::dlq::replay(
        &ctx.store,
        &ctx.publishers,
        &DlqFilter {
            stage: Some(stage_name(Source::Netsuite).to_string()),
            ..Default::default()
        },
        false,
    )
    .await?;
    expect(
        report.replayed == [dl.id] && report.failed.is_empty(),
        || {
            format!(
                "the replay should republish dead letter #{} only: {report:?}",
                dl.id
            )
        },
    )?;
    n.fact(
        "replayed",
        format!(
            "dead letter #{} went back to {} with attempt=0, replay=true",
            dl.id,
            ctx.topology.topic_id(TopicKind::Error)
        ),
    );
    let stage = stage_name(Source::Netsuite);
    let fp2 = fp.clone();
    ctx.wait_for("the replayed invoice to be delivered", WAIT, || async {
        let rows = ctx.audit(stage, &fp2).await?;
        Ok(rows.iter().any(|a| a.outcome == "delivered").then_some(()))
    })
    .await?;
    let last = ctx.netsuite.received_for(&fp);
    let after = ctx.dead_letter(&fp).await?;
    expect(
        last.last().map(|r| r.status) == Some(200)
            && after.as_ref().is_some_and(|d| d.replayed_at.is_some()),
        || {
            "the replayed invoice should be delivered and its dead letter marked replayed"
                .to_string()
        },
    )?;
    n.fact(
        "delivered",
        format!(
            "to NetSuite: HTTP 200 on the replay's first run (request {} for this invoice); dead letter #{} is marked replayed",
            last.len(),
            dl.id
        ),
    );
    Ok(())
}

async fn summary(ctx: &Ctx<'_>, n: &mut Narrator) -> Result<(), DemoError> {
    let events = ctx.count("SELECT COUNT(*) FROM events", &[]).await?;
    let records = ctx.count("SELECT COUNT(*) FROM record_state", &[]).await?;
    let delivered = ctx
        .count(
            "SELECT COUNT(*) FROM event_audit_log WHERE processing_outcome = 'delivered'",
            &[],
        )
        .await?;
    let failed = ctx
        .count(
            "SELECT COUNT(*) FROM event_audit_log WHERE processing_outcome = 'transient' AND stage LIKE 'deliver.%'",
            &[],
        )
        .await?;
    let parked = ctx.count("SELECT COUNT(*) FROM dead_letters", &[]).await?;
    let replayed = ctx
        .count(
            "SELECT COUNT(*) FROM dead_letters WHERE replayed_at IS NOT NULL",
            &[],
        )
        .await?;
    let merged = ctx.observer.all();
    let claim_checked = merged
        .iter()
        .filter(|m| m.full_snapshot_ref.is_some())
        .count();
    n.line("");
    n.line("In all");
    n.kv("Ledger", format!("{events} events for {records} records"));
    n.kv(
        "Merged",
        format!(
            "{} merged events published ({claim_checked} as claim checks)",
            merged.len()
        ),
    );
    n.kv(
        "Deliveries",
        format!("{delivered} delivered, {failed} failed attempts retried or dead-lettered"),
    );
    n.kv(
        "Dead letters",
        format!("{parked} parked, {replayed} replayed"),
    );
    let scraped = scrape_metrics(&ctx.metrics_addr).await;
    match scraped {
        Ok(lines) if !lines.is_empty() => {
            n.line("");
            n.line(format!(
                "A few metrics, scraped from http://{}/metrics:",
                ctx.metrics_addr
            ));
            for l in lines {
                n.line(format!("  {l}"));
            }
        }
        Ok(_) => {}
        Err(e) => n.line(format!("(Scraping the metrics endpoint failed: {e}.)")),
    }
    Ok(())
}

/// The metric lines worth showing after the story.
async fn scrape_metrics(addr: &str) -> Result<Vec<String>, reqwest::Error> {
    const SHOWN: &[&str] = &[
        "backbone_merge_conflicts_total",
        "backbone_retry_attempts_total",
        "backbone_dead_letters_total",
        "backbone_dead_letters_parked",
        "backbone_dlq_replayed_total",
    ];
    let text = reqwest::Client::new()
        .get(format!("http://{addr}/metrics"))
        .timeout(Duration::from_secs(5))
        .send()
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.ends_with(" 0"))
        .filter(|l| {
            SHOWN
                .iter()
                .any(|m| l.strip_prefix(m).is_some_and(|r| r.starts_with(['{', ' '])))
        })
        .map(str::to_string)
        .collect())
}

pub fn where_to_look(metrics_addr: &str, files: &RunFiles, keep_running: bool, n: &mut Narrator) {
    let db_env = format!("BACKBONE__DATABASE__URL='{}'", files.database_url());
    n.line("");
    n.line("Where to look");
    n.kv(
        "Metrics",
        format!(
            "curl {metrics_addr}/metrics{}",
            if keep_running {
                ""
            } else {
                "   (while the daemon runs: add --keep-running to keep it up)"
            }
        ),
    );
    n.kv("Database", files.database.display().to_string());
    n.kv(
        "History",
        format!("{db_env} event-backbone events list --record-type project --record-id 42"),
    );
    n.kv(
        "Dead letters",
        format!("{db_env} event-backbone dlq list --all"),
    );
    n.kv("Daemon log", files.log.display().to_string());
}
