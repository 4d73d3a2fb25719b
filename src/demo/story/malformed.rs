//! Step 5: truncated JSON on the raw topic, parked as invalid.

use bytes::Bytes;

use super::ctx::Ctx;
use super::{expect, WAIT};
use crate::demo::{DemoError, Narrator};
use backbone::model::fingerprint::fingerprint_bytes;
use backbone::topology::StageName;

pub(super) async fn step_malformed(ctx: &Ctx<'_>, n: &mut Narrator) -> Result<(), DemoError> {
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
