//! The HTTP side of delivery: one pooled client per target, the request
//! contract (docs/target-contract.md), signing (`auth`) and reading the
//! answer (`answer`). Redirects are never followed: a target that
//! redirects is misconfigured (docs/spec.md §4.3).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderMap, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};

use super::answer::classify;
pub use super::answer::{Signal, Vocabulary};
use super::auth::{error_chain, oauth2::TokenError, Auth, Request, SignError};
use crate::stages::StageError;
use crate::store::dlq_status::{TargetAnswer, ANSWER_BODY_MAX};

/// An error body is read up to this much (NetSuite's error JSON is small;
/// a huge error page costs nothing beyond it).
const ERROR_BODY_BYTES: usize = 64 * 1024;
/// A `Retry-After` beyond this is treated as this: the retry schedule still
/// dead-letters eventually, and an hour-long hold helps nobody.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
#[error("cannot build the HTTP client for target {target}: {source}")]
pub struct SinkBuildError {
    pub target: &'static str,
    #[source]
    pub source: reqwest::Error,
}

/// Where and how one target is called.
#[derive(Debug, Clone)]
pub struct HttpSink {
    target: &'static str,
    url: url::Url,
    auth: Arc<Auth>,
    vocabulary: Vocabulary,
    timeout: Duration,
    /// Pooled: connections are kept alive between deliveries.
    client: reqwest::Client,
}

/// A 2xx answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub status: u16,
}

/// A failed request: the stage's error and what it says about the target.
#[derive(Debug, Clone)]
pub struct SinkFailure {
    pub error: StageError,
    pub signal: Signal,
    /// What the target answered (status, capped body, NetSuite code), kept
    /// with a dead letter (docs/spec.md §7.1); `None` without an answer.
    pub answer: Option<TargetAnswer>,
}

/// The client every target (and its OAuth 2.0 token endpoint) is called with.
pub fn client(target: &'static str, timeout: Duration) -> Result<reqwest::Client, SinkBuildError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(64)
        .tcp_keepalive(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|source| SinkBuildError { target, source })
}

impl HttpSink {
    pub fn new(
        target: &'static str,
        url: url::Url,
        auth: Arc<Auth>,
        vocabulary: Vocabulary,
        timeout: Duration,
        client: reqwest::Client,
    ) -> Self {
        Self {
            target,
            url,
            auth,
            vocabulary,
            timeout,
            client,
        }
    }

    pub fn url(&self) -> &str {
        self.url.as_str()
    }

    pub fn auth(&self) -> &Arc<Auth> {
        &self.auth
    }

    /// POSTs `body` (the merged event JSON), signed afresh. A 401 on a
    /// cached OAuth 2.0 token renews it and sends once more; `probe` (a
    /// held target's test request) signs with a new token.
    pub async fn post(
        &self,
        fingerprint: &str,
        body: Bytes,
        probe: bool,
    ) -> Result<Delivered, SinkFailure> {
        self.post_with(fingerprint, body, probe, &[]).await
    }

