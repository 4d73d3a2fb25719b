//! Strict keys: every key a configuration file or a `BACKBONE__…` variable
//! sets must be one the settings read. A misspelt key would otherwise be
//! ignored without a word and its default would stay in force.
//!
//! The settings' deserialisation reports the paths it ignored
//! (`serde_ignored`), so map-shaped settings accept any name where serde
//! does; each ignored path is then traced back to the layers that set it, so
//! the error names the file or the variable to fix.

use std::fmt;
use std::path::PathBuf;

use config::{Map, Source, Value};

use super::{ENV_PREFIX, ENV_SEPARATOR};

/// Where a configuration key came from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum KeyOrigin {
    /// A file built into the binary (`config/default.toml`, …).
    BuiltIn(String),
    /// A file in the config dir.
    File(PathBuf),
    /// An environment variable, by its name as set.
    EnvVar(String),
    /// No layer claims it (should not happen; reported rather than dropped).
    Unknown,
}

impl fmt::Display for KeyOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyOrigin::BuiltIn(name) => write!(f, "built-in file {name}"),
            KeyOrigin::File(path) => write!(f, "file {}", path.display()),
            KeyOrigin::EnvVar(name) => write!(f, "environment variable {name}"),
            KeyOrigin::Unknown => f.write_str("origin unknown"),
        }
    }
}

/// A key no setting reads. Displayed as the key, where it was set, and the
/// closest known key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownKey {
    /// Dotted path, e.g. `retry.max_atempts`.
    pub key: String,
    pub origin: KeyOrigin,
    /// The closest key the settings do read, if one is close enough.
    pub suggestion: Option<String>,
}

