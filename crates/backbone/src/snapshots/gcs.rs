//! Snapshots in a GCS bucket (`gs://bucket[/prefix]`) through the official
//! client; `STORAGE_EMULATOR_HOST` points it at fake-gcs-server locally.

use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use google_cloud_auth::credentials::{anonymous, CacheableResource, Credentials};
use google_cloud_gax::retry_policy::RetryPolicyExt;
use google_cloud_storage::client::Storage;
use google_cloud_storage::retry_policy::RetryableErrors;

use super::{object_name, InFlight, Scope, SnapshotError, SnapshotStore};

/// The environment variable gcloud tools and client libraries use for a
/// local GCS emulator (`http://host:port`).
pub const ENV_VAR_STORAGE_EMULATOR_HOST: &str = "STORAGE_EMULATOR_HOST";

/// How long one read or write may keep retrying inside the client before the
/// stage reports it as transient (the retry path takes it from there).
const CLIENT_RETRY_LIMIT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum GcsSetupError {
    #[error("snapshots.url `{0}` is not gs://bucket[/prefix]")]
    BadUrl(String),
    #[error("cannot build the Cloud Storage client: {0}")]
    Client(String),
}

#[derive(Clone, Debug)]
pub struct GcsSnapshots {
    client: Storage,
    bucket: String,
    /// Object name prefix (empty, or ending in `/`).
    prefix: String,
    /// Where raw events' snapshots must be, under `prefix`.
    raw_prefix: String,
    /// The JSON API, for an object's size before it is read (the client's
    /// read gives it only once the download started, and fake-gcs-server
    /// not at all).
    metadata: Metadata,
    in_flight: InFlight,
}

/// Reads objects' metadata through the JSON API with the client's credentials.
#[derive(Clone, Debug)]
struct Metadata {
    http: reqwest::Client,
    /// `https://storage.googleapis.com` or the emulator's URL.
    endpoint: String,
    credentials: Credentials,
}

/// The JSON API's answer, `fields=size` (a uint64 as a string).
#[derive(serde::Deserialize)]
struct ObjectSize {
    size: String,
}

impl GcsSnapshots {
    /// `url` is `gs://bucket` or `gs://bucket/prefix`; `emulator` is a
    /// `STORAGE_EMULATOR_HOST` value (anonymous credentials are used with it).
    pub async fn new(url: &str, emulator: Option<&str>) -> Result<Self, GcsSetupError> {
        let (bucket, prefix) =
            split_gs(url).ok_or_else(|| GcsSetupError::BadUrl(url.to_string()))?;
        let prefix = match prefix.trim_matches('/') {
            "" => String::new(),
            p => format!("{p}/"),
        };
        let mut builder = Storage::builder()
            .with_retry_policy(RetryableErrors.with_time_limit(CLIENT_RETRY_LIMIT));
        let (endpoint, credentials) = match emulator.map(str::trim).filter(|h| !h.is_empty()) {
            Some(host) => {
                let endpoint = if host.starts_with("http://") || host.starts_with("https://") {
                    host.trim_end_matches('/').to_string()
                } else {
                    format!("http://{host}")
                };
                builder = builder.with_endpoint(endpoint.clone());
                (endpoint, anonymous::Builder::new().build())
            }
            None => (
                GCS_ENDPOINT.to_string(),
                google_cloud_auth::credentials::Builder::default()
                    .build()
                    .map_err(|e| GcsSetupError::Client(e.to_string()))?,
            ),
        };
        builder = builder.with_credentials(credentials.clone());
        let client = builder
            .build()
            .await
            .map_err(|e| GcsSetupError::Client(e.to_string()))?;
        let http = reqwest::Client::builder()
            .timeout(METADATA_TIMEOUT)
            .build()
            .map_err(|e| GcsSetupError::Client(e.to_string()))?;
        Ok(Self {
            client,
            bucket: bucket.to_string(),
            prefix,
            raw_prefix: super::normalize_raw_prefix(super::DEFAULT_RAW_PREFIX),
            metadata: Metadata {
                http,
                endpoint,
                credentials,
            },
            in_flight: InFlight::default(),
        })
    }

