//! Step 3: the worked example of docs/spec.md §5. NetSuite's run of edits
//! (in order, not echoed back), then SuiteX's edit on a stale base whose
//! status loses to NetSuite's later one.

use serde_json::{json, Value};

use super::ctx::Ctx;
use super::{expect, raw};
use crate::demo::targets::Received;
use crate::demo::{DemoError, Narrator};
use backbone::model::raw_event::Source;

pub(super) async fn step_conflict(ctx: &Ctx<'_>, n: &mut Narrator) -> Result<(), DemoError> {
    n.step(3, "A conflict (docs/spec.md §5 worked example)");
    netsuite_edits(ctx, n).await?;
    stale_suitex_edit(ctx, n).await
}

/// Six NetSuite edits (v2 … v7): delivered to SuiteX in order, skipped for
/// NetSuite (their source).
async fn netsuite_edits(ctx: &Ctx<'_>, n: &mut Narrator) -> Result<(), DemoError> {
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
    Ok(())
}

/// SuiteX's edit on v6, stamped before NetSuite's last: its status loses
/// the conflict, its name applies; both targets learn the result.
async fn stale_suitex_edit(ctx: &Ctx<'_>, n: &mut Narrator) -> Result<(), DemoError> {
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