impl fmt::Display for UnknownKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` ({})", self.key, self.origin)?;
        if let Some(s) = &self.suggestion {
            write!(f, "; did you mean `{s}`")?;
            // Name the variable too, so the fix can be pasted as is.
            if matches!(self.origin, KeyOrigin::EnvVar(_)) {
                write!(f, " ({})", super::env_var_for_key(s))?;
            }
            f.write_str("?")?;
        }
        Ok(())
    }
}

/// The keys one configuration layer sets, with their origin.
pub(super) struct Layer {
    keys: Vec<(Vec<String>, KeyOrigin)>,
}

impl Layer {
    /// The leaf keys of a file source (tables flattened, arrays are leaves).
    /// Only called once the builder has read the same source, so a parse
    /// error here cannot be new; it is passed on all the same.
    pub(super) fn from_source(
        source: &dyn Source,
        origin: KeyOrigin,
    ) -> Result<Layer, config::ConfigError> {
        let mut keys = Vec::new();
        flatten(source.collect()?, &mut Vec::new(), &mut |path| {
            keys.push((path, origin.clone()))
        });
        keys.sort();
        Ok(Layer { keys })
    }

    /// The keys the `BACKBONE__…` variables set, by the rules the config
    /// crate's `Environment` source applies: prefix matched ignoring case,
    /// empty values skipped, each `__` a level.
    pub(super) fn from_env_vars<'a>(vars: impl IntoIterator<Item = (&'a str, &'a str)>) -> Layer {
        let prefix = format!("{ENV_PREFIX}{ENV_SEPARATOR}").to_lowercase();
        let mut keys: Vec<_> = vars
            .into_iter()
            .filter(|(_, value)| !value.is_empty())
            .filter_map(|(name, _)| {
                let lower = name.to_lowercase();
                let rest = lower.strip_prefix(&prefix)?;
                let path = rest.split(ENV_SEPARATOR).map(str::to_owned).collect();
                Some((path, KeyOrigin::EnvVar(name.to_owned())))
            })
            .collect();
        // Variables come from a map: sort so errors list them in a stable order.
        keys.sort();
        Layer { keys }
    }
}

fn flatten(map: Map<String, Value>, prefix: &mut Vec<String>, out: &mut impl FnMut(Vec<String>)) {
    for (key, value) in map {
        // A quoted key with dots is a path to the config crate too.
        let depth = prefix.len();
        prefix.extend(key.split('.').map(str::to_owned));
        match value.clone().into_table() {
            Ok(table) if !table.is_empty() => flatten(table, prefix, out),
            _ => out(prefix.clone()),
        }
        prefix.truncate(depth);
    }
}

/// The segments of a path serde ignored (`Option` and newtype levels are
/// not segments of a key).
pub(super) fn segments(path: &serde_ignored::Path<'_>) -> Vec<String> {
    use serde_ignored::Path;
    fn walk(path: &Path<'_>, out: &mut Vec<String>) {
        match path {
            Path::Root => {}
            Path::Seq { parent, index } => {
                walk(parent, out);
                out.push(index.to_string());
            }
            Path::Map { parent, key } => {
                walk(parent, out);
                out.push(key.clone());
            }
            Path::Some { parent }
            | Path::NewtypeStruct { parent }
            | Path::NewtypeVariant { parent } => walk(parent, out),
        }
    }
    let mut out = Vec::new();
    walk(path, &mut out);
    out
}

/// Traces each ignored path to every layer key at or under it. `known` is
/// the settings as JSON (every key present, unset options as null): the
/// candidates for a suggestion.
pub(super) fn unknown_keys(
    ignored: &[Vec<String>],
    layers: &[Layer],
    known: &serde_json::Value,
) -> Vec<UnknownKey> {
    let mut candidates = Vec::new();
    known_paths(known, &mut Vec::new(), &mut candidates);
    let under = |key: &[String], ignored: &[String]| {
        key.len() >= ignored.len()
            && key
                .iter()
                .zip(ignored)
                .all(|(k, i)| k.eq_ignore_ascii_case(i))
    };
    // Layer by layer, so files come before variables as they are applied.
    let mut out = Vec::new();
    let mut traced = vec![false; ignored.len()];
    for (key, origin) in layers.iter().flat_map(|l| &l.keys) {
        for (i, path) in ignored.iter().enumerate() {
            if under(key, path) {
                traced[i] = true;
                out.push(unknown(key.join("."), origin.clone(), &candidates));
                break;
            }
        }
    }
    for (path, _) in ignored.iter().zip(traced).filter(|(_, t)| !t) {
        out.push(unknown(path.join("."), KeyOrigin::Unknown, &candidates));
    }
    out
}

fn unknown(key: String, origin: KeyOrigin, candidates: &[String]) -> UnknownKey {
    let suggestion = closest(&key, candidates).map(str::to_owned);
    UnknownKey {
        key,
        origin,
        suggestion,
    }
}

/// Every key of the settings (`known` as JSON), tables included.
pub(super) fn known_keys(known: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    known_paths(known, &mut Vec::new(), &mut out);
    out
}

/// The settings' leaves (arrays are leaves) as (dotted key, JSON text).
pub(super) fn leaves(
    v: &serde_json::Value,
    prefix: &mut Vec<String>,
    out: &mut Vec<(String, String)>,
) {
    match v {
        serde_json::Value::Object(map) if !map.is_empty() => {
            for (k, child) in map {
                prefix.push(k.clone());
                leaves(child, prefix, out);
                prefix.pop();
            }
        }
        other => out.push((prefix.join("."), other.to_string())),
    }
}

/// The last layer that sets `key` (or the list or table holding it).
pub(super) fn origin_of<'a>(key: &str, layers: &'a [Layer]) -> Option<&'a KeyOrigin> {
    let key: Vec<&str> = key.split('.').collect();
    let mut found = None;
    for (path, origin) in layers.iter().flat_map(|l| &l.keys) {
        let n = path.len().min(key.len());
        if path[..n]
            .iter()
            .zip(&key[..n])
            .all(|(a, b)| a.eq_ignore_ascii_case(b))
        {
            found = Some(origin);
        }
    }
    found
}

/// Every key path of the settings, tables included.
fn known_paths(v: &serde_json::Value, prefix: &mut Vec<String>, out: &mut Vec<String>) {
    if let serde_json::Value::Object(map) = v {
        for (k, child) in map {
            prefix.push(k.clone());
            out.push(prefix.join("."));
            known_paths(child, prefix, out);
            prefix.pop();
        }
    }
}

/// How alike two keys must be (normalised Damerau-Levenshtein) to suggest
/// one for the other: a slip of a letter or two, not a different key.
const MIN_SIMILARITY: f64 = 0.75;

/// The known key most like `key`; failing that, the only known key with the
/// same last segment (a right name in the wrong section).
fn closest<'a>(key: &str, known: &'a [String]) -> Option<&'a str> {
    let key = key.to_lowercase();
    let best = known
        .iter()
        .map(|k| (strsim::normalized_damerau_levenshtein(&key, k), k))
        .filter(|(score, _)| *score >= MIN_SIMILARITY)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    if let Some((_, k)) = best {
        return Some(k);
    }
    let last = key.rsplit('.').next()?;
    let mut same_leaf = known
        .iter()
        .filter(|k| k.contains('.') && k.rsplit('.').next() == Some(last));
    match (same_leaf.next(), same_leaf.next()) {
        (Some(only), None) => Some(only),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> Vec<String> {
        [
            "retry",
            "retry.max_attempts",
            "retry.max_backoff",
            "log",
            "log.level",
            "log.format",
            "merge",
            "merge.workers",
            "consumers.merge.enabled",
            "consumers.park.enabled",
        ]
        .map(str::to_owned)
        .to_vec()
    }

    #[test]
    fn closest_suggests_near_misses_only() {
        let k = known();
        assert_eq!(closest("retry.max_atempts", &k), Some("retry.max_attempts"));
        assert_eq!(
            closest("retyr.max_attempts", &k),
            Some("retry.max_attempts")
        );
        assert_eq!(closest("LOG.LEVL", &k), Some("log.level"));
        assert_eq!(closest("retry.foo", &k), None);
        assert_eq!(closest("nothing_like_it", &k), None);
        // The right name in the wrong section.
        assert_eq!(closest("log.workers", &k), Some("merge.workers"));
        // Ambiguous last segment: no guess.
        assert_eq!(closest("log.enabled", &k), None);
    }

    #[test]
    fn env_layer_mirrors_the_environment_source() {
        let layer = Layer::from_env_vars([
            ("BACKBONE__RETRY__MAX_ATEMPTS", "3"),
            ("backbone__log__level", "debug"),
            ("BACKBONE__LOG__FORMAT", ""),
            ("BACKBONE_ENV", "local"),
            ("BACKBONEX__LOG__LEVEL", "debug"),
        ]);
        let mut keys: Vec<_> = layer
            .keys
            .iter()
            .map(|(k, o)| (k.join("."), o.to_string()))
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                (
                    "log.level".to_owned(),
                    "environment variable backbone__log__level".to_owned()
                ),
                (
                    "retry.max_atempts".to_owned(),
                    "environment variable BACKBONE__RETRY__MAX_ATEMPTS".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn file_layer_flattens_tables() {
        let src = config::File::from_str(
            "top = 1\n[a]\nb = \"x\"\nlist = [1, 2]\n[a.c]\nd = true\n",
            config::FileFormat::Toml,
        );
        let layer = Layer::from_source(&src, KeyOrigin::BuiltIn("t.toml".into())).unwrap();
        let mut keys: Vec<_> = layer.keys.iter().map(|(k, _)| k.join(".")).collect();
        keys.sort();
        assert_eq!(keys, ["a.b", "a.c.d", "a.list", "top"]);
    }

    #[test]
    fn ignored_paths_are_traced_to_every_layer_that_sets_them() {
        let file = Layer {
            keys: vec![
                (
                    vec!["retyr".into(), "max_attempts".into()],
                    KeyOrigin::File("/etc/eb/local.toml".into()),
                ),
                (
                    vec!["retry".into(), "max_attempts".into()],
                    KeyOrigin::File("/etc/eb/local.toml".into()),
                ),
            ],
        };
        let env = Layer::from_env_vars([("BACKBONE__LOG__LEVL", "debug")]);
        let known = serde_json::json!({
            "retry": {"max_attempts": 5},
            "log": {"level": "info", "format": "text"},
        });
        let got = unknown_keys(
            &[vec!["retyr".into()], vec!["log".into(), "levl".into()]],
            &[file, env],
            &known,
        );
        let text: Vec<String> = got.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "`retyr.max_attempts` (file /etc/eb/local.toml); did you mean `retry.max_attempts`?",
                "`log.levl` (environment variable BACKBONE__LOG__LEVL); did you mean `log.level` (BACKBONE__LOG__LEVEL)?",
            ]
        );
        let orphan = unknown_keys(&[vec!["zzz".into()]], &[], &known);
        assert_eq!(orphan[0].origin, KeyOrigin::Unknown);
        assert_eq!(orphan[0].suggestion, None);
    }
}
