//! Layered settings (SPEC §8).
//!
//! Layers, each overriding the one before: `default.toml` → `{env}.toml` →
//! `BACKBONE__SECTION__KEY` environment variables. The TOML files are built
//! into the binary as the base layers, so it runs from any directory; files
//! in the config dir override them. Secrets are [`SecretString`]s: `Debug`
//! hides them and [`Settings::redacted`] masks them. A key no setting reads
//! is an error naming it and where it was set ([`strict`]).

mod strict;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use config::{Environment, File, FileFormat, Source};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use crate::model::rules::ConflictPolicy;
use crate::topology::{ConsumerKind, Env, Topology};

pub use self::strict::{KeyOrigin, UnknownKey};

/// Prefix of every settings environment variable (`BACKBONE__DATABASE__URL`).
pub const ENV_PREFIX: &str = "BACKBONE";
/// Separates the prefix and each key segment in an environment variable name.
pub const ENV_SEPARATOR: &str = "__";
/// Picks the environment (and so the `{env}.toml` layer).
pub const ENV_VAR_ENV: &str = "BACKBONE_ENV";
/// Overrides the directory searched for `default.toml` and `{env}.toml`.
pub const ENV_VAR_CONFIG_DIR: &str = "BACKBONE_CONFIG_DIR";
/// The emulator convention shared with gcloud and other Pub/Sub clients.
pub const ENV_VAR_PUBSUB_EMULATOR_HOST: &str = "PUBSUB_EMULATOR_HOST";

const REDACTED: &str = "[redacted]";
/// Pub/Sub rejects messages over 10 MB, so a larger threshold could never apply.
const MAX_CLAIM_CHECK_THRESHOLD: u64 = 10_000_000;

const EMBEDDED_DEFAULT: &str = include_str!("../config/default.toml");
const EMBEDDED_LOCAL: &str = include_str!("../config/local.toml");
const EMBEDDED_SANDBOX: &str = include_str!("../config/sandbox.toml");
const EMBEDDED_PRODUCTION: &str = include_str!("../config/production.toml");

fn embedded_env_file(env: Env) -> &'static str {
    match env {
        Env::Local => EMBEDDED_LOCAL,
        Env::Sandbox => EMBEDDED_SANDBOX,
        Env::Production => EMBEDDED_PRODUCTION,
    }
}

/// Why settings could not be loaded. Every variant is a configuration error
/// (exit code 2); `Invalid` and `UnknownKeys` name the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: `{key}` ({}): {message}", env_var_for_key(.key))]
    Invalid { key: String, message: String },
    /// Never empty: one entry per key and place it was set.
    #[error("{}", unknown_keys_message(.0))]
    UnknownKeys(Vec<UnknownKey>),
    #[error("invalid configuration file `{}`: {message}", .path.display())]
    File { path: PathBuf, message: String },
    #[error("invalid configuration: {message}")]
    Load { message: String },
}

impl ConfigError {
    fn invalid(key: &str, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.to_owned(),
            message: message.into(),
        }
    }

    /// The dotted key at fault (the first, for unknown keys), when there is one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            ConfigError::UnknownKeys(keys) => keys.first().map(|k| k.key.as_str()),
            _ => None,
        }
    }
}

/// One key on one line; several as a list, one per line.
fn unknown_keys_message(keys: &[UnknownKey]) -> String {
    match keys {
        [one] => format!("unknown configuration key {one}"),
        many => {
            let mut out = format!("{} unknown configuration keys:", many.len());
            for k in many {
                out.push_str(&format!("\n  {k}"));
            }
            out
        }
    }
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::invalid(key, message)
}

/// `database.url` → `BACKBONE__DATABASE__URL`; `env` → `BACKBONE_ENV`.
pub fn env_var_for_key(key: &str) -> String {
    if key == "env" {
        return ENV_VAR_ENV.to_owned();
    }
    // List elements (`merge.source_priority[1]`) are set through the list's variable.
    let key = key.split('[').next().unwrap_or(key);
    format!(
        "{ENV_PREFIX}{ENV_SEPARATOR}{}",
        key.replace('.', ENV_SEPARATOR).to_uppercase()
    )
}

// ---------------------------------------------------------------------------
// Settings

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
    pub log: LogSettings,
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
    #[serde(deserialize_with = "string_list")]
    pub source_priority: Vec<String>,
    pub batch_max: usize,
    #[serde(with = "duration_str")]
    pub batch_linger: Duration,
    pub workers: usize,
    /// How long a record may wait for a missing version before its pending
    /// events are reported as a `gap` dead letter (SPEC §4.1).
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

