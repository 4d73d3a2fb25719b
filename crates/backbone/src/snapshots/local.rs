//! Snapshots in a local folder (`file://dir`), for the embedded default.

use std::path::{Component, Path, PathBuf};

use bytes::Bytes;
use futures::future::BoxFuture;

use tokio::io::AsyncReadExt;

use super::{archive_object_name, object_name, InFlight, Scope, SnapshotError, SnapshotStore};

#[derive(Debug, Clone)]
pub struct LocalSnapshots {
    root: PathBuf,
    /// Where raw events' snapshots must be, under `root`.
    raw_prefix: String,
    in_flight: InFlight,
}

impl LocalSnapshots {
    /// `url` is `file://dir` (relative paths are relative to the working dir).
    pub fn new(url: &str) -> Self {
        Self {
            root: PathBuf::from(url.trim_start_matches("file://")),
            raw_prefix: super::normalize_raw_prefix(super::DEFAULT_RAW_PREFIX),
            in_flight: InFlight::default(),
        }
    }

    /// `snapshots.raw_prefix`: the folder (under the root) raw events'
    /// snapshots must be in.
    pub fn with_raw_prefix(mut self, raw_prefix: &str) -> Self {
        self.raw_prefix = super::normalize_raw_prefix(raw_prefix);
        self
    }

    /// Where a publisher puts a raw event's change set named `name`, and
    /// the reference to send: `file://<root>/<raw_prefix><name>`.
    pub fn raw_path(&self, name: &str) -> (PathBuf, String) {
        let rel = format!("{}{name}", self.raw_prefix);
        (
            self.root.join(&rel),
            format!("file://{}/{rel}", self.root.display()),
        )
    }

    /// Only files inside our folder are followed: a ref must not read
    /// arbitrary files of the host. Paths are compared component by
    /// component (`data/snapshots../x` is not inside `data/snapshots`), then
    /// as the file system resolves them (a symlink out of the folder is
    /// refused too). A file that does not exist is unavailable, not refused.
    /// Returns the file and its name relative to the folder.
    async fn resolve(&self, reference: &str) -> Result<(PathBuf, String), SnapshotError> {
        let refused = |reason: &str| SnapshotError::Refused {
            reference: reference.to_string(),
            reason: reason.to_string(),
        };
        let rest = reference
            .strip_prefix("file://")
            .ok_or_else(|| refused("not a file:// reference"))?;
        let path = lexical(Path::new(rest));
        if Path::new(rest)
            .components()
            .any(|c| matches!(c, Component::ParentDir))
        {
            return Err(refused("`..` is not allowed"));
        }
        let root = lexical(&self.root);
        if !path.starts_with(&root) || path == root {
            return Err(refused("outside the configured snapshot folder"));
        }
        let unavailable = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::NotFound => SnapshotError::Unavailable {
                reference: reference.to_string(),
                reason: e.to_string(),
            },
            _ => SnapshotError::Unreachable {
                reference: reference.to_string(),
                reason: e.to_string(),
            },
        };
        let real_root = tokio::fs::canonicalize(&root).await.map_err(unavailable)?;
        let real = tokio::fs::canonicalize(&path).await.map_err(unavailable)?;
        let Ok(name) = real.strip_prefix(&real_root) else {
            return Err(refused("resolves outside the configured snapshot folder"));
        };
        let name = name.to_string_lossy().into_owned();
        Ok((real, name))
    }
}

/// `p` without `.` components (a leading `./` included); `..` is refused
/// before this matters.
fn lexical(p: &Path) -> PathBuf {
    p.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

impl SnapshotStore for LocalSnapshots {
    fn read<'a>(
        &'a self,
        reference: &'a str,
        scope: Scope,
    ) -> BoxFuture<'a, Result<Bytes, SnapshotError>> {
        Box::pin(async move {
            let (path, name) = self.resolve(reference).await?;
            scope
                .allows(&name, &self.raw_prefix)
                .map_err(|reason| SnapshotError::Refused {
                    reference: reference.to_string(),
                    reason,
                })?;
            let io = |e: std::io::Error| match e.kind() {
                std::io::ErrorKind::NotFound => SnapshotError::Unavailable {
                    reference: reference.to_string(),
                    reason: e.to_string(),
                },
                _ => SnapshotError::Unreachable {
                    reference: reference.to_string(),
                    reason: e.to_string(),
                },
            };
            let max = scope.max_bytes();
            let too_large = |size: u64| SnapshotError::TooLarge {
                reference: reference.to_string(),
                what: scope.what(),
                size,
                max,
            };
            let size = tokio::fs::metadata(&path).await.map_err(io)?.len();
            if size > max {
                return Err(too_large(size));
            }
            let _permit = self.in_flight.reserve(size).await;
            // Capped: the file may have grown since its size was read.
            let mut buf = Vec::with_capacity(size as usize);
            let file = tokio::fs::File::open(&path).await.map_err(io)?;
            file.take(max + 1).read_to_end(&mut buf).await.map_err(io)?;
            if buf.len() as u64 > max {
                return Err(too_large(buf.len() as u64));
            }
            Ok(Bytes::from(buf))
        })
    }

    fn put(&self, data: Bytes) -> BoxFuture<'_, Result<String, SnapshotError>> {
        Box::pin(async move { self.write(object_name(&data), data).await })
    }

    fn put_archive(
        &self,
        data: Bytes,
        suffix: &'static str,
    ) -> BoxFuture<'_, Result<String, SnapshotError>> {
        Box::pin(async move { self.write(archive_object_name(&data, suffix), data).await })
    }
}

