//! Claim-check snapshots (docs/spec.md §3.1 `full_snapshot_ref`, §3.3): payloads too
//! big for a message live in a bucket (GCS) or, locally, a folder.

pub mod claim_check;
pub mod gcs;
pub mod local;

use bytes::Bytes;
use futures::future::BoxFuture;

#[derive(Debug, Clone, thiserror::Error)]
pub enum SnapshotError {
    /// Not there (yet): worth retrying later (the retry path).
    #[error("snapshot {reference} is not readable: {reason}")]
    Unavailable { reference: String, reason: String },
    /// The store itself does not answer (connection refused or reset, a
    /// timeout, a 5xx): our own infrastructure is down, so the message is
    /// held and retried in-process (docs/spec.md §4.1), not sent down the retry path.
    #[error("snapshot store unreachable for {reference}: {reason}")]
    Unreachable { reference: String, reason: String },
    /// A reference we must never follow (another env's bucket, bad syntax).
    #[error("snapshot reference {reference} is refused: {reason}")]
    Refused { reference: String, reason: String },
    /// The object exists but does not hold what it should.
    #[error("snapshot {reference} is corrupt: {reason}")]
    Corrupt { reference: String, reason: String },
    /// The object is bigger than what a reference of its kind may hold; its
    /// size was read from its metadata and nothing was downloaded.
    #[error("snapshot {reference} is {size} bytes; a {what} may be at most {max} bytes")]
    TooLarge {
        reference: String,
        what: &'static str,
        size: u64,
        max: u64,
    },
}

/// What a reference is read as: where in the store it may point, and how
/// big the object may be (checked from its metadata before any download).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// A raw event's `full_snapshot_ref`, written by a publisher: only under
    /// the raw prefix (`snapshots.raw_prefix`, `raw/`), at most
    /// [`RAW_MAX_BYTES`]. Never our own claim checks or archive.
    Raw,
    /// A merged event's claim check: our own `sha256/` names, at most
    /// [`CLAIM_CHECK_MAX_BYTES`].
    ClaimCheck,
    /// An archive segment or manifest (`archive/`), at most
    /// [`ARCHIVE_MAX_BYTES`].
    Archive,
}

/// `snapshots.raw_prefix`'s default: where publishers put raw events'
/// change sets, under the store's own prefix.
pub const DEFAULT_RAW_PREFIX: &str = "raw/";

/// A raw event's change set by reference: what the event store accepts
/// (compact JSON), so a bigger object can never be merged anyway.
pub const RAW_MAX_BYTES: u64 = crate::model::limits::CHANGES_MAX_BYTES as u64;
/// A merged event's payload: one statement's worth.
pub const CLAIM_CHECK_MAX_BYTES: u64 = crate::model::limits::MIN_MAX_ALLOWED_PACKET as u64;
/// An archive segment (gzip of `retention.segment_events` events).
pub const ARCHIVE_MAX_BYTES: u64 = 1024 * 1024 * 1024;
/// Snapshot bytes a process downloads at once, across every read: a burst
/// of references to big objects waits here instead of filling memory.
pub const IN_FLIGHT_MAX_BYTES: u64 = 64 * 1024 * 1024;

impl Scope {
    pub fn max_bytes(self) -> u64 {
        match self {
            Scope::Raw => RAW_MAX_BYTES,
            Scope::ClaimCheck => CLAIM_CHECK_MAX_BYTES,
            Scope::Archive => ARCHIVE_MAX_BYTES,
        }
    }

    /// How an error names the object's kind.
    pub fn what(self) -> &'static str {
        match self {
            Scope::Raw => "raw event's snapshot",
            Scope::ClaimCheck => "merged event's claim check",
            Scope::Archive => "archive object",
        }
    }

    /// Whether `name` (relative to the store's own prefix) may be read in
    /// this scope; `raw_prefix` is where publishers put raw change sets.
    pub fn allows(self, name: &str, raw_prefix: &str) -> Result<(), String> {
        let ours = |n: &str| n.starts_with("sha256/") || n.starts_with("archive/");
        match self {
            Scope::Raw if ours(name) => Err(format!(
                "`{name}` is one of the daemon's own objects, not a publisher's"
            )),
            Scope::Raw if !name.starts_with(raw_prefix) => Err(format!(
                "raw events' snapshots must be under `{raw_prefix}`"
            )),
            Scope::ClaimCheck if !name.starts_with("sha256/") => {
                Err("a claim check names a `sha256/` object".into())
            }
            Scope::Archive if !name.starts_with("archive/") => {
                Err("an archive object is under `archive/`".into())
            }
            _ => Ok(()),
        }
    }
}

