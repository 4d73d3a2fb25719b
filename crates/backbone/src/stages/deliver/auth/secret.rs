//! A credential as the target's signer reads it: a value from the
//! configuration, or a file (a mounted Kubernetes secret) read again when
//! it changes, so a rotated secret takes effect without a restart.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use secrecy::{ExposeSecret, SecretString};

/// The file could not be read; never carries the value.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot read the secret file {}: {reason}", .path.display())]
pub struct SecretError {
    pub path: PathBuf,
    pub reason: String,
}

pub enum Secret {
    Value(SecretString),
    File {
        path: PathBuf,
        /// The value and the file's modification time when it was read.
        cache: Mutex<Option<(SystemTime, SecretString)>>,
    },
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Secret::Value(_) => f.write_str("Secret([redacted])"),
            Secret::File { path, .. } => write!(f, "Secret(file {})", path.display()),
        }
    }
}

impl Secret {
    pub fn value(s: impl Into<String>) -> Self {
        Secret::Value(SecretString::from(s.into()))
    }

    pub fn file(path: impl Into<PathBuf>) -> Self {
        Secret::File {
            path: path.into(),
            cache: Mutex::new(None),
        }
    }

    /// The current value. A file is read when its modification time
    /// changed (one `stat` per use otherwise); surrounding whitespace, such
    /// as the newline `kubectl create secret --from-file` keeps, is dropped.
    pub fn read(&self) -> Result<SecretString, SecretError> {
        match self {
            Secret::Value(v) => Ok(v.clone()),
            Secret::File { path, cache } => {
                let fail = |e: std::io::Error| SecretError {
                    path: path.clone(),
                    reason: e.to_string(),
                };
                let modified = std::fs::metadata(path)
                    .and_then(|m| m.modified())
                    .map_err(fail)?;
                let mut c = cache.lock().unwrap_or_else(|p| p.into_inner());
                if let Some((at, v)) = c.as_ref() {
                    if *at == modified {
                        return Ok(v.clone());
                    }
                }
                let v = read_trimmed(path).map_err(fail)?;
                if v.expose_secret().is_empty() {
                    return Err(SecretError {
                        path: path.clone(),
                        reason: "the file is empty".into(),
                    });
                }
                *c = Some((modified, v.clone()));
                Ok(v)
            }
        }
    }
}

fn read_trimmed(path: &Path) -> std::io::Result<SecretString> {
    let text = std::fs::read_to_string(path)?;
    Ok(SecretString::from(text.trim().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_read_trimmed_and_again_after_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, "first\n").unwrap();
        let s = Secret::file(&path);
        assert_eq!(s.read().unwrap().expose_secret(), "first");
        // A rotation: a new file moved into place (as the kubelet does),
        // with a different modification time.
        let next = dir.path().join("s.new");
        std::fs::write(&next, "second").unwrap();
        let later = SystemTime::now() + std::time::Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&next)
            .unwrap()
            .set_modified(later)
            .unwrap();
        std::fs::rename(&next, &path).unwrap();
        assert_eq!(s.read().unwrap().expose_secret(), "second");
    }

    #[test]
    fn a_missing_or_empty_file_names_the_path_not_a_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing");
        let e = Secret::file(&path).read().unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
        std::fs::write(&path, " \n").unwrap();
        let e = Secret::file(&path).read().unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
        assert_eq!(
            format!("{:?}", Secret::value("hunter2")),
            "Secret([redacted])"
        );
    }
}
