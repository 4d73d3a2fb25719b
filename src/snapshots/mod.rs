//! Claim-check snapshots (SPEC §3.1 `full_snapshot_ref`, §3.3): payloads too
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
    /// held and retried in-process (SPEC §4.1), not sent down the retry path.
    #[error("snapshot store unreachable for {reference}: {reason}")]
    Unreachable { reference: String, reason: String },
    /// A reference we must never follow (another env's bucket, bad syntax).
    #[error("snapshot reference {reference} is refused: {reason}")]
    Refused { reference: String, reason: String },
    /// The object exists but does not hold what it should.
    #[error("snapshot {reference} is corrupt: {reason}")]
    Corrupt { reference: String, reason: String },
}

/// A store of content-addressed snapshot objects.
pub trait SnapshotStore: Send + Sync + 'static {
    /// Reads the object behind `reference` (`gs://…` or `file://…`).
    fn get<'a>(&'a self, reference: &'a str) -> BoxFuture<'a, Result<Bytes, SnapshotError>>;
    /// Writes `data` under a name derived from its content and returns the
    /// reference; writing the same content twice writes one object.
    fn put(&self, data: Bytes) -> BoxFuture<'_, Result<String, SnapshotError>>;
    /// Writes an archive segment or manifest (SPEC §6.1) under
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
