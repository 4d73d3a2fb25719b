//! `targets.<t>.*`: where and how merged events are delivered (docs/spec.md §4.2,
//! §4.3) — the URL, the target's authentication and error vocabulary, its
//! pacing — and the checks on them.

//!
//! `auth` holds the authentication keys and their checks, one per kind.

mod auth;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

pub use self::auth::{
    account_host, AuthKind, AuthSettings, SecretInput, DEFAULT_HMAC_HEADER, DEFAULT_OAUTH2_SCOPE,
};
use super::error::invalid;
use super::serde_helpers::{duration_str, serialize_redacted_opt};
use super::{ConfigError, TargetsSettings};
use crate::model::raw_event::Source;

/// An HTTP endpoint merged events are delivered to.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Target {
    pub url: Option<String>,
    /// Bearer token sent with each delivery (`auth.kind = "bearer"`, the
    /// kind this implies when `auth.kind` is unset).
    #[serde(serialize_with = "serialize_redacted_opt")]
    pub token: Option<SecretString>,
    /// The bearer token read from a file (a mounted Kubernetes secret).
    pub token_file: Option<PathBuf>,
    #[serde(default)]
    pub auth: AuthSettings,
    /// How the target's refusals are read (docs/spec.md §4.3).
    pub errors: ErrorVocabulary,
    /// Requests in flight to the target across every replica sharing the
    /// database (0 = no cap): NetSuite's limit is per account.
    pub account_concurrency: usize,
    /// Plain `http://` to a host that is not loopback.
    pub allow_http: bool,
    /// Where `doctor` sends a signed GET to check the credentials.
    pub probe_url: Option<String>,
    #[serde(with = "duration_str")]
    pub timeout: Duration,
    /// Pacing (docs/spec.md §4.2): the adaptive concurrency limit starts here…
    pub initial_concurrency: usize,
    /// …and never exceeds this.
    pub max_concurrency: usize,
    /// Optional hard cap in requests per second (0 = none).
    pub rate_limit: f64,
    /// Requests the rate cap lets through at once after a quiet spell.
    pub rate_burst: u32,
    /// A `Retry-After` longer than this pauses the target for this long.
    #[serde(with = "duration_str")]
    pub max_retry_after: Duration,
    /// Consecutive failures (5xx, timeouts, resets) over at least two
    /// records, with no success in between, that open the circuit.
    pub circuit_failures: u32,
    /// Longest wait between two probes of an open circuit.
    #[serde(with = "duration_str")]
    pub probe_max_interval: Duration,
    /// How long a database lease on a (target, record) delivery lasts when
    /// its holder dies; renewed while its delivery is out.
    #[serde(with = "duration_str")]
    pub lease_ttl: Duration,
    /// How old a record's merged event must be before its first live
    /// delivery sends (0: at once): a burst then goes as one request.
    #[serde(with = "duration_str")]
    pub coalesce: Duration,
    /// While idle, deliver from the store what nobody is delivering (a
    /// replica that died holding the messages), before the broker hands
    /// the messages back.
    pub takeover: bool,
}
/// `targets.<t>.errors`: how answers other than 2xx are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorVocabulary {
    /// Statuses only (and 401/403 as authentication failures).
    Http,
    /// NetSuite's error codes in RESTlet and REST API bodies too.
    Netsuite,
}
impl Target {
    /// Checks one target's keys (`name` is `netsuite` or `suitex`).
    pub(super) fn validate(&self, name: &str) -> Result<(), ConfigError> {
        let key = |k: &str| format!("targets.{name}.{k}");
        for (k, u) in [("url", &self.url), ("probe_url", &self.probe_url)] {
            if let Some(u) = u {
                check_url(u, self.allow_http, &key(k), &key("allow_http"))?;
            }
        }
        self.validate_pacing(name)?;
        if self.account_concurrency > 1000 {
            return Err(invalid(
                &key("account_concurrency"),
                "must be between 0 (no cap) and 1000",
            ));
        }
        self.validate_auth(name)
    }

    fn validate_pacing(&self, name: &str) -> Result<(), ConfigError> {
        let key = |k: &str| format!("targets.{name}.{k}");
        if self.timeout.is_zero() {
            return Err(invalid(&key("timeout"), "must be greater than 0"));
        }
        if self.max_concurrency < 1 || self.max_concurrency > 10_000 {
            return Err(invalid(
                &key("max_concurrency"),
                "must be between 1 and 10000",
            ));
        }
        if self.initial_concurrency < 1 || self.initial_concurrency > self.max_concurrency {
            return Err(invalid(
                &key("initial_concurrency"),
                format!(
                    "must be between 1 and targets.{name}.max_concurrency ({})",
                    self.max_concurrency
                ),
            ));
        }
        if !self.rate_limit.is_finite() || self.rate_limit < 0.0 {
            return Err(invalid(
                &key("rate_limit"),
                "must be 0 (no cap) or a positive number of requests per second",
            ));
        }
        if self.rate_limit > 0.0 && self.rate_burst < 1 {
            return Err(invalid(&key("rate_burst"), "must be at least 1"));
        }
        if self.max_retry_after.is_zero() {
            return Err(invalid(&key("max_retry_after"), "must be greater than 0"));
        }
        if self.circuit_failures < 1 {
            return Err(invalid(&key("circuit_failures"), "must be at least 1"));
        }
        if self.probe_max_interval < Duration::from_millis(100) {
            return Err(invalid(
                &key("probe_max_interval"),
                "must be at least 100ms",
            ));
        }
        // Renewed every third of it while a delivery holds it, and given up
        // a quarter early: seconds are enough, and less leaves no room for
        // a slow renewal or the replicas' clocks.
        if self.lease_ttl < Duration::from_secs(3) {
            return Err(invalid(&key("lease_ttl"), "must be at least 3s"));
        }
        // Waited before the record's lease is taken (a delivery claims it
        // only when next in line), so it is bounded on its own: a burst
        // worth folding is seconds long.
        if self.coalesce > Duration::from_secs(10) {
            return Err(invalid(&key("coalesce"), "must be at most 10s"));
        }
        Ok(())
    }
}

