//! The settings' shape: one struct per section of the TOML files.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::serde_helpers::{
    duration_str, mask_url_password, serialize_masked_url, serialize_redacted_opt, source_priority,
};
use super::targets::Target;
use super::ConflictPolicy;
use crate::model::raw_event::Source;
use crate::model::rules::MergePolicy;
use crate::topology::{ConsumerKind, Env, Topology};

/// The whole configuration. `Serialize` writes secrets as `"[redacted]"`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Settings {
    pub env: Env,
    pub pubsub: PubsubSettings,
    pub database: DatabaseSettings,
    pub snapshots: SnapshotSettings,
    pub retry: RetrySettings,
    pub merge: MergeSettings,
    pub targets: TargetsSettings,
    pub consumers: ConsumersSettings,
    pub http: HttpSettings,
    pub shutdown: ShutdownSettings,
    pub outbox: OutboxSettings,
    pub retention: RetentionSettings,
    pub log: LogSettings,
    pub mcp: McpSettings,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct PubsubSettings {
    pub project_id: String,
    /// `host:port` of the emulator; `None` means real Pub/Sub.
    pub emulator_host: Option<String>,
    /// How often readiness asks Pub/Sub whether it answers: the subscriber
    /// client reconnects silently, so a dead broker shows nowhere else.
    #[serde(with = "duration_str")]
    pub probe_interval: Duration,
}

