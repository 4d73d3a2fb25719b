//! The gap sweeper (docs/spec.md §4.1): a record whose pending events have waited
//! longer than `merge.gap_timeout` for a missing version is reported as a
//! `gap` dead letter naming that version. Its pending events stay pending and
//! merge as soon as the gap fills (a late event, a replayed dead letter).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::batch::STAGE;
use crate::internal_events::{emit, GapDeadLettered};
use crate::model::envelope::{self, FailureInfo};
use crate::pubsub::publisher::Publishers;
use crate::store::pending::Gap;
use crate::store::{Store, StoreError};
use crate::topology::TopicKind;

/// Records reported per pass; the rest wait for the next pass.
const PER_PASS: i64 = 200;

/// Runs until `shutdown`: every `every`, refreshes `backbone_merge_pending`
/// and reports the gaps older than `timeout`.
pub async fn run_sweeper(
    store: Store,
    publishers: Arc<Publishers>,
    timeout: Duration,
    every: Duration,
    shutdown: CancellationToken,
) {
    loop {
        match sweep_once(&store, &publishers, timeout).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(records = n, "Gaps reported as dead letters."),
            Err(e) => tracing::warn!(error = %e, "Gap check failed; will try again."),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// One pass; returns how many records were reported.
pub async fn sweep_once(
    store: &Store,
    publishers: &Publishers,
    timeout: Duration,
) -> Result<usize, StoreError> {
    crate::metrics::set_merge_pending(store.timed(store.pending_count()).await?);
    let gaps = store.timed(store.open_gaps(timeout, PER_PASS)).await?;
    let mut reported = 0;
    for gap in gaps {
        // Another replica may report the same record: the claim decides.
        if !store
            .timed(store.claim_gap(&gap.record_type, &gap.record_id))
            .await?
        {
            continue;
        }
        let (version, pending) = store
            .timed(store.record_progress(&gap.record_type, &gap.record_id))
            .await?;
        let why = describe(&gap, version, pending, timeout);
        let p = &gap.oldest;
        let info = FailureInfo {
            stage: STAGE,
            attempt: 1,
            error: &why,
            fingerprint: &p.fingerprint,
            now: Utc::now(),
        };
        let okey = crate::model::raw_event::ordering_key(&gap.record_type, &gap.record_id);
        let attributes = envelope::dead_letter_attributes(
            &p.attributes,
            p.message_id.as_deref().unwrap_or_default(),
            &okey,
            &info,
            "gap",
        );
        match publishers
            .publish_to(TopicKind::Dlq, Bytes::from(p.data.clone()), attributes, "")
            .await
        {
            Ok(_) => {
                reported += 1;
                emit(GapDeadLettered {
                    stage: STAGE,
                    record_type: &gap.record_type,
                    record_id: &gap.record_id,
                    version,
                    pending,
                    why: &why,
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "Could not publish a gap dead letter; it is reported on the next pass.");
                store
                    .timed(store.unclaim_gap(&gap.record_type, &gap.record_id))
                    .await?;
            }
        }
    }
    Ok(reported)
}

/// The dead letter's `last_error`: which version is missing and what waits.
pub fn describe(gap: &Gap, version: i64, pending: i64, timeout: Duration) -> String {
    format!(
        "gap: record {}:{} is at version {version} and missing version {} for more than {}; \
         {} pending event(s) wait for it (the oldest has base_version {}). They merge as soon \
         as version {} is merged (e.g. after a DLQ replay of the missing event).",
        gap.record_type,
        gap.record_id,
        version + 1,
        humantime::format_duration(timeout),
        pending,
        gap.oldest.base_version,
        version + 1,
    )
}