/// An HTTP endpoint merged events are delivered to.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Target {
    pub url: Option<String>,
    /// Bearer token sent with each delivery.
    #[serde(serialize_with = "serialize_redacted_opt")]
    pub token: Option<SecretString>,
    #[serde(with = "duration_str")]
    pub timeout: Duration,
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

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ShutdownSettings {
    /// Time in-flight work gets after SIGTERM before the rest is nacked.
    #[serde(with = "duration_str")]
    pub grace: Duration,
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

    /// Checks what types alone cannot; the first problem found is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
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

        let mut sources = self.merge.source_priority.clone();
        sources.sort();
        if sources != ["netsuite", "suitex"] {
            return Err(invalid(
                "merge.source_priority",
                format!(
                    "must list netsuite and suitex once each, highest priority first; got [{}]",
                    self.merge.source_priority.join(", ")
                ),
            ));
        }
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

        for (name, target) in [
            ("netsuite", &self.targets.netsuite),
            ("suitex", &self.targets.suitex),
        ] {
            if let Some(u) = &target.url {
                if !is_http_url(u) {
                    return Err(invalid(
                        &format!("targets.{name}.url"),
                        "must be an http:// or https:// URL with a host",
                    ));
                }
            }
            if target
                .token
                .as_ref()
                .is_some_and(|t| t.expose_secret().trim().is_empty())
            {
                return Err(invalid(
                    &format!("targets.{name}.token"),
                    "is empty; set a token or leave it unset",
                ));
            }
            if target.timeout.is_zero() {
                return Err(invalid(
                    &format!("targets.{name}.timeout"),
                    "must be greater than 0",
                ));
            }
        }

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

        if self.pubsub.probe_interval.is_zero() {
            return Err(invalid("pubsub.probe_interval", "must be greater than 0"));
        }
        if self.outbox.relay_interval.is_zero() {
            return Err(invalid("outbox.relay_interval", "must be greater than 0"));
        }
        if self.shutdown.grace.is_zero() {
            return Err(invalid("shutdown.grace", "must be greater than 0"));
        }
        if self.log.level.trim().is_empty() {
            return Err(invalid("log.level", "must not be empty"));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Loading

/// Loads settings from the process environment and the config dir
/// (`BACKBONE_CONFIG_DIR`, else `./config`, else `config/` next to the
/// executable; the built-in files apply when none exists).
pub fn load() -> Result<Settings, ConfigError> {
    let mut vars = HashMap::new();
    for (key, value) in std::env::vars_os() {
        let Ok(key) = key.into_string() else { continue };
        match value.into_string() {
            Ok(value) => {
                vars.insert(key, value);
            }
            // Silently skipping one of ours would load a different config.
            Err(_) if key.starts_with(ENV_PREFIX) || key == ENV_VAR_PUBSUB_EMULATOR_HOST => {
                return Err(ConfigError::Load {
                    message: format!("environment variable {key} is not valid UTF-8"),
                });
            }
            Err(_) => {}
        }
    }
    let dir = config_dir(&vars)?;
    load_from(&dir, &vars)
}

/// Loads settings from `dir` and the given variables only (the process
/// environment is not read), then validates them.
pub fn load_from(dir: &Path, env_vars: &HashMap<String, String>) -> Result<Settings, ConfigError> {
    let env = select_env(env_vars)?;

    // Each layer is read twice: by the builder, and on its own to know
    // which file or variable set a key the settings do not read.
    let env_file = format!("{env}.toml");
    let files: [(Box<dyn Source + Send + Sync>, KeyOrigin); 4] = [
        (
            Box::new(File::from_str(EMBEDDED_DEFAULT, FileFormat::Toml)),
            KeyOrigin::BuiltIn("config/default.toml".to_owned()),
        ),
        (
            Box::new(disk_file(dir, "default.toml")),
            KeyOrigin::File(dir.join("default.toml")),
        ),
        (
            Box::new(File::from_str(embedded_env_file(env), FileFormat::Toml)),
            KeyOrigin::BuiltIn(format!("config/{env_file}")),
        ),
        (
            Box::new(disk_file(dir, &env_file)),
            KeyOrigin::File(dir.join(&env_file)),
        ),
    ];
    let mut builder = config::Config::builder();
    for (source, _) in &files {
        // A one-source list: the config crate's way to add a boxed source.
        builder = builder.add_source(vec![source.clone()]);
    }
    let mut builder = builder.add_source(
        Environment::with_prefix(ENV_PREFIX)
            .prefix_separator(ENV_SEPARATOR)
            .separator(ENV_SEPARATOR)
            // Helm and shells often render "unset" as an empty string.
            .ignore_empty(true)
            .source(Some(env_vars.clone().into_iter().collect())),
    );
    // BACKBONE_ENV chose the files above; the settings must agree with it.
    builder = builder
        .set_override("env", env.as_str())
        .map_err(from_config_error)?;
    if let Some(host) = env_vars
        .get(ENV_VAR_PUBSUB_EMULATOR_HOST)
        .filter(|h| !h.is_empty())
    {
        builder = builder
            .set_override("pubsub.emulator_host", host.as_str())
            .map_err(from_config_error)?;
    }

    let merged = builder.build().map_err(from_config_error)?;
    let mut ignored = Vec::new();
    let settings: Settings =
        serde_ignored::deserialize(merged, |path| ignored.push(strict::segments(&path)))
            .map_err(from_config_error)?;
    // Before validation: a misspelt key is the likelier cause of what
    // validation would report (a required URL "missing", say).
    if !ignored.is_empty() {
        let mut layers = Vec::with_capacity(files.len() + 1);
        for (source, origin) in files {
            layers.push(
                strict::Layer::from_source(source.as_ref(), origin).map_err(from_config_error)?,
            );
        }
        layers.push(strict::Layer::from_env_vars(
            env_vars.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        ));
        return Err(ConfigError::UnknownKeys(strict::unknown_keys(
            &ignored,
            &layers,
            &settings.redacted(),
        )));
    }
    settings.validate()?;
    Ok(settings)
}

/// `BACKBONE_ENV`, or `BACKBONE__ENV` as an alias, defaulting to `local`.
fn select_env(env_vars: &HashMap<String, String>) -> Result<Env, ConfigError> {
    let get = |k: &str| env_vars.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    let alias = format!("{ENV_PREFIX}{ENV_SEPARATOR}ENV");
    let name = match (get(ENV_VAR_ENV), get(&alias)) {
        (Some(a), Some(b)) if a != b => {
            return Err(ConfigError::invalid(
                "env",
                format!("{ENV_VAR_ENV}={a} and {alias}={b} disagree"),
            ))
        }
        (Some(v), _) | (None, Some(v)) => v,
        (None, None) => Env::Local.as_str(),
    };
    name.parse()
        .map_err(|e: crate::topology::ParseEnvError| ConfigError::invalid("env", e.to_string()))
}

fn disk_file(dir: &Path, name: &str) -> File<config::FileSourceFile, FileFormat> {
    File::from(dir.join(name))
        .format(FileFormat::Toml)
        .required(false)
}

fn config_dir(env_vars: &HashMap<String, String>) -> Result<PathBuf, ConfigError> {
    if let Some(dir) = env_vars.get(ENV_VAR_CONFIG_DIR).filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        // An explicit directory that is missing is a typo, not "use defaults".
        if !dir.is_dir() {
            return Err(ConfigError::File {
                path: dir,
                message: format!("{ENV_VAR_CONFIG_DIR} names a directory that does not exist"),
            });
        }
        return Ok(dir);
    }
    let cwd = PathBuf::from("config");
    if cwd.is_dir() {
        return Ok(cwd);
    }
    if let Some(beside_exe) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|p| p.join("config")))
        .filter(|p| p.is_dir())
    {
        return Ok(beside_exe);
    }
    Ok(cwd)
}