    /// `snapshots.raw_prefix`: where (under the bucket's prefix) raw
    /// events' snapshots must be.
    pub fn with_raw_prefix(mut self, raw_prefix: &str) -> Self {
        self.raw_prefix = super::normalize_raw_prefix(raw_prefix);
        self
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    fn bucket_path(&self) -> String {
        format!("projects/_/buckets/{}", self.bucket)
    }

    /// Only objects in our own bucket are followed: a ref into another
    /// environment's bucket must never be read (docs/spec.md §10).
    fn object_of<'r>(&self, reference: &'r str) -> Result<&'r str, SnapshotError> {
        let refused = |reason: String| SnapshotError::Refused {
            reference: reference.to_string(),
            reason,
        };
        let (bucket, object) = split_gs(reference)
            .ok_or_else(|| refused("not a gs://bucket/object reference".into()))?;
        if bucket != self.bucket {
            return Err(refused(format!(
                "bucket `{bucket}` is not the configured snapshot bucket `{}`",
                self.bucket
            )));
        }
        if object.is_empty() {
            return Err(refused("names no object".into()));
        }
        Ok(object)
    }
}

/// `gs://bucket/rest` → (`bucket`, `rest`).
fn split_gs(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("gs://")?;
    let (bucket, object) = rest.split_once('/').unwrap_or((rest, ""));
    (!bucket.is_empty()).then_some((bucket, object))
}

/// For our own content-addressed names, the SHA-256 of the content.
fn expected_sha256(object: &str) -> Option<&str> {
    let rest = object.rsplit_once("sha256/")?.1;
    let hex = rest
        .strip_suffix(".json")
        .or_else(|| rest.strip_suffix(".jsonl.gz"))?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hex)
}

/// The JSON API outside an emulator.
const GCS_ENDPOINT: &str = "https://storage.googleapis.com";
/// How long an object's metadata may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(20);

impl GcsSnapshots {
    /// The object's size from its metadata: nothing is downloaded.
    async fn object_size(&self, object: &str, reference: &str) -> Result<u64, SnapshotError> {
        let unreachable = |reason: String| SnapshotError::Unreachable {
            reference: reference.to_string(),
            reason,
        };
        let mut url = url::Url::parse(&format!("{}/storage/v1/", self.metadata.endpoint))
            .map_err(|e| unreachable(format!("bad endpoint: {e}")))?;
        url.path_segments_mut()
            .map_err(|()| unreachable("bad endpoint".into()))?
            .pop_if_empty()
            .extend(["b", &self.bucket, "o", object]);
        url.query_pairs_mut().append_pair("fields", "size");
        let headers = match self
            .metadata
            .credentials
            .headers(http::Extensions::new())
            .await
        {
            Ok(CacheableResource::New { data, .. }) => data,
            Ok(CacheableResource::NotModified) => http::HeaderMap::new(),
            Err(e) => return Err(unreachable(format!("no credentials: {e}"))),
        };
        let resp = self
            .metadata
            .http
            .get(url)
            .headers(headers)
            .send()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = resp.status().as_u16();
        match status {
            200 => {}
            404 => {
                return Err(SnapshotError::Unavailable {
                    reference: reference.to_string(),
                    reason: "the object does not exist (yet)".to_string(),
                })
            }
            // An answer about this object (e.g. 403): retry later.
            s if (400..500).contains(&s) && s != 408 && s != 429 => {
                return Err(SnapshotError::Unavailable {
                    reference: reference.to_string(),
                    reason: format!("its metadata answered HTTP {s}"),
                })
            }
            s => return Err(unreachable(format!("its metadata answered HTTP {s}"))),
        }
        let meta: ObjectSize = resp
            .json()
            .await
            .map_err(|e| unreachable(format!("its metadata is not readable: {e}")))?;
        meta.size
            .parse()
            .map_err(|e| unreachable(format!("its size `{}` is not a number: {e}", meta.size)))
    }
}