impl PubsubSettings {
    /// The endpoint the Google clients need for the emulator (plaintext gRPC).
    pub fn emulator_endpoint(&self) -> Option<String> {
        self.emulator_host.as_ref().map(|h| format!("http://{h}"))
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct DatabaseSettings {
    /// `mysql://…` or `sqlite://…`; secret because it carries the password.
    #[serde(serialize_with = "serialize_masked_url")]
    pub url: SecretString,
    pub max_connections: u32,
    #[serde(with = "duration_str")]
    pub connect_timeout: Duration,
    /// Longest one unit of database work (a merge transaction, a delivery's
    /// bookkeeping) may take before the database counts as unreachable: a
    /// network that hangs (failover) must not hang a message forever.
    #[serde(with = "duration_str")]
    pub query_timeout: Duration,
    /// `run` applies missing migrations itself instead of refusing to start.
    /// On only for the embedded `local` default: elsewhere the runtime user
    /// may not change the schema and `event-backbone migrate` runs first.
    pub migrate_on_start: bool,
}

impl DatabaseSettings {
    /// The URL with its password replaced by `***`, safe to log.
    pub fn url_masked(&self) -> String {
        mask_url_password(self.url.expose_secret())
    }

    pub fn is_sqlite(&self) -> bool {
        self.url.expose_secret().starts_with("sqlite://")
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct SnapshotSettings {
    /// `gs://bucket` or `file://dir`.
    pub url: String,
    pub claim_check_threshold_bytes: u64,
    // Issue 31 (h-harden): where raw events' `full_snapshot_ref` may point.
    /// The only place (under `url`) raw events' snapshots may be read from;
    /// never the daemon's own `sha256/` claim checks or `archive/`.
    #[serde(default = "default_raw_prefix")]
    pub raw_prefix: String,
}

fn default_raw_prefix() -> String {
    "raw/".to_string()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RetrySettings {
    /// Total executions of a stage before the message is dead-lettered.
    pub max_attempts: u32,
    #[serde(with = "duration_str")]
    pub initial_backoff: Duration,
    pub multiplier: f64,
    #[serde(with = "duration_str")]
    pub max_backoff: Duration,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct MergeSettings {
    pub conflict_policy: ConflictPolicy,
    /// Highest priority first; a permutation of `netsuite`, `suitex`.
    #[serde(deserialize_with = "source_priority")]
    pub source_priority: Vec<Source>,
    pub batch_max: usize,
    #[serde(with = "duration_str")]
    pub batch_linger: Duration,
    pub workers: usize,
    /// How long a record may wait for a missing version before its pending
    /// events are reported as a `gap` dead letter (docs/spec.md §4.1).
    #[serde(with = "duration_str")]
    pub gap_timeout: Duration,
    /// How often pending events are checked against `gap_timeout`.
    #[serde(with = "duration_str")]
    pub gap_check_interval: Duration,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct TargetsSettings {
    pub netsuite: Target,
    pub suitex: Target,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ConsumersSettings {
    pub merge: ConsumerSettings,
    pub netsuite: ConsumerSettings,
    pub suitex: ConsumerSettings,
    pub retry: ConsumerSettings,
    pub park: ConsumerSettings,
}

impl ConsumersSettings {
    pub fn get(&self, kind: ConsumerKind) -> &ConsumerSettings {
        match kind {
            ConsumerKind::Merge => &self.merge,
            ConsumerKind::Netsuite => &self.netsuite,
            ConsumerKind::Suitex => &self.suitex,
            ConsumerKind::Retry => &self.retry,
            ConsumerKind::Park => &self.park,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ConsumerSettings {
    pub enabled: bool,
    /// Flow control: unacked messages the broker may hand this consumer.
    pub max_outstanding_messages: i64,
    /// Ordering keys processed in parallel.
    pub lanes: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct HttpSettings {
    pub metrics_addr: String,
    pub admin_addr: String,
    /// The admin API is disabled when this is unset.
    #[serde(serialize_with = "serialize_redacted_opt")]
    pub admin_token: Option<SecretString>,
}

/// The outbox relay: republishes merged events whose publish was never
/// confirmed (a crash between commit and publish).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct OutboxSettings {
    /// A row older than this is considered abandoned by the live path.
    #[serde(with = "duration_str")]
    pub relay_after: Duration,
    /// How often the relay looks.
    #[serde(with = "duration_str")]
    pub relay_interval: Duration,
}

/// Retention with archival (docs/spec.md §6.1, `event-backbone archive`).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RetentionSettings {
    /// Rows younger than this stay in the database; `archive` moves older
    /// ones to the snapshot bucket (its `--older-than` default).
    #[serde(with = "duration_str")]
    pub keep: Duration,
    /// Events per archive segment (one object, one manifest).
    pub segment_events: usize,
    /// Rows removed per transaction once a segment is verified: small, so
    /// the merge stage never waits long on the archiver.
    pub delete_batch: usize,
    /// Pause after each unit of archive work (a removal transaction, a
    /// segment built), as a multiple of the time it took: 1.0 keeps the
    /// archiver busy at most half the time, leaving the database and the CPU
    /// to the merge stage.
    pub pace: f64,
    // Issue 31 (h-harden): the archive's least privilege.
    /// The database user that records a verified segment
    /// (`event_archive_recorder` in sql/grants-mysql.sql); `database.url`'s
    /// user (`event_archiver`) then only removes what segments cover.
    /// Unset: `database.url` does both (SQLite; an administrator).
    #[serde(default, serialize_with = "serialize_redacted_opt")]
    pub recorder_database_url: Option<SecretString>,
    /// A bucket of its own for archive segments (`gs://bucket` or
    /// `file://dir`), so it can carry a locked retention policy the claim
    /// checks' bucket cannot. Unset: `archive/` in `snapshots.url`.
    #[serde(default)]
    pub archive_url: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ShutdownSettings {
    /// Time in-flight work gets after SIGTERM before the rest is nacked.
    #[serde(with = "duration_str")]
    pub grace: Duration,
}

/// The MCP server: `event-backbone mcp` (stdio) and `/mcp` on the admin
/// listener. Read-only unless a write switch is on.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct McpSettings {
    /// Serve `/mcp` on the admin listener (same bearer token, same address).
    pub http_enabled: bool,
    /// Offer `replay_dead_letters` (it still replays only with `confirm: true`).
    pub allow_replay: bool,
    /// Offer `emit_event` (publishes a raw event to events.raw.{env}).
    pub allow_emit: bool,
    /// Offer `discard_dead_letters` (docs/spec.md §7.1).
    #[serde(default)]
    pub allow_discard: bool,
    /// Offer `pause_target` and `resume_target` (docs/spec.md §7.1).
    #[serde(default)]
    pub allow_pause: bool,
    /// Offer `resync_records` (docs/spec.md §7.1).
    #[serde(default)]
    pub allow_resync: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct LogSettings {
    pub format: LogFormat,
    /// A `tracing` filter directive such as `info` or `info,sqlx=warn`.
    pub level: String,
}

impl Settings {
    /// The whole configuration as JSON, secrets replaced by `"[redacted]"` and
    /// the database password masked; what `check-config` prints.
    pub fn redacted(&self) -> serde_json::Value {
        // Serialization cannot fail here: every map key is a string.
        serde_json::to_value(self).unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }))
    }

    pub fn topology(&self) -> Topology {
        Topology::new(self.env, self.pubsub.project_id.clone())
    }

    /// The merge policy the stage, replay, verify and explain fold with.
    pub fn merge_policy(&self) -> MergePolicy {
        MergePolicy {
            conflict_policy: self.merge.conflict_policy,
            source_priority: self.merge.source_priority.clone(),
        }
    }
}
