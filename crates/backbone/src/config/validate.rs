//! Checks on loaded settings that types alone cannot express.

use std::net::SocketAddr;
use std::time::Duration;

use secrecy::ExposeSecret;

use super::error::invalid;
use super::{ConfigError, Settings};
use crate::model::raw_event::Source;
use crate::topology::ConsumerKind;

/// Pub/Sub rejects messages over 10 MB, so a larger threshold could never apply.
const MAX_CLAIM_CHECK_THRESHOLD: u64 = 10_000_000;

impl Settings {
    /// Checks what types alone cannot; the first problem found is returned,
    /// so the sections are checked in this order (the one error messages
    /// have always come in).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_pubsub()?;
        self.validate_database()?;
        self.validate_buckets()?;
        self.validate_retry()?;
        self.validate_merge()?;
        self.validate_targets()?;
        self.validate_consumers()?;
        self.validate_http()?;
        self.validate_intervals()?;
        self.validate_retention()?;
        self.validate_process()
    }

    fn validate_pubsub(&self) -> Result<(), ConfigError> {
        if !is_gcp_project_id(&self.pubsub.project_id) {
            return Err(invalid(
                "pubsub.project_id",
                format!(
                    "`{}` is not a GCP project id (6-30 characters: lowercase letters, digits and hyphens, starting with a letter, not ending with a hyphen)",
                    self.pubsub.project_id
                ),
            ));
        }
        if let Some(host) = &self.pubsub.emulator_host {
            if !is_host_port(host) {
                return Err(invalid(
                    "pubsub.emulator_host",
                    format!("`{host}` must be host:port, e.g. 127.0.0.1:8085"),
                ));
            }
        }
        Ok(())
    }

    fn validate_database(&self) -> Result<(), ConfigError> {
        // Never echo the database URL: it may hold the password.
        let db_url = self.database.url.expose_secret();
        if db_url.starts_with("mysql://") {
            match url::Url::parse(db_url) {
                Ok(u) if u.host_str().is_some_and(|h| !h.is_empty()) => {}
                Ok(_) => return Err(invalid("database.url", "mysql:// URL has no host")),
                Err(e) => {
                    return Err(invalid(
                        "database.url",
                        format!("is not a valid mysql:// URL: {e}"),
                    ))
                }
            }
        } else if let Some(rest) = db_url.strip_prefix("sqlite://") {
            if rest.is_empty() {
                return Err(invalid("database.url", "sqlite:// URL has no path"));
            }
        } else {
            return Err(invalid(
                "database.url",
                "must start with mysql:// or sqlite://",
            ));
        }
        if self.database.max_connections < 1 {
            return Err(invalid("database.max_connections", "must be at least 1"));
        }
        if self.database.connect_timeout.is_zero() {
            return Err(invalid(
                "database.connect_timeout",
                "must be greater than 0",
            ));
        }
        if self.database.query_timeout < Duration::from_millis(100) {
            return Err(invalid("database.query_timeout", "must be at least 100ms"));
        }
        Ok(())
    }

    /// `snapshots.*` and the archive's bucket (`retention.archive_url`):
    /// where objects are stored.
    fn validate_buckets(&self) -> Result<(), ConfigError> {
        if !is_snapshot_url(&self.snapshots.url) {
            return Err(invalid(
                "snapshots.url",
                format!("`{}` must be gs://bucket or file://dir", self.snapshots.url),
            ));
        }
        let threshold = self.snapshots.claim_check_threshold_bytes;
        if !(1..=MAX_CLAIM_CHECK_THRESHOLD).contains(&threshold) {
            return Err(invalid(
                "snapshots.claim_check_threshold_bytes",
                format!("must be between 1 and {MAX_CLAIM_CHECK_THRESHOLD} (the Pub/Sub message limit), got {threshold}"),
            ));
        }

        // Issue 31 (h-harden): the archive's own bucket, if any.
        if let Some(u) = &self.retention.archive_url {
            if !is_snapshot_url(u) {
                return Err(invalid(
                    "retention.archive_url",
                    format!("`{u}` must be gs://bucket or file://dir"),
                ));
            }
        }
        // Issue 31 (h-harden): raw refs confined to a prefix of their own.
        let raw = self.snapshots.raw_prefix.trim_matches('/');
        if raw.split('/').any(|c| c == ".." || c == ".")
            || ["sha256", "archive"]
                .iter()
                .any(|ours| raw == *ours || raw.starts_with(&format!("{ours}/")))
        {
            return Err(invalid(
                "snapshots.raw_prefix",
                format!(
                    "`{}` must be a folder of its own (not `sha256/` or `archive/`, no `..`)",
                    self.snapshots.raw_prefix
                ),
            ));
        }
        Ok(())
    }

    fn validate_retry(&self) -> Result<(), ConfigError> {
        let retry = &self.retry;
        if !(1..=100).contains(&retry.max_attempts) {
            return Err(invalid(
                "retry.max_attempts",
                format!("must be between 1 and 100, got {}", retry.max_attempts),
            ));
        }
        if !(retry.multiplier.is_finite() && retry.multiplier >= 1.0) {
            return Err(invalid(
                "retry.multiplier",
                format!("must be a number >= 1, got {}", retry.multiplier),
            ));
        }
        if retry.initial_backoff > retry.max_backoff {
            return Err(invalid(
                "retry.initial_backoff",
                format!(
                    "must not exceed retry.max_backoff ({} > {})",
                    humantime::format_duration(retry.initial_backoff),
                    humantime::format_duration(retry.max_backoff)
                ),
            ));
        }
        Ok(())
    }

    fn validate_merge(&self) -> Result<(), ConfigError> {
        if self.merge.batch_max < 1 {
            return Err(invalid("merge.batch_max", "must be at least 1"));
        }
        if self.merge.workers < 1 {
            return Err(invalid("merge.workers", "must be at least 1"));
        }
        if self.merge.gap_timeout.is_zero() {
            return Err(invalid("merge.gap_timeout", "must be greater than 0"));
        }
        if self.merge.gap_check_interval < Duration::from_millis(100) {
            return Err(invalid(
                "merge.gap_check_interval",
                "must be at least 100ms",
            ));
        }
        Ok(())
    }

    fn validate_targets(&self) -> Result<(), ConfigError> {
        for target in Source::ALL {
            self.targets.get(target).validate(target.as_str())?;
        }
        Ok(())
    }

    /// `consumers.*`, and a delivery consumer's target URL: it is what the
    /// consumer delivers to.
    fn validate_consumers(&self) -> Result<(), ConfigError> {
        for kind in ConsumerKind::all() {
            let c = self.consumers.get(kind);
            if c.max_outstanding_messages < 1 {
                return Err(invalid(
                    &format!("consumers.{kind}.max_outstanding_messages"),
                    "must be at least 1",
                ));
            }
            if c.lanes < 1 {
                return Err(invalid(
                    &format!("consumers.{kind}.lanes"),
                    "must be at least 1",
                ));
            }
        }
        for (kind, target) in [
            (ConsumerKind::Netsuite, &self.targets.netsuite),
            (ConsumerKind::Suitex, &self.targets.suitex),
        ] {
            if self.consumers.get(kind).enabled && target.url.is_none() {
                return Err(invalid(
                    &format!("targets.{kind}.url"),
                    format!("must be set while consumers.{kind}.enabled is true"),
                ));
            }
        }
        Ok(())
    }

    fn validate_http(&self) -> Result<(), ConfigError> {
        for (key, addr) in [
            ("http.metrics_addr", &self.http.metrics_addr),
            ("http.admin_addr", &self.http.admin_addr),
        ] {
            if addr.parse::<SocketAddr>().is_err() {
                return Err(invalid(
                    key,
                    format!("`{addr}` is not an ip:port address such as 0.0.0.0:9090"),
                ));
            }
        }
        if self
            .http
            .admin_token
            .as_ref()
            .is_some_and(|t| t.expose_secret().trim().is_empty())
        {
            return Err(invalid(
                "http.admin_token",
                "is empty; set a token or leave it unset to disable the admin API",
            ));
        }
        Ok(())
    }

    /// How often the background checks run (`pubsub.probe_interval`,
    /// `outbox.relay_interval`).
    fn validate_intervals(&self) -> Result<(), ConfigError> {
        if self.pubsub.probe_interval.is_zero() {
            return Err(invalid("pubsub.probe_interval", "must be greater than 0"));
        }
        if self.outbox.relay_interval.is_zero() {
            return Err(invalid("outbox.relay_interval", "must be greater than 0"));
        }
        Ok(())
    }

    fn validate_retention(&self) -> Result<(), ConfigError> {
        if self.retention.keep < std::time::Duration::from_secs(3600) {
            return Err(invalid("retention.keep", "must be at least 1h"));
        }
        if self.retention.segment_events == 0 {
            return Err(invalid("retention.segment_events", "must be at least 1"));
        }
        if !(1..=10_000).contains(&self.retention.delete_batch) {
            return Err(invalid(
                "retention.delete_batch",
                "must be between 1 and 10000",
            ));
        }
        if !(0.0..=100.0).contains(&self.retention.pace) {
            return Err(invalid("retention.pace", "must be between 0 and 100"));
        }
        Ok(())
    }

    /// `shutdown.*` and `log.*`.
    fn validate_process(&self) -> Result<(), ConfigError> {
        if self.shutdown.grace.is_zero() {
            return Err(invalid("shutdown.grace", "must be greater than 0"));
        }
        if self.log.level.trim().is_empty() {
            return Err(invalid("log.level", "must not be empty"));
        }
        Ok(())
    }
}

