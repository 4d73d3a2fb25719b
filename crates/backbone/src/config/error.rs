//! Why settings could not be loaded, and the variable that sets a key.

use std::path::PathBuf;

use super::deployment::Incomplete;
use super::env_vars::UnknownVariable;
use super::strict::UnknownKey;
use super::{ENV_PREFIX, ENV_SEPARATOR, ENV_VAR_ENV};

/// Why settings could not be loaded. Every variant is a configuration error
/// (exit code 2); `Invalid` and `UnknownKeys` name the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: `{key}` ({}): {message}", env_var_for_key(.key))]
    Invalid { key: String, message: String },
    /// Never empty: one entry per key and place it was set.
    #[error("{}", unknown_keys_message(.0))]
    UnknownKeys(Vec<UnknownKey>),
    /// `BACKBONE_…` variables nothing reads (never empty).
    #[error("{}", lines(.0, "unknown variables:"))]
    UnknownVariables(Vec<UnknownVariable>),
    /// Outside `local`: what a deployment still lacks (never empty).
    #[error("{}", incomplete_message(.env, .gaps))]
    Incomplete { env: String, gaps: Vec<Incomplete> },
    #[error("invalid configuration file `{}`: {message}", .path.display())]
    File { path: PathBuf, message: String },
    #[error("invalid configuration: {message}")]
    Load { message: String },
}

impl ConfigError {
    pub(super) fn invalid(key: &str, message: impl Into<String>) -> Self {
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
            ConfigError::Incomplete { gaps, .. } => gaps.first().map(|g| g.key.as_str()),
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

/// One on its line; several under `heading`, one per line.
fn lines<T: std::fmt::Display>(items: &[T], heading: &str) -> String {
    match items {
        [one] => one.to_string(),
        many => {
            let mut out = format!("{} {heading}", many.len());
            for i in many {
                out.push_str(&format!("\n  {i}"));
            }
            out
        }
    }
}

fn incomplete_message(env: &str, gaps: &[Incomplete]) -> String {
    let head = format!("incomplete configuration for env `{env}` (only `local` allows these)");
    match gaps {
        [one] => format!("{head}: {one}"),
        many => {
            let mut out = format!("{head}, {} problems:", many.len());
            for g in many {
                out.push_str(&format!("\n  {g}"));
            }
            out
        }
    }
}

pub(super) fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
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

#[cfg(test)]
mod tests {
    use super::*;

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