impl SnapshotStore for GcsSnapshots {
    fn read<'a>(
        &'a self,
        reference: &'a str,
        scope: Scope,
    ) -> BoxFuture<'a, Result<Bytes, SnapshotError>> {
        Box::pin(async move {
            let object = self.object_of(reference)?;
            let name = object.strip_prefix(self.prefix.as_str()).ok_or_else(|| {
                SnapshotError::Refused {
                    reference: reference.to_string(),
                    reason: format!("outside the snapshot prefix `{}`", self.prefix),
                }
            })?;
            scope
                .allows(name, &self.raw_prefix)
                .map_err(|reason| SnapshotError::Refused {
                    reference: reference.to_string(),
                    reason,
                })?;
            let max = scope.max_bytes();
            let too_large = |size: u64| SnapshotError::TooLarge {
                reference: reference.to_string(),
                what: scope.what(),
                size,
                max,
            };
            let size = self.object_size(object, reference).await?;
            if size > max {
                return Err(too_large(size));
            }
            let _permit = self.in_flight.reserve(size).await;
            let unavailable = |e: google_cloud_storage::Error| match e.http_status_code() {
                Some(404) => SnapshotError::Unavailable {
                    reference: reference.to_string(),
                    reason: "the object does not exist (yet)".to_string(),
                },
                // An answer about this object (e.g. 403): retry later.
                Some(code) if (400..500).contains(&code) && code != 408 && code != 429 => {
                    SnapshotError::Unavailable {
                        reference: reference.to_string(),
                        reason: e.to_string(),
                    }
                }
                // No answer, a timeout, throttling or a server error.
                _ => SnapshotError::Unreachable {
                    reference: reference.to_string(),
                    reason: e.to_string(),
                },
            };
            let mut resp = self
                .client
                .read_object(self.bucket_path(), object)
                .send()
                .await
                .map_err(unavailable)?;
            // Capped: the object may have been replaced since its size was read.
            let mut buf = Vec::with_capacity(size as usize);
            while let Some(chunk) = resp.next().await {
                buf.extend_from_slice(&chunk.map_err(unavailable)?);
                if buf.len() as u64 > max {
                    return Err(too_large(buf.len() as u64));
                }
            }
            if let Some(want) = expected_sha256(object) {
                let got = crate::model::fingerprint::sha256_hex(&buf);
                if !got.eq_ignore_ascii_case(want) {
                    return Err(SnapshotError::Corrupt {
                        reference: reference.to_string(),
                        reason: format!("content hashes to {got}, not to its name"),
                    });
                }
            }
            Ok(Bytes::from(buf))
        })
    }

    fn put(&self, data: Bytes) -> BoxFuture<'_, Result<String, SnapshotError>> {
        Box::pin(async move {
            let name = format!("{}{}", self.prefix, object_name(&data));
            self.write(name, data, "application/json").await
        })
    }

    fn put_archive(
        &self,
        data: Bytes,
        suffix: &'static str,
    ) -> BoxFuture<'_, Result<String, SnapshotError>> {
        Box::pin(async move {
            let name = format!(
                "{}{}",
                self.prefix,
                super::archive_object_name(&data, suffix)
            );
            let kind = if suffix.ends_with(".gz") {
                "application/gzip"
            } else {
                "application/json"
            };
            self.write(name, data, kind).await
        })
    }
}

impl GcsSnapshots {
    async fn write(
        &self,
        name: String,
        data: Bytes,
        content_type: &'static str,
    ) -> Result<String, SnapshotError> {
        {
            let reference = format!("gs://{}/{}", self.bucket, name);
            // Generation 0 means "only if absent": the same content is
            // written once, and a retried upload cannot overwrite anything.
            let written = self
                .client
                .write_object(self.bucket_path(), name.clone(), data)
                .set_if_generation_match(0)
                .set_content_type(content_type)
                .send_buffered()
                .await;
            match written {
                Ok(_) => Ok(reference),
                Err(e) if e.http_status_code() == Some(412) => Ok(reference),
                Err(e) => Err(SnapshotError::Unreachable {
                    reference,
                    reason: e.to_string(),
                }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gs_urls_split_into_bucket_and_object() {
        assert_eq!(split_gs("gs://b/o/p.json"), Some(("b", "o/p.json")));
        assert_eq!(split_gs("gs://b"), Some(("b", "")));
        assert_eq!(split_gs("gs:///o"), None);
        assert_eq!(split_gs("file://b/o"), None);
    }

    #[test]
    fn content_addressed_names_are_recognised() {
        let hex = "a".repeat(64);
        assert_eq!(
            expected_sha256(&format!("p/sha256/{hex}.json")),
            Some(hex.as_str())
        );
        assert_eq!(expected_sha256("raw/changes.json"), None);
        assert_eq!(expected_sha256("sha256/short.json"), None);
    }

    #[tokio::test]
    async fn refs_outside_the_bucket_are_refused_before_any_request() {
        // No emulator needed: refusal happens before the network.
        let s = GcsSnapshots::new(
            "gs://suitex-payload-snapshots-sandbox",
            Some("http://127.0.0.1:9"),
        )
        .await
        .unwrap();
        for r in [
            "gs://suitex-payload-snapshots-production/sha256/x.json",
            "gs://suitex-payload-snapshots-sandbox",
            "file:///etc/passwd",
        ] {
            assert!(
                matches!(s.get(r).await, Err(SnapshotError::Refused { .. })),
                "{r}"
            );
        }
    }
}
