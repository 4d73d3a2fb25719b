//! Step 6: SuiteX answers 503 a few times; the retry consumer delivers.

use serde_json::json;

use super::ctx::Ctx;
use super::{expect, raw, secs};
use crate::demo::{DemoError, Narrator, SUITEX_FAILURES};
use backbone::model::raw_event::Source;
use backbone::stages::deliver::stage_name;

pub(super) async fn step_recovering_sink(ctx: &Ctx<'_>, n: &mut Narrator) -> Result<(), DemoError> {
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
