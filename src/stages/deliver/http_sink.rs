//! The HTTP side of delivery: one pooled client per target, the request
//! contract (docs/target-contract.md) and the classification of answers.

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderMap, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use secrecy::{ExposeSecret, SecretString};

use crate::stages::{ErrorClass, StageError};

/// The most of a response body quoted in an error (`last_error` is ≤ 1 KiB).
const BODY_EXCERPT_BYTES: usize = 300;
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
    url: String,
    token: Option<SecretString>,
    timeout: Duration,
    /// Pooled: connections are kept alive between deliveries.
    client: reqwest::Client,
}

/// A 2xx answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub status: u16,
}

/// How a request failed, as pacing reads it (SPEC §4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// 429, or 503 with `Retry-After`: the target asks us to slow down.
    Throttled {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// The connection was refused: nobody listens there.
    Unreachable,
    /// No answer within the timeout.
    Timeout,
    /// A 5xx (or 408).
    Server(u16),
    /// Reset or broken mid-request.
    Broken,
    /// Another 4xx: the target refuses this message.
    Rejected(u16),
}

/// A failed request: the stage's error and what it says about the target.
#[derive(Debug, Clone)]
pub struct SinkFailure {
    pub error: StageError,
    pub signal: Signal,
}

impl HttpSink {
    pub fn new(
        target: &'static str,
        url: String,
        token: Option<SecretString>,
        timeout: Duration,
    ) -> Result<Self, SinkBuildError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .tcp_keepalive(Duration::from_secs(30))
            .build()
            .map_err(|source| SinkBuildError { target, source })?;
        Ok(Self {
            target,
            url,
            token,
            timeout,
            client,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// POSTs `body` (the merged event JSON) with the idempotency key.
    pub async fn post(&self, fingerprint: &str, body: Bytes) -> Result<Delivered, SinkFailure> {
        let mut req = self
            .client
            .post(&self.url)
            .header(CONTENT_TYPE, "application/json")
            .header(
                USER_AGENT,
                concat!("event-backbone/", env!("CARGO_PKG_VERSION")),
            )
            .header("Idempotency-Key", fingerprint)
            .body(body);
        if let Some(token) = &self.token {
            req = req.header(AUTHORIZATION, format!("Bearer {}", token.expose_secret()));
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return Err(self.request_error(&e)),
        };
        let status = resp.status().as_u16();
        if resp.status().is_success() {
            return Ok(Delivered { status });
        }
        let retry_after = retry_after(resp.headers());
        let excerpt = body_excerpt(resp).await;
        let signal = match status {
            429 => Signal::Throttled {
                status,
                retry_after,
            },
            503 if retry_after.is_some() => Signal::Throttled {
                status,
                retry_after,
            },
            408 | 500..=599 => Signal::Server(status),
            _ => Signal::Rejected(status),
        };
        Err(SinkFailure {
            error: classify(self.target, status, &excerpt, retry_after),
            signal,
        })
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
        // reqwest's Display hides the cause (e.g. "connection refused").
        let mut cause = String::new();
        let mut src: Option<&dyn std::error::Error> = std::error::Error::source(e);
        while let Some(s) = src {
            cause = s.to_string();
            src = s.source();
        }
        SinkFailure {
            error: StageError::transient(format!(
                "delivery to {} ({}) {what}: {cause}",
                self.target, self.url
            )),
            signal,
        }
    }
}

/// SPEC §4: 408, 429 and 5xx are worth retrying; any other non-2xx is the
/// target refusing this event for good.
pub fn classify(
    target: &str,
    status: u16,
    body_excerpt: &str,
    retry_after: Option<Duration>,
) -> StageError {
    let class = if status == 408 || status == 429 || (500..600).contains(&status) {
        ErrorClass::Transient
    } else {
        ErrorClass::Permanent
    };
    let mut message = format!("{target} answered HTTP {status}");
    if !body_excerpt.is_empty() {
        message.push_str(": ");
        message.push_str(body_excerpt);
    }
    let mut err = StageError::new(class, message);
    if class == ErrorClass::Transient {
        err.retry_after = retry_after;
    }
    err
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

/// The start of the body, on one line, without control characters; reading
/// stops at the limit so a huge error page costs nothing.
async fn body_excerpt(mut resp: reqwest::Response) -> String {
    let mut buf = Vec::new();
    while buf.len() < BODY_EXCERPT_BYTES {
        match resp.chunk().await {
            Ok(Some(c)) => buf.extend_from_slice(&c),
            Ok(None) | Err(_) => break,
        }
    }
    let cut = buf.len() > BODY_EXCERPT_BYTES;
    buf.truncate(BODY_EXCERPT_BYTES);
    let mut s: String = String::from_utf8_lossy(&buf)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let trimmed = s.trim_end().len();
    s.truncate(trimmed);
    if cut {
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn statuses_are_classified_as_the_spec_says() {
        for s in [408, 429, 500, 502, 503, 504, 599] {
            assert_eq!(
                classify("netsuite", s, "", None).class,
                ErrorClass::Transient,
                "{s}"
            );
        }
        for s in [400, 401, 403, 404, 409, 410, 422, 451, 301, 304] {
            assert_eq!(
                classify("netsuite", s, "", None).class,
                ErrorClass::Permanent,
                "{s}"
            );
        }
    }

    #[test]
    fn the_message_names_status_and_body_and_keeps_retry_after_for_transients() {
        let e = classify(
            "suitex",
            400,
            "field `x` is unknown",
            Some(Duration::from_secs(3)),
        );
        assert_eq!(e.message, "suitex answered HTTP 400: field `x` is unknown");
        assert_eq!(e.retry_after, None);
        let e = classify("suitex", 429, "", Some(Duration::from_secs(3)));
        assert_eq!(e.message, "suitex answered HTTP 429");
        assert_eq!(e.retry_after, Some(Duration::from_secs(3)));
    }

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