/// Turns the config crate's errors into ours, naming the key where it has one.
fn from_config_error(err: config::ConfigError) -> ConfigError {
    match err {
        config::ConfigError::FileParse { uri, cause } => ConfigError::File {
            path: PathBuf::from(uri.unwrap_or_else(|| "<built-in>".to_owned())),
            message: without_source_excerpt(&cause.to_string()),
        },
        config::ConfigError::NotFound(key) => ConfigError::invalid(&key, "is required but not set"),
        config::ConfigError::Type {
            key: Some(key),
            unexpected,
            expected,
            ..
        } => ConfigError::invalid(
            &key,
            format!("invalid type: {unexpected}, expected {expected}"),
        ),
        config::ConfigError::At {
            error,
            key: Some(key),
            ..
        } => {
            let message = innermost_message(*error);
            // serde's unknown-variant text names a Rust type; name the choices.
            let message = match (
                message.contains("does not have variant"),
                allowed_values(&key),
            ) {
                (true, Some(allowed)) => format!("unknown value; expected one of: {allowed}"),
                _ => message,
            };
            ConfigError::invalid(&key, message)
        }
        other => ConfigError::Load {
            message: other.to_string(),
        },
    }
}

fn allowed_values(key: &str) -> Option<&'static str> {
    match key {
        "merge.conflict_policy" => Some("last_writer_wins, source_priority"),
        "log.format" => Some("json, text"),
        _ => None,
    }
}

fn innermost_message(err: config::ConfigError) -> String {
    match err {
        config::ConfigError::At { error, .. } => innermost_message(*error),
        config::ConfigError::Type {
            unexpected,
            expected,
            ..
        } => format!("invalid type: {unexpected}, expected {expected}"),
        config::ConfigError::NotFound(_) => "is required but not set".to_owned(),
        other => other.to_string(),
    }
}

