//! Step 2: project 42's creation again, byte for byte: recognised, no effect.

use backbone::topology::StageName;

use super::ctx::{Ctx, Sent};
use super::{expect, project_42_created, short, QUIET, WAIT};
use crate::demo::{DemoError, Narrator};

pub(super) async fn step_duplicate(
    ctx: &Ctx<'_>,
    n: &mut Narrator,
    e1: &Sent,
) -> Result<(), DemoError> {
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