    /// [`HttpSink::post`] with extra headers (a resync's
    /// `X-Backbone-Resync: true`), signed like every delivery.
    pub async fn post_with(
        &self,
        fingerprint: &str,
        body: Bytes,
        probe: bool,
        extra: &[(&'static str, &str)],
    ) -> Result<Delivered, SinkFailure> {
        let mut renewed = false;
        loop {
            let req = Request {
                method: "POST",
                url: &self.url,
                body: &body,
                fingerprint,
            };
            let signed = self
                .auth
                .sign(&req, probe || renewed)
                .await
                .map_err(|e| self.sign_failure(e))?;
            let mut builder = self
                .client
                .post(self.url.clone())
                .header(CONTENT_TYPE, "application/json")
                .header(
                    USER_AGENT,
                    concat!("event-backbone/", env!("CARGO_PKG_VERSION")),
                )
                .header("Idempotency-Key", fingerprint)
                .body(body.clone());
            for (name, value) in &signed.headers {
                builder = builder.header(name, value.clone());
            }
            for (name, value) in extra {
                builder = builder.header(*name, *value);
            }
            let resp = match builder.send().await {
                Ok(r) => r,
                Err(e) => return Err(self.request_error(&e)),
            };
            let status = resp.status().as_u16();
            if resp.status().is_success() {
                return Ok(Delivered { status });
            }
            let retry_after = retry_after(resp.headers());
            let text = read_capped(resp, ERROR_BODY_BYTES).await;
            let fresh = signed.fresh() || renewed;
            let (signal, error) = classify(
                self.target,
                self.vocabulary,
                status,
                retry_after,
                &text,
                fresh,
            );
            if matches!(signal, Signal::Auth { .. })
                && !renewed
                && self.auth.renew_after_refusal(&signed).await
            {
                renewed = true;
                continue;
            }
            let code = match self.vocabulary {
                Vocabulary::Netsuite => super::answer::parse_netsuite(&text).code,
                Vocabulary::Http => None,
            };
            let body = String::from_utf8_lossy(&text[..text.len().min(ANSWER_BODY_MAX)]);
            let answer = TargetAnswer {
                status: Some(status),
                body: Some(
                    crate::model::limits::truncate_bytes(&body, ANSWER_BODY_MAX).to_string(),
                ),
                netsuite_code: code,
                error: None,
            };
            return Err(SinkFailure {
                error,
                signal,
                answer: Some(answer),
            });
        }
    }

    /// A signed GET to `url` (`doctor`'s credential check): the status and
    /// the start of the body, or why no answer came.
    pub async fn probe_get(&self, url: &url::Url) -> Result<(u16, HeaderMap, Vec<u8>), String> {
        let req = Request {
            method: "GET",
            url,
            body: b"",
            fingerprint: "doctor",
        };
        let signed = self
            .auth
            .sign(&req, true)
            .await
            .map_err(|e| e.to_string())?;
        let mut builder = self.client.get(url.clone());
        for (name, value) in &signed.headers {
            builder = builder.header(name, value.clone());
        }
        let resp = builder.send().await.map_err(|e| error_chain(&e))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        Ok((status, headers, read_capped(resp, ERROR_BODY_BYTES).await))
    }

    /// A request that could not be signed: a secret file that vanished is
    /// the configuration's fault (held), a token endpoint's answer is read
    /// as the target's own.
    fn sign_failure(&self, e: SignError) -> SinkFailure {
        let message = format!("{}: cannot sign the request: {e}", self.target);
        let (signal, error) = match &e {
            SignError::Token(TokenError::Refused { status, .. }) => (
                Signal::Auth {
                    status: *status,
                    fresh: true,
                },
                StageError::transient(message),
            ),
            SignError::Token(TokenError::Failed { status, .. }) => {
                let signal = if *status == 429 {
                    Signal::Throttled {
                        status: 429,
                        retry_after: None,
                    }
                } else {
                    Signal::Server(*status)
                };
                (signal, StageError::transient(message))
            }
            SignError::Token(TokenError::Unreachable(_)) => {
                (Signal::Unreachable, StageError::transient(message))
            }
            SignError::Token(TokenError::Malformed(_)) => {
                (Signal::Broken, StageError::transient(message))
            }
            SignError::Secret(_) | SignError::Header | SignError::Token(TokenError::Sign(_)) => {
                (Signal::Misconfigured(0), StageError::transient(message))
            }
        };
        SinkFailure {
            error,
            signal,
            answer: None,
        }
    }

    fn request_error(&self, e: &reqwest::Error) -> SinkFailure {
        let (what, signal) = if e.is_timeout() {
            (
                format!(
                    "timed out after {}",
                    humantime::format_duration(self.timeout)
                ),
                Signal::Timeout,
            )
        } else if e.is_connect() {
            ("could not connect".to_string(), Signal::Unreachable)
        } else {
            ("request failed".to_string(), Signal::Broken)
        };
        SinkFailure {
            error: StageError::transient(format!(
                "delivery to {} ({}) {what}: {}",
                self.target,
                self.url,
                error_chain(e)
            )),
            signal,
            answer: Some(TargetAnswer {
                error: Some(what),
                ..TargetAnswer::default()
            }),
        }
    }
}

/// `Retry-After` as delta-seconds or an HTTP date (RFC 9110 §10.2.3).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let d = if let Ok(secs) = v.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
        (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO)
    };
    Some(d.min(MAX_RETRY_AFTER))
}

/// Reads at most `cap` bytes of the body; the rest is never downloaded.
async fn read_capped(mut resp: reqwest::Response, cap: usize) -> Vec<u8> {
    let mut buf = Vec::new();
    while buf.len() < cap {
        match resp.chunk().await {
            Ok(Some(c)) => buf.extend_from_slice(&c),
            Ok(None) | Err(_) => break,
        }
    }
    buf.truncate(cap);
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn retry_after_reads_seconds_and_dates_and_is_capped() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(RETRY_AFTER, HeaderValue::from_static("999999"));
        assert_eq!(retry_after(&h), Some(MAX_RETRY_AFTER));
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(
            retry_after(&h),
            Some(Duration::ZERO),
            "a past date means now"
        );
        let soon = (chrono::Utc::now() + chrono::Duration::seconds(120)).to_rfc2822();
        h.insert(RETRY_AFTER, HeaderValue::from_str(&soon).unwrap());
        let d = retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(100) && d <= Duration::from_secs(120),
            "{d:?}"
        );
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }
}
