//! Step 1: a record created at each source, merged and delivered to the other.

use serde_json::json;

use super::ctx::{Ctx, Sent};
use super::{project_42_created, raw};
use crate::demo::{DemoError, Narrator};
use backbone::model::raw_event::Source;

pub(super) async fn step_new_records(ctx: &Ctx<'_>, n: &mut Narrator) -> Result<Sent, DemoError> {
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