impl TargetsSettings {
    /// The settings of `target` (`targets.<target>`).
    pub fn get(&self, target: Source) -> &Target {
        match target {
            Source::Netsuite => &self.netsuite,
            Source::Suitex => &self.suitex,
        }
    }
}

/// An http(s) URL with a host, no credentials, and `https` unless the host
/// is loopback or `allow_http` is set.
fn check_url(u: &str, allow_http: bool, key: &str, allow_key: &str) -> Result<(), ConfigError> {
    let parsed = match url::Url::parse(u) {
        Ok(p)
            if matches!(p.scheme(), "http" | "https")
                && p.host_str().is_some_and(|h| !h.is_empty()) =>
        {
            p
        }
        _ => {
            return Err(invalid(
                key,
                "must be an http:// or https:// URL with a host",
            ))
        }
    };
    if !parsed.username().is_empty() || parsed.password().is_some() {
        // The URL is not echoed: it holds a credential.
        return Err(invalid(
            key,
            "carries credentials (user:password@); credentials belong in the target's auth.* keys or token, never in its URL",
        ));
    }
    if parsed.scheme() == "http" && !allow_http && !is_loopback(&parsed) {
        return Err(invalid(
            key,
            format!(
                "`{u}` is plain http to a host that is not loopback; use https, or set {allow_key} = true for a network you trust"
            ),
        ));
    }
    Ok(())
}

fn is_loopback(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}
#[cfg(test)]
mod tests {
    use super::super::test_support::{expect_invalid, load_with};
    use super::*;

    #[test]
    fn defaults_read_netsuite_codes_for_netsuite_and_statuses_for_suitex() {
        let s = load_with(&[]).unwrap();
        assert_eq!(s.targets.netsuite.errors, ErrorVocabulary::Netsuite);
        assert_eq!(s.targets.suitex.errors, ErrorVocabulary::Http);
        assert_eq!(s.targets.netsuite.account_concurrency, 0);
        assert_eq!(s.targets.netsuite.auth_kind(), AuthKind::None);
        let s = load_with(&[("BACKBONE__TARGETS__SUITEX__TOKEN", "t")]).unwrap();
        assert_eq!(
            s.targets.suitex.auth_kind(),
            AuthKind::Bearer,
            "a token alone keeps working"
        );
    }

    #[test]
    fn coalesce_is_bounded_on_its_own_not_by_the_lease() {
        // Waited before the lease is taken: longer than a quarter of the
        // default 5 s lease is fine.
        let s = load_with(&[("BACKBONE__TARGETS__NETSUITE__COALESCE", "4s")]).unwrap();
        assert_eq!(s.targets.netsuite.coalesce, Duration::from_secs(4));
        assert_eq!(s.targets.netsuite.lease_ttl, Duration::from_secs(5));
        let msg = expect_invalid(
            &[("BACKBONE__TARGETS__NETSUITE__COALESCE", "11s")],
            "targets.netsuite.coalesce",
        );
        assert!(msg.contains("at most 10s"), "{msg}");
    }

    #[test]
    fn urls_are_https_without_credentials_unless_loopback_or_allowed() {
        let msg = expect_invalid(
            &[(
                "BACKBONE__TARGETS__SUITEX__URL",
                "http://suitex.example/hook",
            )],
            "targets.suitex.url",
        );
        assert!(msg.contains("allow_http"), "{msg}");
        load_with(&[(
            "BACKBONE__TARGETS__SUITEX__URL",
            "http://127.0.0.1:8080/hook",
        )])
        .unwrap();
        load_with(&[("BACKBONE__TARGETS__SUITEX__URL", "http://localhost/hook")]).unwrap();
        load_with(&[
            ("BACKBONE__TARGETS__SUITEX__URL", "http://suitex.svc/hook"),
            ("BACKBONE__TARGETS__SUITEX__ALLOW_HTTP", "true"),
        ])
        .unwrap();
        let msg = expect_invalid(
            &[(
                "BACKBONE__TARGETS__SUITEX__URL",
                "https://user:pa55@suitex.example/hook",
            )],
            "targets.suitex.url",
        );
        assert!(
            !msg.contains("pa55"),
            "the credential is never echoed: {msg}"
        );
        expect_invalid(
            &[("BACKBONE__TARGETS__NETSUITE__ACCOUNT_CONCURRENCY", "5000")],
            "targets.netsuite.account_concurrency",
        );
    }
}