/// `merge.source_priority` as written (trimmed, lowercased) → the typed
/// order. Runs while deserialising, so the settings hold the typed value.
pub(super) fn source_priority(items: &[String]) -> Result<Vec<Source>, String> {
    let mut sorted: Vec<&str> = items.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    match sorted[..] {
        ["netsuite", "suitex"] => items
            .iter()
            .map(|s| s.parse::<Source>().map_err(|e| e.to_string()))
            .collect(),
        _ => Err(format!(
            "must list netsuite and suitex once each, highest priority first; got [{}]",
            items.join(", ")
        )),
    }
}

fn is_gcp_project_id(s: &str) -> bool {
    (6..=30).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && !s.ends_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn is_host_port(s: &str) -> bool {
    s.rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

fn is_snapshot_url(s: &str) -> bool {
    if let Some(rest) = s.strip_prefix("gs://") {
        let bucket = rest.split('/').next().unwrap_or_default();
        // GCS bucket naming rules, minus the dotted-name corner cases.
        (3..=222).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
    } else if let Some(rest) = s.strip_prefix("file://") {
        !rest.is_empty()
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::expect_invalid;

    #[test]
    fn each_validation_error_names_its_key() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("BACKBONE_ENV", "staging")], "env"),
            (
                &[("BACKBONE_ENV", "sandbox"), ("BACKBONE__ENV", "production")],
                "env",
            ),
            (
                &[("BACKBONE__PUBSUB__PROJECT_ID", "Bad_Project")],
                "pubsub.project_id",
            ),
            (
                &[("BACKBONE__PUBSUB__PROJECT_ID", "short")],
                "pubsub.project_id",
            ),
            (
                &[("BACKBONE__PUBSUB__PROJECT_ID", "ends-with-")],
                "pubsub.project_id",
            ),
            (
                &[("BACKBONE__PUBSUB__PROJECT_ID", "1starts-digit")],
                "pubsub.project_id",
            ),
            (
                &[("PUBSUB_EMULATOR_HOST", "localhost")],
                "pubsub.emulator_host",
            ),
            (
                &[("BACKBONE__DATABASE__URL", "postgres://u:pw@h/db")],
                "database.url",
            ),
            (&[("BACKBONE__DATABASE__URL", "sqlite://")], "database.url"),
            (
                &[("BACKBONE__DATABASE__MAX_CONNECTIONS", "0")],
                "database.max_connections",
            ),
            (
                &[("BACKBONE__DATABASE__CONNECT_TIMEOUT", "0s")],
                "database.connect_timeout",
            ),
            (
                &[("BACKBONE__SNAPSHOTS__URL", "s3://bucket")],
                "snapshots.url",
            ),
            (&[("BACKBONE__SNAPSHOTS__URL", "gs://")], "snapshots.url"),
            (
                &[("BACKBONE__SNAPSHOTS__CLAIM_CHECK_THRESHOLD_BYTES", "0")],
                "snapshots.claim_check_threshold_bytes",
            ),
            (
                &[("BACKBONE__RETRY__MAX_ATTEMPTS", "0")],
                "retry.max_attempts",
            ),
            (
                &[("BACKBONE__RETRY__MAX_ATTEMPTS", "101")],
                "retry.max_attempts",
            ),
            (
                &[("BACKBONE__RETRY__MULTIPLIER", "0.5")],
                "retry.multiplier",
            ),
            (
                &[("BACKBONE__RETRY__MULTIPLIER", "NaN")],
                "retry.multiplier",
            ),
            (
                &[("BACKBONE__RETRY__INITIAL_BACKOFF", "11m")],
                "retry.initial_backoff",
            ),
            (
                &[("BACKBONE__MERGE__SOURCE_PRIORITY", "netsuite")],
                "merge.source_priority",
            ),
            (
                &[("BACKBONE__MERGE__SOURCE_PRIORITY", "netsuite,netsuite")],
                "merge.source_priority",
            ),
            (
                &[("BACKBONE__MERGE__SOURCE_PRIORITY", "netsuite,suitex,sap")],
                "merge.source_priority",
            ),
            (&[("BACKBONE__MERGE__BATCH_MAX", "0")], "merge.batch_max"),
            (&[("BACKBONE__MERGE__WORKERS", "0")], "merge.workers"),
            (
                &[("BACKBONE__TARGETS__SUITEX__URL", "ftp://x/y")],
                "targets.suitex.url",
            ),
            (
                &[("BACKBONE__TARGETS__SUITEX__URL", "not a url")],
                "targets.suitex.url",
            ),
            (
                &[("BACKBONE__TARGETS__NETSUITE__TIMEOUT", "0ms")],
                "targets.netsuite.timeout",
            ),
            (
                &[("BACKBONE__CONSUMERS__NETSUITE__ENABLED", "true")],
                "targets.netsuite.url",
            ),
            (
                &[("BACKBONE__CONSUMERS__SUITEX__ENABLED", "true")],
                "targets.suitex.url",
            ),
            (
                &[("BACKBONE__CONSUMERS__RETRY__LANES", "0")],
                "consumers.retry.lanes",
            ),
            (
                &[("BACKBONE__CONSUMERS__MERGE__MAX_OUTSTANDING_MESSAGES", "0")],
                "consumers.merge.max_outstanding_messages",
            ),
            (
                &[("BACKBONE__HTTP__METRICS_ADDR", "localhost")],
                "http.metrics_addr",
            ),
            (
                &[("BACKBONE__HTTP__ADMIN_ADDR", "127.0.0.1")],
                "http.admin_addr",
            ),
            (&[("BACKBONE__HTTP__ADMIN_TOKEN", "  ")], "http.admin_token"),
            (&[("BACKBONE__SHUTDOWN__GRACE", "0s")], "shutdown.grace"),
        ];
        for (pairs, key) in cases {
            expect_invalid(pairs, key);
        }
    }

    #[test]
    fn error_display_names_env_var_and_key() {
        let msg = expect_invalid(
            &[("BACKBONE__DATABASE__URL", "postgres://u:pw@h/db")],
            "database.url",
        );
        assert_eq!(
            msg,
            "invalid configuration: `database.url` (BACKBONE__DATABASE__URL): must start with mysql:// or sqlite://"
        );
        assert!(!msg.contains("pw"));
        let msg = expect_invalid(&[("BACKBONE_ENV", "staging")], "env");
        assert!(
            msg.contains("(BACKBONE_ENV)") && msg.contains("staging"),
            "{msg}"
        );
        let msg = expect_invalid(
            &[("BACKBONE__CONSUMERS__NETSUITE__ENABLED", "true")],
            "targets.netsuite.url",
        );
        assert!(msg.contains("BACKBONE__TARGETS__NETSUITE__URL"), "{msg}");
    }
}