/// TOML errors quote the offending line, which may hold a secret; keep only
/// the position and the explanation.
fn without_source_excerpt(message: &str) -> String {
    message
        .lines()
        .filter(|line| {
            let t = line.trim_start_matches(|c: char| c.is_ascii_digit() || c == ' ');
            !t.starts_with('|') && !line.trim().is_empty()
        })
        .collect::<Vec<_>>()
        .join("; ")
}

// ---------------------------------------------------------------------------
// Value checks and (de)serialisation helpers

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

fn is_http_url(s: &str) -> bool {
    url::Url::parse(s).is_ok_and(|u| {
        matches!(u.scheme(), "http" | "https") && u.host_str().is_some_and(|h| !h.is_empty())
    })
}

/// `mysql://user:secret@host/db` → `mysql://user:***@host/db`. Everything up
/// to the last `@` counts as userinfo, so an unescaped `/` or `@` in the
/// password over-masks rather than leaks.
pub fn mask_url_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let start = scheme_end + 3;
    let rest = &url[start..];
    let Some(at) = rest.rfind('@') else {
        return url.to_owned();
    };
    let Some(colon) = rest[..at].find(':') else {
        return url.to_owned();
    };
    format!("{}{}:***{}", &url[..start], &rest[..colon], &rest[at..])
}

fn serialize_masked_url<S: Serializer>(url: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&mask_url_password(url.expose_secret()))
}

fn serialize_redacted_opt<S: Serializer>(
    v: &Option<SecretString>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_str(REDACTED),
        None => s.serialize_none(),
    }
}

/// A list given either as a TOML array or as one comma-separated string (the
/// only way to write a list in an environment variable).
fn string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    let items = match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => s.split(',').map(str::to_owned).collect(),
        OneOrMany::Many(v) => v,
    };
    Ok(items
        .iter()
        .map(|s| s.trim().to_lowercase())
        .filter(|s| !s.is_empty())
        .collect())
}

