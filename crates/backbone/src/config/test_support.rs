//! What the config tests share: loading from given variables only.

use std::collections::HashMap;
use std::path::PathBuf;

use super::{env_var_for_key, load_from, ConfigError, Settings, UnknownKey};

pub(super) fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A directory with no files: only the built-in layers apply.
pub(super) fn no_dir() -> PathBuf {
    PathBuf::from("/nonexistent/event-backbone-config")
}

pub(super) fn load_with(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    load_from(&no_dir(), &vars(pairs))
}

pub(super) fn expect_invalid(pairs: &[(&str, &str)], key: &str) -> String {
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

pub(super) fn expect_unknown(result: Result<Settings, ConfigError>) -> Vec<UnknownKey> {
    match result {
        Err(ConfigError::UnknownKeys(keys)) => {
            assert!(!keys.is_empty());
            keys
        }
        other => panic!("expected unknown keys, got {other:?}"),
    }
}
