//! `BACKBONE_*` variables that no setting reads. The config crate's
//! environment layer only looks at `BACKBONE__…` (two underscores), so a
//! variable with one underscore (`BACKBONE_DATABASE__URL`) or a misspelt
//! `BACKBONE_EVN` would be ignored without a word and the file's value, or
//! `local`, would stay in force. Such a variable is refused, naming the
//! closest variable that is read.

use std::fmt;

use super::{env_var_for_key, ENV_PREFIX, ENV_SEPARATOR, ENV_VAR_CONFIG_DIR, ENV_VAR_ENV};

/// Variables with one underscore after the prefix that the project reads
/// outside the settings: the env and config dir, and the test and bench
/// tooling's own namespaces (scripts/, tests/).
const READ_AS_IS: &[&str] = &[ENV_VAR_ENV, ENV_VAR_CONFIG_DIR];
const TOOLING_PREFIXES: &[&str] = &["BACKBONE_TEST_", "BACKBONE_BENCH_"];

/// A `BACKBONE_…` variable nothing reads, and the closest one that is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownVariable {
    pub name: String,
    pub suggestion: Option<String>,
}

impl fmt::Display for UnknownVariable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown variable {}", self.name)?;
        match &self.suggestion {
            Some(s) => write!(f, "; did you mean {s}?"),
            None => write!(
                f,
                " (settings are {ENV_PREFIX}{ENV_SEPARATOR}SECTION{ENV_SEPARATOR}KEY; \
                 the others read are {ENV_VAR_ENV} and {ENV_VAR_CONFIG_DIR})"
            ),
        }
    }
}

/// The variables named like ours (prefix `BACKBONE_`, any case, not empty)
/// that neither the settings nor the project read. `keys` are the settings'
/// dotted keys (the candidates for a suggestion).
pub(super) fn unknown_variables<'a>(
    vars: impl IntoIterator<Item = (&'a str, &'a str)>,
    keys: &[String],
) -> Vec<UnknownVariable> {
    let single = format!("{ENV_PREFIX}_");
    let double = format!("{ENV_PREFIX}{ENV_SEPARATOR}");
    let mut candidates: Vec<String> = keys.iter().map(|k| env_var_for_key(k)).collect();
    candidates.extend(READ_AS_IS.iter().map(|s| s.to_string()));
    let mut out: Vec<UnknownVariable> = vars
        .into_iter()
        .filter(|(_, value)| !value.is_empty())
        .map(|(name, _)| name)
        .filter(|name| {
            let upper = name.to_uppercase();
            // `BACKBONE__…` is the settings layer: its unknown keys are
            // reported by `strict`, with the key they resemble.
            upper.starts_with(&single)
                && !upper.starts_with(&double)
                && !READ_AS_IS.contains(&upper.as_str())
                && !TOOLING_PREFIXES.iter().any(|p| upper.starts_with(p))
        })
        .map(|name| UnknownVariable {
            name: name.to_owned(),
            suggestion: closest(name, &candidates).map(str::to_owned),
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The name the same once underscores and case are ignored (a wrong
/// separator); failing that, one a slip of a letter or two away.
fn closest<'a>(name: &str, candidates: &'a [String]) -> Option<&'a str> {
    let norm = |s: &str| {
        s.to_uppercase()
            .trim_start_matches(ENV_PREFIX)
            .replace('_', "")
    };
    let wanted = norm(name);
    if let Some(same) = candidates.iter().find(|c| norm(c) == wanted) {
        return Some(same);
    }
    // One edit per four characters of the part after the prefix, at least one.
    let allowed = (wanted.chars().count() / 4).max(1);
    candidates
        .iter()
        .map(|c| (strsim::damerau_levenshtein(&wanted, &norm(c)), c))
        .filter(|(d, _)| *d <= allowed)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Vec<String> {
        [
            "env",
            "database",
            "database.url",
            "log.level",
            "retry.max_attempts",
        ]
        .map(str::to_owned)
        .to_vec()
    }

    fn check(vars: &[(&str, &str)]) -> Vec<String> {
        unknown_variables(vars.iter().copied(), &keys())
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn misspelt_env_and_wrong_separators_are_named_with_the_right_spelling() {
        assert_eq!(
            check(&[("BACKBONE_EVN", "sandbox")]),
            ["unknown variable BACKBONE_EVN; did you mean BACKBONE_ENV?"]
        );
        assert_eq!(
            check(&[("BACKBONE_DATABASE__URL", "mysql://x")]),
            ["unknown variable BACKBONE_DATABASE__URL; did you mean BACKBONE__DATABASE__URL?"]
        );
        assert_eq!(
            check(&[("BACKBONE_DATABASE_URL", "mysql://x")]),
            ["unknown variable BACKBONE_DATABASE_URL; did you mean BACKBONE__DATABASE__URL?"]
        );
        assert_eq!(
            check(&[("BACKBONE_CONFG_DIR", "/etc/eb")]),
            ["unknown variable BACKBONE_CONFG_DIR; did you mean BACKBONE_CONFIG_DIR?"]
        );
        let none = check(&[("BACKBONE_WHATEVER", "1")]);
        assert_eq!(none.len(), 1);
        assert!(none[0].starts_with("unknown variable BACKBONE_WHATEVER (settings are"));
    }

    #[test]
    fn what_the_project_reads_is_not_refused() {
        assert!(check(&[
            ("BACKBONE_ENV", "sandbox"),
            ("BACKBONE_CONFIG_DIR", "/etc/eb"),
            ("BACKBONE_TEST_PID_DIR", "/tmp/x"),
            ("BACKBONE_TEST_MYSQL_URL", "mysql://root@h"),
            ("BACKBONE_TEST_KEEP_DB", "1"),
            ("BACKBONE_BENCH_DLQ_ROWS", "10"),
            ("BACKBONE__DATABASE__URL", "sqlite://x"),
            ("BACKBONEX_FOO", "1"),
            ("HOME", "/root"),
            // Empty is unset (Helm renders unset values so).
            ("BACKBONE_EVN", ""),
        ])
        .is_empty());
    }
}