/// Durations as humantime strings ("250ms", "10s").
mod duration_str {
    use std::time::Duration;

    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim()).map_err(|e| {
            D::Error::custom(format!(
                "invalid duration `{s}` ({e}); write it with a unit, e.g. \"250ms\" or \"10s\""
            ))
        })
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// A directory with no files: only the built-in layers apply.
    fn no_dir() -> PathBuf {
        PathBuf::from("/nonexistent/event-backbone-config")
    }

    fn load_with(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        load_from(&no_dir(), &vars(pairs))
    }

    fn expect_invalid(pairs: &[(&str, &str)], key: &str) -> String {
        match load_with(pairs) {
            Err(err @ ConfigError::Invalid { .. }) => {
                assert_eq!(err.key(), Some(key), "{err}");
                let msg = err.to_string();
                assert!(msg.contains(&format!("`{key}`")), "{msg}");
                assert!(msg.contains(&env_var_for_key(key)), "{msg}");
                msg
            }
            other => panic!("{pairs:?}: expected invalid `{key}`, got {other:?}"),
        }
    }

    #[test]
    fn defaults_load_with_no_env_vars() {
        let s = load_with(&[]).unwrap();
        assert_eq!(s.env, Env::Local);
        assert_eq!(s.pubsub.project_id, "local-proj");
        assert_eq!(s.pubsub.emulator_host, None);
        assert_eq!(
            s.database.url.expose_secret(),
            "sqlite://./data/event-backbone.db?mode=rwc"
        );
        assert!(s.database.is_sqlite());
        assert_eq!(s.snapshots.url, "file://./data/snapshots");
        assert_eq!(s.snapshots.claim_check_threshold_bytes, 1_048_576);
        assert_eq!(s.retry.max_attempts, 5);
        assert_eq!(s.retry.initial_backoff, Duration::from_secs(10));
        assert_eq!(s.retry.multiplier, 2.0);
        assert_eq!(s.retry.max_backoff, Duration::from_secs(600));
        assert_eq!(s.merge.conflict_policy, ConflictPolicy::LastWriterWins);
        assert_eq!(s.merge.source_priority, ["netsuite", "suitex"]);
        assert_eq!(s.merge.batch_max, 500);
        assert_eq!(s.merge.batch_linger, Duration::from_millis(2));
        assert_eq!(s.merge.workers, 2);
        assert_eq!(s.targets.netsuite.timeout, Duration::from_secs(10));
        assert!(s.targets.netsuite.url.is_none() && s.targets.suitex.token.is_none());
        for kind in ConsumerKind::all() {
            let c = s.consumers.get(kind);
            assert_eq!((c.max_outstanding_messages, c.lanes), (1000, 1000));
        }
        assert!(s.consumers.merge.enabled && s.consumers.retry.enabled && s.consumers.park.enabled);
        // Nothing to deliver to locally until a target is configured.
        assert!(!s.consumers.netsuite.enabled && !s.consumers.suitex.enabled);
        assert_eq!(s.http.metrics_addr, "0.0.0.0:9090");
        assert_eq!(s.http.admin_addr, "127.0.0.1:9091");
        assert!(s.http.admin_token.is_none());
        assert_eq!(s.shutdown.grace, Duration::from_secs(25));
        assert_eq!(s.log.format, LogFormat::Text);
        assert_eq!(s.log.level, "info");
        assert_eq!(s.topology(), Topology::new(Env::Local, "local-proj"));
    }

    #[test]
    fn env_vars_override_nested_keys() {
        let s = load_with(&[
            ("BACKBONE__CONSUMERS__MERGE__ENABLED", "false"),
            ("BACKBONE__CONSUMERS__PARK__MAX_OUTSTANDING_MESSAGES", "10"),
            ("BACKBONE__RETRY__INITIAL_BACKOFF", "250ms"),
            ("BACKBONE__RETRY__MAX_BACKOFF", "2s"),
            ("BACKBONE__RETRY__MULTIPLIER", "1.5"),
            ("BACKBONE__RETRY__MAX_ATTEMPTS", "3"),
            (
                "BACKBONE__DATABASE__URL",
                "mysql://root@127.0.0.1:3306/bb_test",
            ),
            ("BACKBONE__DATABASE__MAX_CONNECTIONS", "4"),
            ("BACKBONE__MERGE__CONFLICT_POLICY", "source_priority"),
            ("BACKBONE__TARGETS__NETSUITE__URL", "http://127.0.0.1:1/ns"),
            ("BACKBONE__CONSUMERS__NETSUITE__ENABLED", "true"),
            ("BACKBONE__HTTP__METRICS_ADDR", "127.0.0.1:0"),
            ("BACKBONE__LOG__FORMAT", "json"),
            // Empty counts as unset rather than clearing the file's value.
            ("BACKBONE__LOG__LEVEL", ""),
            // Not ours: ignored.
            ("BACKBONEX__LOG__LEVEL", "debug"),
            ("HOME", "/root"),
        ])
        .unwrap();
        assert!(!s.consumers.merge.enabled);
        assert_eq!(s.consumers.park.max_outstanding_messages, 10);
        assert_eq!(s.retry.initial_backoff, Duration::from_millis(250));
        assert_eq!(s.retry.max_backoff, Duration::from_secs(2));
        assert_eq!(s.retry.multiplier, 1.5);
        assert_eq!(s.retry.max_attempts, 3);
        assert_eq!(
            s.database.url.expose_secret(),
            "mysql://root@127.0.0.1:3306/bb_test"
        );
        assert_eq!(s.database.max_connections, 4);
        assert_eq!(s.merge.conflict_policy, ConflictPolicy::SourcePriority);
        assert!(s.consumers.netsuite.enabled);
        assert_eq!(
            s.targets.netsuite.url.as_deref(),
            Some("http://127.0.0.1:1/ns")
        );
        assert_eq!(s.http.metrics_addr, "127.0.0.1:0");
        assert_eq!(s.log.format, LogFormat::Json);
        assert_eq!(s.log.level, "info");
    }

    #[test]
    fn source_priority_accepts_a_comma_list() {
        let s = load_with(&[("BACKBONE__MERGE__SOURCE_PRIORITY", "suitex, netsuite")]).unwrap();
        assert_eq!(s.merge.source_priority, ["suitex", "netsuite"]);
        let s = load_with(&[("BACKBONE__MERGE__SOURCE_PRIORITY", "NetSuite,SuiteX")]).unwrap();
        assert_eq!(s.merge.source_priority, ["netsuite", "suitex"]);
    }

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

    #[test]
    fn deserialisation_errors_name_their_key() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "BACKBONE__DATABASE__MAX_CONNECTIONS",
                "lots",
                "database.max_connections",
            ),
            (
                "BACKBONE__DATABASE__MAX_CONNECTIONS",
                "-1",
                "database.max_connections",
            ),
            (
                "BACKBONE__RETRY__INITIAL_BACKOFF",
                "10",
                "retry.initial_backoff",
            ),
            ("BACKBONE__SHUTDOWN__GRACE", "soon", "shutdown.grace"),
            (
                "BACKBONE__MERGE__CONFLICT_POLICY",
                "coin_flip",
                "merge.conflict_policy",
            ),
            (
                "BACKBONE__CONSUMERS__MERGE__ENABLED",
                "maybe",
                "consumers.merge.enabled",
            ),
            ("BACKBONE__RETRY__MULTIPLIER", "double", "retry.multiplier"),
            ("BACKBONE__LOG__FORMAT", "xml", "log.format"),
            (
                "BACKBONE__DATABASE__MIGRATE_ON_START",
                "maybe",
                "database.migrate_on_start",
            ),
        ];
        for (var, value, key) in cases {
            let msg = expect_invalid(&[(var, value)], key);
            assert!(msg.contains(var), "{msg}");
        }
        let msg = expect_invalid(
            &[("BACKBONE__MERGE__CONFLICT_POLICY", "coin_flip")],
            "merge.conflict_policy",
        );
        assert!(
            msg.ends_with("expected one of: last_writer_wins, source_priority"),
            "{msg}"
        );
    }

    #[test]
    fn secrets_absent_from_redacted_and_debug() {
        let s = load_with(&[
            (
                "BACKBONE__DATABASE__URL",
                "mysql://sync_worker:db-pa55word@127.0.0.1:3306/event_backbone",
            ),
            (
                "BACKBONE__TARGETS__NETSUITE__URL",
                "https://ns.example/hook",
            ),
            ("BACKBONE__TARGETS__NETSUITE__TOKEN", "ns-t0ken-value"),
            ("BACKBONE__CONSUMERS__NETSUITE__ENABLED", "true"),
            ("BACKBONE__TARGETS__SUITEX__TOKEN", "sx-t0ken-value"),
            ("BACKBONE__HTTP__ADMIN_TOKEN", "admin-t0ken-value"),
        ])
        .unwrap();
        let secrets = [
            "db-pa55word",
            "ns-t0ken-value",
            "sx-t0ken-value",
            "admin-t0ken-value",
        ];

        let json = s.redacted();
        let text = json.to_string();
        for secret in secrets {
            assert!(!text.contains(secret), "{secret} leaked into {text}");
        }
        assert_eq!(
            json["database"]["url"],
            "mysql://sync_worker:***@127.0.0.1:3306/event_backbone"
        );
        assert_eq!(json["targets"]["netsuite"]["token"], REDACTED);
        assert_eq!(json["targets"]["suitex"]["token"], REDACTED);
        assert_eq!(json["http"]["admin_token"], REDACTED);
        assert_eq!(
            json["targets"]["netsuite"]["url"],
            "https://ns.example/hook"
        );
        assert_eq!(json["retry"]["initial_backoff"], "10s");
        assert_eq!(json["env"], "local");
        assert_eq!(
            s.database.url_masked(),
            "mysql://sync_worker:***@127.0.0.1:3306/event_backbone"
        );

        let debug = format!("{s:?} {s:#?}");
        for secret in secrets {
            assert!(!debug.contains(secret), "{secret} leaked into Debug");
        }
    }

    #[test]
    fn mask_url_password_cases() {
        assert_eq!(
            mask_url_password("mysql://u:p@h:3306/db"),
            "mysql://u:***@h:3306/db"
        );
        assert_eq!(mask_url_password("mysql://u@h/db"), "mysql://u@h/db");
        assert_eq!(
            mask_url_password("sqlite://./data/x.db?mode=rwc"),
            "sqlite://./data/x.db?mode=rwc"
        );
        // Unescaped `/` and `@` in the password: over-mask, never leak.
        assert_eq!(
            mask_url_password("mysql://u:a/b@c@h/db"),
            "mysql://u:***@h/db"
        );
    }

    #[test]
    fn backbone_env_sandbox_picks_sandbox_values() {
        let s = load_with(&[("BACKBONE_ENV", "sandbox")]).unwrap();
        assert_eq!(s.env, Env::Sandbox);
        assert_eq!(s.pubsub.project_id, "suitex-sandbox");
        assert_eq!(
            s.database.url.expose_secret(),
            "mysql://sync_worker@127.0.0.1:3306/event_backbone"
        );
        assert_eq!(s.snapshots.url, "gs://suitex-payload-snapshots-sandbox");
        assert_eq!(s.log.format, LogFormat::Json);
        assert!(s.consumers.netsuite.enabled && s.consumers.suitex.enabled);
        // Values the env file leaves alone come from default.toml.
        assert_eq!(s.retry.max_attempts, 5);
        assert_eq!(
            s.topology().topic_path(crate::topology::TopicKind::Raw),
            "projects/suitex-sandbox/topics/events.raw.sandbox"
        );

        // SPEC §8: env + database URL is a complete invocation.
        let s = load_with(&[
            ("BACKBONE_ENV", "production"),
            (
                "BACKBONE__DATABASE__URL",
                "mysql://sync_worker:pw@127.0.0.1:3306/event_backbone",
            ),
        ])
        .unwrap();
        assert_eq!(s.env, Env::Production);
        assert_eq!(s.pubsub.project_id, "suitex-production");
        assert_eq!(s.snapshots.url, "gs://suitex-payload-snapshots-production");
        assert_eq!(s.log.format, LogFormat::Json);
    }

    #[test]
    fn pubsub_emulator_host_is_honoured() {
        let s = load_with(&[("PUBSUB_EMULATOR_HOST", "127.0.0.1:8085")]).unwrap();
        assert_eq!(s.pubsub.emulator_host.as_deref(), Some("127.0.0.1:8085"));
        assert_eq!(
            s.pubsub.emulator_endpoint().as_deref(),
            Some("http://127.0.0.1:8085")
        );
        let s = load_with(&[("PUBSUB_EMULATOR_HOST", "")]).unwrap();
        assert_eq!(s.pubsub.emulator_host, None);
    }

    #[test]
    fn files_in_the_config_dir_override_built_in_layers() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("default.toml"),
            "[merge]\nworkers = 7\n[log]\nlevel = \"debug\"\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("sandbox.toml"),
            "[pubsub]\nproject_id = \"acme-sandbox-1\"\n[log]\nlevel = \"warn\"\n",
        )
        .unwrap();
        let s = load_from(dir.path(), &vars(&[("BACKBONE_ENV", "sandbox")])).unwrap();
        assert_eq!(s.merge.workers, 7);
        assert_eq!(s.pubsub.project_id, "acme-sandbox-1");
        assert_eq!(s.log.level, "warn"); // env file beats default.toml
        assert_eq!(s.log.format, LogFormat::Json); // built-in sandbox layer still applies

        let s = load_from(
            dir.path(),
            &vars(&[
                ("BACKBONE_ENV", "sandbox"),
                ("BACKBONE__LOG__LEVEL", "trace"),
            ]),
        )
        .unwrap();
        assert_eq!(s.log.level, "trace"); // env vars beat files
    }

    #[test]
    fn malformed_config_file_is_reported_without_its_contents() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("local.toml"),
            "[database]\nurl = \"mysql://u:hunter2@h/db\n",
        )
        .unwrap();
        match load_from(dir.path(), &HashMap::new()) {
            Err(err @ ConfigError::File { .. }) => {
                let msg = err.to_string();
                assert!(msg.contains("local.toml"), "{msg}");
                assert!(!msg.contains("hunter2"), "{msg}");
            }
            other => panic!("expected a file error, got {other:?}"),
        }
    }

    #[test]
    fn built_in_files_are_complete_for_every_env() {
        for env in Env::ALL {
            let mut pairs = vec![("BACKBONE_ENV", env.as_str())];
            if env == Env::Local {
                // Delivery needs a target; check it validates once one is set.
                pairs.extend([
                    ("BACKBONE__CONSUMERS__SUITEX__ENABLED", "true"),
                    (
                        "BACKBONE__TARGETS__SUITEX__URL",
                        "http://127.0.0.1:8088/suitex",
                    ),
                ]);
            }
            let s = load_with(&pairs).unwrap_or_else(|e| panic!("{env}: {e}"));
            assert_eq!(s.env, env);
        }
    }

    /// Only the embedded `local` default migrates itself at start; every
    /// deployed env leaves the schema to `event-backbone migrate`.
    #[test]
    fn migrate_on_start_is_on_only_for_local() {
        for env in Env::ALL {
            let s = load_with(&[("BACKBONE_ENV", env.as_str())]).unwrap();
            assert_eq!(s.database.migrate_on_start, env == Env::Local, "{env}");
        }
        let s = load_with(&[
            ("BACKBONE_ENV", "production"),
            ("BACKBONE__DATABASE__MIGRATE_ON_START", "true"),
        ])
        .unwrap();
        assert!(s.database.migrate_on_start);
        // default.toml alone (an env file without the key) says false.
        let base = config::Config::builder()
            .add_source(File::from_str(EMBEDDED_DEFAULT, FileFormat::Toml))
            .build()
            .expect("default.toml");
        assert!(!base
            .get_bool("database.migrate_on_start")
            .expect("default.toml sets database.migrate_on_start"));
    }

    fn expect_unknown(result: Result<Settings, ConfigError>) -> Vec<UnknownKey> {
        match result {
            Err(ConfigError::UnknownKeys(keys)) => {
                assert!(!keys.is_empty());
                keys
            }
            other => panic!("expected unknown keys, got {other:?}"),
        }
    }

    #[test]
    fn misspelt_env_var_is_an_error_naming_it() {
        let keys = expect_unknown(load_with(&[("BACKBONE__RETRY__MAX_ATEMPTS", "3")]));
        assert_eq!(
            keys,
            [UnknownKey {
                key: "retry.max_atempts".into(),
                origin: KeyOrigin::EnvVar("BACKBONE__RETRY__MAX_ATEMPTS".into()),
                suggestion: Some("retry.max_attempts".into()),
            }]
        );
        let err = load_with(&[("BACKBONE__RETRY__MAX_ATEMPTS", "3")]).unwrap_err();
        assert_eq!(err.key(), Some("retry.max_atempts"));
        assert_eq!(
            err.to_string(),
            "unknown configuration key `retry.max_atempts` (environment variable \
             BACKBONE__RETRY__MAX_ATEMPTS); did you mean `retry.max_attempts` \
             (BACKBONE__RETRY__MAX_ATTEMPTS)?"
        );
        // A whole unknown section, and a key with nothing close to it.
        let keys = expect_unknown(load_with(&[
            ("BACKBONE__RETYR__MAX_ATTEMPTS", "3"),
            ("BACKBONE__FROBNICATE", "yes"),
        ]));
        assert_eq!(
            ConfigError::UnknownKeys(keys.clone()).to_string(),
            "2 unknown configuration keys:\n  \
             `frobnicate` (environment variable BACKBONE__FROBNICATE)\n  \
             `retyr.max_attempts` (environment variable BACKBONE__RETYR__MAX_ATTEMPTS); \
             did you mean `retry.max_attempts` (BACKBONE__RETRY__MAX_ATTEMPTS)?"
        );
        let got: Vec<_> = keys
            .iter()
            .map(|k| (k.key.as_str(), k.suggestion.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                ("frobnicate", None),
                ("retyr.max_attempts", Some("retry.max_attempts"))
            ]
        );
        // Empty means unset, as for known keys.
        load_with(&[("BACKBONE__RETRY__MAX_ATEMPTS", "")]).unwrap();
    }

    #[test]
    fn misspelt_key_in_a_config_file_is_an_error_naming_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("local.toml");
        std::fs::write(
            &path,
            "[retry]\nmax_atempts = 3\n[targets.suitex]\nurl = \"http://127.0.0.1:1/sx\"\n",
        )
        .unwrap();
        let err = load_from(dir.path(), &HashMap::new()).unwrap_err();
        let keys = expect_unknown(Err(err));
        assert_eq!(
            keys,
            [UnknownKey {
                key: "retry.max_atempts".into(),
                origin: KeyOrigin::File(path.clone()),
                suggestion: Some("retry.max_attempts".into()),
            }]
        );
        let msg = ConfigError::UnknownKeys(keys).to_string();
        assert_eq!(
            msg,
            format!(
                "unknown configuration key `retry.max_atempts` (file {}); did you mean `retry.max_attempts`?",
                path.display()
            )
        );

        // Reported before validation: the misspelt URL key is the news, not
        // the "missing" URL it leaves behind.
        std::fs::write(
            dir.path().join("default.toml"),
            "[consumers.suitex]\nenabled = true\n[targets.suitex]\nulr = \"http://x/y\"\n",
        )
        .unwrap();
        std::fs::write(&path, "").unwrap();
        let keys = expect_unknown(load_from(dir.path(), &HashMap::new()));
        assert_eq!(keys[0].key, "targets.suitex.ulr");
        assert_eq!(
            keys[0].origin,
            KeyOrigin::File(dir.path().join("default.toml"))
        );
        assert_eq!(keys[0].suggestion.as_deref(), Some("targets.suitex.url"));

        // The same key set by a file and a variable: both places are named.
        let keys = expect_unknown(load_from(
            dir.path(),
            &vars(&[("BACKBONE__TARGETS__SUITEX__ULR", "http://x/z")]),
        ));
        let origins: Vec<_> = keys.iter().map(|k| k.origin.to_string()).collect();
        assert_eq!(keys.len(), 2, "{origins:?}");
        assert!(
            origins[1].contains("BACKBONE__TARGETS__SUITEX__ULR"),
            "{origins:?}"
        );
    }

    #[test]
    fn shipped_config_files_have_no_unknown_keys() {
        // The repo's config/ as a config dir: each file is read from disk
        // (and built in), for every env.
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config");
        for env in Env::ALL {
            if let Err(e @ ConfigError::UnknownKeys(_)) =
                load_from(&dir, &vars(&[("BACKBONE_ENV", env.as_str())]))
            {
                panic!("{env}: {e}");
            }
        }
    }

    #[test]
    fn env_var_names_for_keys() {
        assert_eq!(env_var_for_key("env"), "BACKBONE_ENV");
        assert_eq!(env_var_for_key("database.url"), "BACKBONE__DATABASE__URL");
        assert_eq!(
            env_var_for_key("consumers.merge.max_outstanding_messages"),
            "BACKBONE__CONSUMERS__MERGE__MAX_OUTSTANDING_MESSAGES"
        );
        assert_eq!(
            env_var_for_key("merge.source_priority[1]"),
            "BACKBONE__MERGE__SOURCE_PRIORITY"
        );
    }
}
