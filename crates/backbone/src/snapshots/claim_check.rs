//! Claim check for merged events (docs/spec.md §3.3): a payload above the threshold
//! is stored in the snapshot store and the message carries a small pointer
//! event with `full_snapshot_ref`; consumers resolve it back transparently.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Map;

use super::{SnapshotError, SnapshotStore};
use crate::model::merged_event::MergedEvent;

/// The store and the size above which a merged payload is claim-checked.
#[derive(Clone)]
pub struct ClaimCheck {
    pub store: Arc<dyn SnapshotStore>,
    pub threshold_bytes: u64,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ClaimCheckError {
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The message itself is not a merged event.
    #[error("invalid merged event: {0}")]
    Malformed(String),
}

impl ClaimCheck {
    pub fn new(store: Arc<dyn SnapshotStore>, threshold_bytes: u64) -> Self {
        Self {
            store,
            threshold_bytes,
        }
    }

    /// What to publish for `payload` (a merged event's JSON).
    pub async fn shrink(&self, payload: Bytes) -> Result<Bytes, ClaimCheckError> {
        shrink(self.store.as_ref(), self.threshold_bytes, payload).await
    }

    /// The full merged event behind a message, and its JSON.
    pub async fn resolve(&self, data: &Bytes) -> Result<(MergedEvent, Bytes), ClaimCheckError> {
        resolve(self.store.as_ref(), data).await
    }
}

/// Returns `payload` unchanged when it is at most `threshold` bytes;
/// otherwise stores it (content-addressed, so a republish writes nothing new)
/// and returns the pointer event: same ids, fingerprint, origin, versions and
/// timestamp, `applied` `{}`, `conflicts` `[]`, plus `full_snapshot_ref`.
pub async fn shrink(
    store: &dyn SnapshotStore,
    threshold: u64,
    payload: Bytes,
) -> Result<Bytes, ClaimCheckError> {
    if payload.len() as u64 <= threshold {
        return Ok(payload);
    }
    let full: MergedEvent =
        serde_json::from_slice(&payload).map_err(|e| ClaimCheckError::Malformed(e.to_string()))?;
    let reference = store.put(payload).await?;
    let pointer = MergedEvent {
        applied: Map::new(),
        conflicts: Vec::new(),
        full_snapshot_ref: Some(reference),
        ..full
    };
    let bytes =
        serde_json::to_vec(&pointer).map_err(|e| ClaimCheckError::Malformed(e.to_string()))?;
    Ok(Bytes::from(bytes))
}

/// Parses a merged message; a pointer is swapped for the stored event, which
/// must be the same event (same id and fingerprint) and not another pointer.
pub async fn resolve(
    store: &dyn SnapshotStore,
    data: &Bytes,
) -> Result<(MergedEvent, Bytes), ClaimCheckError> {
    let ev: MergedEvent =
        serde_json::from_slice(data).map_err(|e| ClaimCheckError::Malformed(e.to_string()))?;
    let Some(reference) = ev.full_snapshot_ref.clone() else {
        return Ok((ev, data.clone()));
    };
    let bytes = store.get(&reference).await?;
    let corrupt = |reason: String| {
        ClaimCheckError::Snapshot(SnapshotError::Corrupt {
            reference: reference.clone(),
            reason,
        })
    };
    let full: MergedEvent =
        serde_json::from_slice(&bytes).map_err(|e| corrupt(format!("not a merged event: {e}")))?;
    if full.event_id != ev.event_id || full.fingerprint != ev.fingerprint {
        return Err(corrupt(format!(
            "holds event {} ({}), not {} ({})",
            full.event_id, full.fingerprint, ev.event_id, ev.fingerprint
        )));
    }
    if full.full_snapshot_ref.is_some() {
        return Err(corrupt("is itself a pointer".into()));
    }
    Ok((full, bytes))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::snapshots::local::LocalSnapshots;

    fn merged(applied: serde_json::Value) -> Bytes {
        Bytes::from(
            json!({
                "event_id": "0190b6a0-0000-7000-8000-000000000001", "fingerprint": "ab",
                "record_type": "project", "record_id": "42", "origin": "suitex",
                "version": 8, "base_version": 7, "timestamp": "2026-03-13T20:00:00.123456Z",
                "applied": applied, "conflicts": []
            })
            .to_string(),
        )
    }

    #[tokio::test]
    async fn small_payloads_pass_and_big_ones_round_trip_through_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalSnapshots::new(&format!("file://{}", dir.path().display()));
        let small = merged(json!({"name": "x"}));
        assert_eq!(shrink(&store, 1024, small.clone()).await.unwrap(), small);

        let big = merged(json!({"blob": "x".repeat(4096)}));
        let out = shrink(&store, 1024, big.clone()).await.unwrap();
        assert!(out.len() < 1024, "{}", out.len());
        let pointer: MergedEvent = serde_json::from_slice(&out).unwrap();
        assert!(pointer.applied.is_empty() && pointer.conflicts.is_empty());
        assert_eq!((pointer.version, pointer.base_version), (8, 7));
        assert!(pointer
            .full_snapshot_ref
            .as_deref()
            .unwrap()
            .starts_with("file://"));

        let (full, bytes) = resolve(&store, &out).await.unwrap();
        assert_eq!(bytes, big);
        assert_eq!(full.applied["blob"].as_str().unwrap().len(), 4096);
        // An inline event resolves to itself.
        let (_, same) = resolve(&store, &small).await.unwrap();
        assert_eq!(same, small);
    }

    #[tokio::test]
    async fn a_pointer_to_another_event_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalSnapshots::new(&format!("file://{}", dir.path().display()));
        let other = store.put(merged(json!({"a": 1}))).await.unwrap();
        let mut pointer: serde_json::Value = serde_json::from_slice(&merged(json!({}))).unwrap();
        pointer["fingerprint"] = json!("cd");
        pointer["full_snapshot_ref"] = json!(other);
        let data = Bytes::from(pointer.to_string());
        assert!(matches!(
            resolve(&store, &data).await,
            Err(ClaimCheckError::Snapshot(SnapshotError::Corrupt { .. }))
        ));
        assert!(matches!(
            resolve(&store, &Bytes::from_static(b"nope")).await,
            Err(ClaimCheckError::Malformed(_))
        ));
    }
}