/// `raw_prefix` as stored: no leading `/`, a trailing one unless empty.
pub fn normalize_raw_prefix(raw_prefix: &str) -> String {
    match raw_prefix.trim_matches('/') {
        "" => String::new(),
        p => format!("{p}/"),
    }
}

/// Bounds the bytes being downloaded at once ([`IN_FLIGHT_MAX_BYTES`]).
#[derive(Clone, Debug)]
pub struct InFlight(std::sync::Arc<tokio::sync::Semaphore>);

impl Default for InFlight {
    fn default() -> Self {
        Self(std::sync::Arc::new(tokio::sync::Semaphore::new(
            Self::units(IN_FLIGHT_MAX_BYTES) as usize,
        )))
    }
}

impl InFlight {
    /// KiB, so the budget fits a permit count.
    fn units(bytes: u64) -> u32 {
        u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)
    }

    /// Waits until `size` more bytes may be downloaded (an object bigger
    /// than the whole budget waits for all of it).
    pub async fn reserve(&self, size: u64) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let n = Self::units(size.min(IN_FLIGHT_MAX_BYTES)).max(1);
        self.0.clone().acquire_many_owned(n).await.ok()
    }
}

/// A store of content-addressed snapshot objects.
pub trait SnapshotStore: Send + Sync + 'static {
    /// Reads the object behind `reference` (`gs://…` or `file://…`) as
    /// `scope` allows: refused outside its place in the store, permanent
    /// ([`SnapshotError::TooLarge`]) above its size, nothing downloaded.
    fn read<'a>(
        &'a self,
        reference: &'a str,
        scope: Scope,
    ) -> BoxFuture<'a, Result<Bytes, SnapshotError>>;
    /// Reads one of our own claim checks ([`Scope::ClaimCheck`]).
    fn get<'a>(&'a self, reference: &'a str) -> BoxFuture<'a, Result<Bytes, SnapshotError>> {
        self.read(reference, Scope::ClaimCheck)
    }
    /// Writes `data` under a name derived from its content and returns the
    /// reference; writing the same content twice writes one object.
    fn put(&self, data: Bytes) -> BoxFuture<'_, Result<String, SnapshotError>>;
    /// Writes an archive segment or manifest (docs/spec.md §6.1) under
    /// [`archive_object_name`]: a prefix of its own, so a lifecycle rule on
    /// the claim checks' `sha256/` never touches the archive.
    fn put_archive(
        &self,
        data: Bytes,
        suffix: &'static str,
    ) -> BoxFuture<'_, Result<String, SnapshotError>>;
}

/// `archive/sha256/<hex><suffix>`: an archive object's content-addressed name.
pub fn archive_object_name(data: &[u8], suffix: &str) -> String {
    format!(
        "archive/sha256/{}{suffix}",
        crate::model::fingerprint::sha256_hex(data)
    )
}

/// `sha256/<hex>.json`: the content-addressed object name.
pub fn object_name(data: &[u8]) -> String {
    format!(
        "sha256/{}.json",
        crate::model::fingerprint::sha256_hex(data)
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn downloads_wait_once_the_bytes_in_flight_reach_the_budget() {
        let f = InFlight::default();
        let big = f.reserve(IN_FLIGHT_MAX_BYTES * 4).await.expect("all of it");
        let waiting = tokio::time::timeout(Duration::from_millis(100), f.reserve(1024)).await;
        assert!(waiting.is_err(), "a second download waits");
        drop(big);
        assert!(
            tokio::time::timeout(Duration::from_secs(1), f.reserve(1024))
                .await
                .is_ok()
        );
    }

    #[test]
    fn scopes_confine_references() {
        assert!(Scope::Raw.allows("raw/x.json", "raw/").is_ok());
        assert!(Scope::Raw.allows("sha256/ab.json", "raw/").is_err());
        assert!(Scope::Raw.allows("archive/sha256/ab.jsonl.gz", "").is_err());
        assert!(Scope::Raw.allows("elsewhere/x.json", "raw/").is_err());
        assert!(Scope::Raw.allows("elsewhere/x.json", "").is_ok());
        assert!(Scope::ClaimCheck.allows("sha256/ab.json", "raw/").is_ok());
        assert!(Scope::ClaimCheck.allows("raw/x.json", "raw/").is_err());
        assert!(Scope::Archive
            .allows("archive/sha256/a.jsonl.gz", "raw/")
            .is_ok());
        assert_eq!(normalize_raw_prefix("/raw"), "raw/");
        assert_eq!(normalize_raw_prefix(""), "");
    }
}
