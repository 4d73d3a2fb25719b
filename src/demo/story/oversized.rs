//! Step 4: payloads above the claim-check threshold, a change set behind a
//! reference and a merged event too big for its message: each delivered whole.

use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::ctx::{Ctx, Sent};
use super::{expect, filler, kib, raw, target_name, WAIT};
use crate::demo::{DemoError, Narrator};
use backbone::model::raw_event::Source;
use backbone::snapshots::local::LocalSnapshots;

pub(super) async fn step_oversized(ctx: &Ctx<'_>, n: &mut Narrator) -> Result<(), DemoError> {
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
