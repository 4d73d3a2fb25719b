//! Layered settings (docs/spec.md §8).
//!
//! Layers, each overriding the one before: `default.toml` → `{env}.toml` →
//! `BACKBONE__SECTION__KEY` environment variables. The TOML files are built
//! into the binary as the base layers, so it runs from any directory; files
//! in the config dir override them. Secrets are [`SecretString`](secrecy::SecretString)s: `Debug`
//! hides them and [`Settings::redacted`] masks them. A key no setting reads
//! is an error naming it and where it was set (`strict`).
//!
//! A `BACKBONE_…` variable nothing reads is an error too, naming the
//! closest one (`env_vars`). Outside `local`, `run`, `doctor` and
//! `check-config` also require a complete configuration (`deployment`).
//!
//! One concern per file: `settings` (the structs), `load` (layering and
//! error translation), `validate` (checks types cannot express),
//! `deployment` (completeness outside `local`), `explain` (which layer set
//! each value), `serde_helpers` (durations, lists, redaction) and `error`.

mod deployment;
mod env_vars;
mod error;
mod explain;
mod load;
mod serde_helpers;
mod settings;
mod strict;
mod targets;
#[cfg(test)]
mod test_support;
mod validate;

pub use crate::model::rules::ConflictPolicy;

pub use self::deployment::Incomplete;
pub use self::env_vars::UnknownVariable;
pub use self::error::{env_var_for_key, ConfigError};
pub use self::explain::{explain, Explained};
pub use self::load::{load, load_from, process_config_dir, process_env};
pub use self::serde_helpers::mask_url_password;
pub use self::settings::*;
pub use self::strict::{KeyOrigin, UnknownKey};
pub use self::targets::*;

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
