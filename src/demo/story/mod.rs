//! The scripted story of docs/spec.md §9. Each step publishes raw events, waits for
//! what the daemon did (read back from the database, the stand-in targets and
//! the merged topic, with bounded waits) and narrates it; anything other than
//! the expected result ends the story with an error.

mod ctx;
mod summary;

use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Map, Value};

pub use self::ctx::Ctx;
use self::ctx::Sent;
use self::summary::summary;
pub use self::summary::where_to_look;
use super::targets::Received;
use super::{DemoError, Narrator, SUITEX_FAILURES};
use backbone::model::fingerprint::fingerprint_bytes;
use backbone::model::raw_event::Source;
use backbone::snapshots::local::LocalSnapshots;
use backbone::stages::deliver::stage_name;
use backbone::store::dead_letters::DlqFilter;
use backbone::topology::{StageName, TopicKind};

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

fn short(fp: &str) -> &str {
    fp.get(..12).unwrap_or(fp)
}

fn kib(n: usize) -> String {
    format!("{:.1} KiB", n as f64 / 1024.0)
}

/// The base waits of the retry schedule between `max_attempts` executions
/// (the formula of [`backbone::stages::retry::schedule`], without jitter).
fn scheduled_waits(r: &backbone::config::RetrySettings) -> Vec<Duration> {
    (0..r.max_attempts.saturating_sub(1))
        .map(|i| {
            let secs = r.initial_backoff.as_secs_f64() * r.multiplier.powi(i.min(64) as i32);
            Duration::from_secs_f64(secs.min(r.max_backoff.as_secs_f64()))
        })
        .collect()
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
        let rows = ctx.audit(StageName::Merge.as_str(), &fp).await?;
        Ok(rows.iter().any(|a| a.outcome == "duplicate").then_some(()))
    })
    .await?;
    ctx.pause(QUIET).await?;
    let events = ctx.store.count_record_events("project", "42").await?;
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
    n.step(3, "A conflict (docs/spec.md §5 worked example)");
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
    // In order, and a version that was merged before the previous request
    // went out travels with the next one (docs/spec.md §4.1: a burst, one request).
    expect(
        versions.windows(2).all(|w| w[0] < w[1]) && versions.last() == Some(&7),
        || format!("SuiteX received project 42's versions out of order: {versions:?}"),
    )?;
    n.fact(
        "persisted",
        format!(
            "6 events (sequence {} … {}); project 42 is now v7",
            seqs.first().copied().unwrap_or(0),
            seqs.last().copied().unwrap_or(0)
        ),
    );
    let shown: Vec<String> = versions.iter().map(|v| format!("v{v}")).collect();
    n.fact(
        "delivered",
        format!(
            "to SuiteX in order, in {} request(s) ({}): a version merged before the previous request went out is folded into the next one; not echoed back to NetSuite",
            versions.len(),
            shown.join(", ")
        ),
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
            format!("the conflict did not resolve as in docs/spec.md §5: v{v}, applied {applied}, conflicts {conflicts:?}")
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
    // Where a publisher puts a change set: the raw prefix (`raw/`), the
    // only place a raw event's reference may point.
    let snapshots = LocalSnapshots::new(&ctx.snapshots_url);
    let (path, reference) = snapshots.raw_path("contract-C-7.json");
    let written = async {
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        tokio::fs::write(&path, &big_bytes).await
    };
    written.await.map_err(|e| {
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
    expect(
        dl.reason == "invalid" && dl.stage == StageName::Merge.as_str(),
        || {
            format!(
                "the malformed message should be dead-lettered as invalid by merge, got {} by {}",
                dl.reason, dl.stage
            )
        },
    )?;
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
            "SuiteX answered 503 on attempts 1–{SUITEX_FAILURES}; the retry consumer ran the delivery again after {} (see step 7 for why these waits)",
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
    let measured: Vec<Duration> = tries
        .windows(2)
        .map(|w| w[1].at.duration_since(w[0].at))
        .collect();
    let scheduled = scheduled_waits(&ctx.retry);
    // Jitter only lengthens a wait, and the wait is counted from after the
    // failed request: no measured wait can be shorter than its schedule.
    expect(
        measured.len() == scheduled.len() && measured.iter().zip(&scheduled).all(|(m, s)| m >= s),
        || format!("waits {measured:?} should each be at least the schedule's {scheduled:?}"),
    )?;
    let list = |ds: &[Duration]| ds.iter().map(|d| secs(*d)).collect::<Vec<_>>().join(", ");
    n.fact(
        "retried",
        format!(
            "NetSuite answered 500 on all {max} attempts; waits between them {}",
            list(&measured)
        ),
    );
    n.fact(
        "schedule",
        format!(
            "{} by the retry schedule ({} doubling, capped at {}, plus up to 20 % jitter),",
            list(&scheduled),
            humantime::format_duration(ctx.retry.initial_backoff),
            humantime::format_duration(ctx.retry.max_backoff),
        ),
    );
    n.fact(
        "",
        "each after ~1 s in which the pacer watches for other traffic to NetSuite: with none, \
         a failure counts as the message's own, not as NetSuite being down (docs/spec.md §4.2)",
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
    let report = backbone::dlq::replay(
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