impl LocalSnapshots {
    async fn write(&self, name: String, data: Bytes) -> Result<String, SnapshotError> {
        {
            let path = self.root.join(&name);
            let reference = format!("file://{}/{}", self.root.display(), name);
            let unavailable = |e: std::io::Error| SnapshotError::Unreachable {
                reference: reference.clone(),
                reason: e.to_string(),
            };
            if tokio::fs::try_exists(&path).await.unwrap_or(false) {
                return Ok(reference);
            }
            if let Some(parent) = path.parent() {
                tokio::fs::create_dir_all(parent)
                    .await
                    .map_err(unavailable)?;
            }
            // Write then rename, so a reader never sees half an object.
            let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4()));
            tokio::fs::write(&tmp, &data).await.map_err(unavailable)?;
            tokio::fs::rename(&tmp, &path).await.map_err(unavailable)?;
            Ok(reference)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn same_content_same_object_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalSnapshots::new(&format!("file://{}", dir.path().display()));
        let a = s.put(Bytes::from_static(b"{\"a\":1}")).await.unwrap();
        let b = s.put(Bytes::from_static(b"{\"a\":1}")).await.unwrap();
        assert_eq!(a, b);
        assert_eq!(&s.get(&a).await.unwrap()[..], b"{\"a\":1}");
        let files: Vec<_> = std::fs::read_dir(dir.path().join("sha256"))
            .unwrap()
            .collect();
        assert_eq!(files.len(), 1);
    }

    #[tokio::test]
    async fn a_sibling_folder_whose_name_extends_ours_is_outside() {
        // Issue 31: `file://data/snapshots../x` passed a string-prefix check
        // and read `data/snapshots/../x`.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("snapshots");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(dir.path().join("x"), b"{\"secret\":1}").unwrap();
        std::fs::create_dir_all(dir.path().join("snapshots..")).unwrap();
        std::fs::write(dir.path().join("snapshots../x"), b"{}").unwrap();
        let s = LocalSnapshots::new(&format!("file://{}", root.display()));
        for r in [
            format!("file://{}../x", root.display()),
            format!("file://{}x/y", root.display()),
            format!("file://{}", root.display()),
        ] {
            assert!(
                matches!(s.get(&r).await, Err(SnapshotError::Refused { .. })),
                "{r}: {:?}",
                s.get(&r).await
            );
        }
        // A symlink inside the folder that points out of it.
        std::os::unix::fs::symlink(dir.path().join("x"), root.join("link.json")).unwrap();
        let link = format!("file://{}/link.json", root.display());
        assert!(matches!(
            s.get(&link).await,
            Err(SnapshotError::Refused { .. })
        ));
        // `./` in either is the same folder.
        std::fs::create_dir_all(root.join("raw")).unwrap();
        std::fs::write(root.join("raw/ok.json"), b"{}").unwrap();
        let dotted = format!("file://{}/./raw/ok.json", root.display());
        assert_eq!(&s.read(&dotted, Scope::Raw).await.unwrap()[..], b"{}");
        // Raw references stay under raw/, and never reach our own objects.
        let ours = s.put(Bytes::from_static(b"{}")).await.unwrap();
        assert!(matches!(
            s.read(&ours, Scope::Raw).await,
            Err(SnapshotError::Refused { .. })
        ));
        assert!(s.read(&ours, Scope::ClaimCheck).await.is_ok());
    }

    #[tokio::test]
    async fn refuses_paths_outside_the_folder_and_reports_missing_as_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalSnapshots::new(&format!("file://{}", dir.path().display()));
        assert!(matches!(
            s.get("file:///etc/passwd").await,
            Err(SnapshotError::Refused { .. })
        ));
        let missing = format!("file://{}/sha256/nope.json", dir.path().display());
        assert!(matches!(
            s.get(&missing).await,
            Err(SnapshotError::Unavailable { .. })
        ));
    }
}
