//! `check-config --explain`: which layer set each value — a built-in or
//! on-disk TOML file, a `BACKBONE_…` variable, `PUBSUB_EMULATOR_HOST`, or a
//! `_file` secret — traced the way loading applies them (the last layer
//! naming a key wins). Values are shown as `Settings::redacted` has them.

use std::collections::HashMap;
use std::path::Path;

use super::load::{file_layers, layers};
use super::strict;
use super::{
    ConfigError, Settings, ENV_PREFIX, ENV_SEPARATOR, ENV_VAR_ENV, ENV_VAR_PUBSUB_EMULATOR_HOST,
};

/// One setting as `check-config --explain` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explained {
    /// Dotted key, e.g. `database.url`.
    pub key: String,
    /// The value as JSON, secrets masked.
    pub value: String,
    /// The layer that set it, in words.
    pub origin: String,
}

/// Which layer set each value of `settings` (loaded from `dir` and
/// `env_vars`): the last layer naming the key wins, as when loading.
pub fn explain(
    settings: &Settings,
    dir: &Path,
    env_vars: &HashMap<String, String>,
) -> Result<Vec<Explained>, ConfigError> {
    let layers = layers(file_layers(dir, settings.env), env_vars)?;
    let mut leaves = Vec::new();
    strict::leaves(&settings.redacted(), &mut Vec::new(), &mut leaves);
    let mut out = Vec::with_capacity(leaves.len());
    for (key, value) in leaves {
        let origin = match key.as_str() {
            "env" if select_env_var(env_vars).is_some() => {
                format!(
                    "environment variable {}",
                    select_env_var(env_vars).unwrap_or_default()
                )
            }
            "env" => "built-in default (local)".to_owned(),
            "pubsub.emulator_host"
                if env_vars
                    .get(ENV_VAR_PUBSUB_EMULATOR_HOST)
                    .is_some_and(|h| !h.is_empty()) =>
            {
                format!("environment variable {ENV_VAR_PUBSUB_EMULATOR_HOST}")
            }
            _ => match strict::origin_of(&key, &layers) {
                Some(o) => o.to_string(),
                None if value == "null" => "unset".to_owned(),
                None => "built-in default (no file sets it)".to_owned(),
            },
        };
        out.push(Explained { key, value, origin });
    }
    // A secret given as `<key>_file` is read from that file when used.
    let files: Vec<(String, String, String)> = out
        .iter()
        .filter(|e| e.value != "null")
        .filter_map(|e| {
            let base = e.key.strip_suffix("_file")?;
            (!base.ends_with("private_key"))
                .then(|| (base.to_owned(), e.value.clone(), e.origin.clone()))
        })
        .collect();
    for (base, path, origin) in files {
        if let Some(e) = out.iter_mut().find(|e| e.key == base && e.value == "null") {
            e.value = "\"[redacted]\"".to_owned();
            e.origin = format!("a `_file` secret: read from {path} (named by {origin})");
        }
    }
    Ok(out)
}

/// The variable that named the env, if one did.
fn select_env_var(env_vars: &HashMap<String, String>) -> Option<String> {
    let alias = format!("{ENV_PREFIX}{ENV_SEPARATOR}ENV");
    [ENV_VAR_ENV.to_owned(), alias]
        .into_iter()
        .find(|k| env_vars.get(k).is_some_and(|v| !v.trim().is_empty()))
}
