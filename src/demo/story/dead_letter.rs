//! Step 7: NetSuite rejects every invoice; the delivery is retried on
//! schedule, then dead-lettered, and delivered once the operator replays it.

use std::time::Duration;

use serde_json::json;

use super::ctx::{Ctx, Sent};
use super::{expect, raw, scheduled_waits, secs, REJECTED_TYPE, WAIT, WAIT_EXHAUSTED};
use crate::demo::{DemoError, Narrator};
use backbone::model::raw_event::Source;
use backbone::stages::deliver::stage_name;
use backbone::store::dead_letters::{DeadLetter, DlqFilter};
use backbone::topology::TopicKind;

pub(super) async fn step_dead_letter_and_replay(
    ctx: &Ctx<'_>,
    n: &mut Narrator,
) -> Result<(), DemoError> {
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
    let dl = exhausted(ctx, n, &s).await?;
    replayed(ctx, n, &s, &dl).await
}

/// Every attempt refused, at least the schedule's wait apart, then the
/// `exhausted` dead letter.
async fn exhausted(ctx: &Ctx<'_>, n: &mut Narrator, s: &Sent) -> Result<DeadLetter, DemoError> {
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
    Ok(dl)
}

/// NetSuite fixed, the DLQ replayed: the invoice delivered on the replay's
/// first run, its dead letter marked replayed.
async fn replayed(
    ctx: &Ctx<'_>,
    n: &mut Narrator,
    s: &Sent,
    dl: &DeadLetter,
) -> Result<(), DemoError> {
    let fp = s.fingerprint.clone();
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
