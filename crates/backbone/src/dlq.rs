//! DLQ replay (docs/spec.md §4 "replay"): parked, not-yet-replayed dead letters go
//! back to the error topic with `attempt=0` and `replay=true`, so the retry
//! consumer runs their stage at once. A row is marked replayed only after
//! its publish succeeded; a claim keeps two concurrent replays apart.

use std::collections::HashMap;

use bytes::Bytes;
use serde::Serialize;

use crate::internal_events::{emit, DeadLetterReplayed};
use crate::model::envelope;
use crate::pubsub::publisher::Publishers;
use crate::stages::park::REPLAY_OF;
use crate::store::dead_letters::{DeadLetter, DlqFilter};
use crate::store::{Store, StoreError};
use crate::topology::TopicKind;

/// Rows handled by one replay call at most.
pub const MAX_BATCH: i64 = 10_000;
/// Rows read per page (ids and details only, never their data).
pub const PAGE: i64 = 200;

#[derive(Debug, Default, Serialize)]
pub struct ReplayReport {
    pub dry_run: bool,
    /// Rows republished (or, in a dry run, that would be).
    pub replayed: Vec<i64>,
    /// Rows another replay had claimed.
    pub skipped: Vec<i64>,
    /// Rows whose publish failed (left pending).
    pub failed: Vec<(i64, String)>,
}

/// The attributes of a replayed message: the stored ones without the
/// broker's dead-letter markers, plus attempt 0, replay and the row id —
/// within Pub/Sub's limits, however many the row holds (a row parked as
/// `unpublishable` keeps the original's attributes whole).
pub fn replay_attributes(dl: &DeadLetter) -> HashMap<String, String> {
    let stored: HashMap<String, String> = dl
        .attributes
        .iter()
        .filter(|(k, _)| !k.starts_with("CloudPubSubDeadLetter"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // The envelope fields of the last failure (history, origin, first
    // failure) go along; the dead-letter ones do not.
    let mut ours: HashMap<String, String> = [
        envelope::FIRST_FAILED_AT,
        envelope::LAST_ERROR,
        envelope::ORIGIN_MESSAGE_ID,
        envelope::ERROR_HISTORY,
    ]
    .iter()
    .filter_map(|k| stored.get(*k).map(|v| (k.to_string(), v.clone())))
    .collect();
    ours.insert(envelope::STAGE.into(), dl.stage.clone());
    ours.insert(envelope::ATTEMPT.into(), "0".into());
    ours.insert(envelope::REPLAY.into(), "true".into());
    ours.insert(REPLAY_OF.into(), dl.id.to_string());
    if let Some(k) = dl
        .ordering_key
        .as_ref()
        .or(stored.get(envelope::ORDERING_KEY))
    {
        ours.insert(envelope::ORDERING_KEY.into(), k.clone());
    }
    if let Some(fp) = dl
        .fingerprint
        .as_ref()
        .or(stored.get(envelope::FINGERPRINT))
    {
        ours.insert(envelope::FINGERPRINT.into(), fp.clone());
    }
    envelope::within_limits(ours, &stored)
}

/// [`replay_by`] for a caller that does not name itself (actor `api`).
pub async fn replay(
    store: &Store,
    publishers: &Publishers,
    filter: &DlqFilter,
    dry_run: bool,
) -> Result<ReplayReport, StoreError> {
    replay_by(store, publishers, filter, dry_run, "api").await
}

/// Replays the parked rows `filter` selects (never discarded, superseded
/// or replayed ones); `actor` is recorded on each row and its audit row.
pub async fn replay_by(
    store: &Store,
    publishers: &Publishers,
    filter: &DlqFilter,
    dry_run: bool,
    actor: &str,
) -> Result<ReplayReport, StoreError> {
    let mut f = filter.clone();
    f.include_replayed = false;
    f.status = None;
    let mut report = ReplayReport {
        dry_run,
        ..Default::default()
    };
    // Page by id, without data: a dry run reads no message at all, and a
    // replay holds one message's data at a time, however many are parked.
    let mut after = None;
    let mut seen: i64 = 0;
    while seen < MAX_BATCH {
        let page = store
            .dead_letter_page(&f, after, PAGE.min(MAX_BATCH - seen))
            .await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        seen += page.len() as i64;
        for row in page {
            if dry_run {
                report.replayed.push(row.id);
                continue;
            }
            replay_one(store, publishers, row.id, actor, &mut report).await?;
        }
    }
    if let Ok(n) = store.pending_dead_letters().await {
        crate::metrics::set_dead_letters_parked(n);
    }
    tracing::info!(
        replayed = report.replayed.len(),
        skipped = report.skipped.len(),
        failed = report.failed.len(),
        dry_run,
        "DLQ replay finished."
    );
    Ok(report)
}

/// Replays exactly these rows (a selection an operator previewed), each
/// only if it is still parked.
pub async fn replay_ids(
    store: &Store,
    publishers: &Publishers,
    ids: &[i64],
    actor: &str,
) -> Result<ReplayReport, StoreError> {
    let mut report = ReplayReport::default();
    for id in ids.iter().take(MAX_BATCH as usize) {
        replay_one(store, publishers, *id, actor, &mut report).await?;
    }
    if let Ok(n) = store.pending_dead_letters().await {
        crate::metrics::set_dead_letters_parked(n);
    }
    Ok(report)
}

/// Claims, loads (with its data), republishes and marks one row.
async fn replay_one(
    store: &Store,
    publishers: &Publishers,
    id: i64,
    actor: &str,
    report: &mut ReplayReport,
) -> Result<(), StoreError> {
    if !store.claim_replay(id).await? {
        report.skipped.push(id);
        return Ok(());
    }
    let Some(dl) = store.dead_letter(id).await? else {
        // Archived or purged since the page was read.
        report.skipped.push(id);
        return Ok(());
    };
    let attributes = replay_attributes(&dl);
    let published = publishers
        .publish_to(TopicKind::Error, Bytes::from(dl.data), attributes, "")
        .await;
    match published {
        Ok(_) => {
            store.mark_replayed(id, actor).await?;
            emit(DeadLetterReplayed);
            report.replayed.push(id);
        }
        Err(e) => {
            store.release_replay(id).await?;
            report.failed.push((id, e.to_string()));
        }
    }
    Ok(())
}
