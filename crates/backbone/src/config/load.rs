//! Loading: the built-in and on-disk TOML layers and the environment,
//! merged by the `config` crate, with its errors turned into ours.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use config::{Environment, File, FileFormat, Source};

use super::env_vars;
use super::strict::{self, KeyOrigin};
use super::{
    ConfigError, Settings, ENV_PREFIX, ENV_SEPARATOR, ENV_VAR_CONFIG_DIR, ENV_VAR_ENV,
    ENV_VAR_PUBSUB_EMULATOR_HOST,
};
use crate::topology::Env;

const EMBEDDED_DEFAULT: &str = include_str!("../../../../config/default.toml");
const EMBEDDED_LOCAL: &str = include_str!("../../../../config/local.toml");
const EMBEDDED_SANDBOX: &str = include_str!("../../../../config/sandbox.toml");
const EMBEDDED_PRODUCTION: &str = include_str!("../../../../config/production.toml");

fn embedded_env_file(env: Env) -> &'static str {
    match env {
        Env::Local => EMBEDDED_LOCAL,
        Env::Sandbox => EMBEDDED_SANDBOX,
        Env::Production => EMBEDDED_PRODUCTION,
    }
}

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

/// The file layers in the order they apply, each with its origin.
pub(super) type FileLayers = Vec<(Box<dyn Source + Send + Sync>, KeyOrigin)>;

pub(super) fn file_layers(dir: &Path, env: Env) -> FileLayers {
    let env_file = format!("{env}.toml");
    vec![
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
    ]
}

/// Loads settings from `dir` and the given variables only (the process
/// environment is not read), then validates them.
pub fn load_from(dir: &Path, env_vars: &HashMap<String, String>) -> Result<Settings, ConfigError> {
    let env = select_env(env_vars)?;

    // Each layer is read twice: by the builder, and on its own to know
    // which file or variable set a key (`strict`, `explain`).
    let files = file_layers(dir, env);
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
    // First: a variable nothing reads (BACKBONE_EVN) may be why the env,
    // or any value below, is not the one meant.
    let unread = env_vars::unknown_variables(
        env_vars.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        &strict::known_keys(&settings.redacted()),
    );
    if !unread.is_empty() {
        return Err(ConfigError::UnknownVariables(unread));
    }
    // Before validation: a misspelt key is the likelier cause of what
    // validation would report (a required URL "missing", say).
    if !ignored.is_empty() {
        return Err(ConfigError::UnknownKeys(strict::unknown_keys(
            &ignored,
            &layers(files, env_vars)?,
            &settings.redacted(),
        )));
    }
    settings.validate()?;
    Ok(settings)
}

/// The keys each layer sets, files first, then the `BACKBONE__…` variables.
pub(super) fn layers(
    files: FileLayers,
    env_vars: &HashMap<String, String>,
) -> Result<Vec<strict::Layer>, ConfigError> {
    let mut layers = Vec::with_capacity(files.len() + 1);
    for (source, origin) in files {
        layers
            .push(strict::Layer::from_source(source.as_ref(), origin).map_err(from_config_error)?);
    }
    layers.push(strict::Layer::from_env_vars(
        env_vars.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    ));
    Ok(layers)
}

/// The process environment as a map (variables that are not UTF-8 left out).
pub fn process_env() -> HashMap<String, String> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

/// The config dir [`load`] reads, for the process environment.
pub fn process_config_dir() -> Result<PathBuf, ConfigError> {
    config_dir(&process_env())
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
        .and_then(|exe| exe.parent().map(|p| p.join("../../config")))
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use secrecy::ExposeSecret;

    use super::super::test_support::{expect_invalid, expect_unknown, load_with, vars};
    use super::super::{ConflictPolicy, LogFormat, UnknownKey};
    use super::*;
    use crate::model::raw_event::Source;
    use crate::topology::{ConsumerKind, Topology};

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
        assert_eq!(s.merge.source_priority, [Source::Netsuite, Source::Suitex]);
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

        // docs/spec.md §8: env + database URL is a complete invocation.
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
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../config");
        for env in Env::ALL {
            if let Err(e @ ConfigError::UnknownKeys(_)) =
                load_from(&dir, &vars(&[("BACKBONE_ENV", env.as_str())]))
            {
                panic!("{env}: {e}");
            }
        }
    }
}
