//! (De)serialisation helpers: masked and redacted secrets, lists written
//! as arrays or comma-separated strings, humantime durations.

use secrecy::{ExposeSecret, SecretString};
use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

use crate::model::raw_event::Source;

pub(super) const REDACTED: &str = "[redacted]";

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

pub(super) fn serialize_masked_url<S: Serializer>(
    url: &SecretString,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(&mask_url_password(url.expose_secret()))
}

pub(super) fn serialize_redacted_opt<S: Serializer>(
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

/// `merge.source_priority`: a list of source names, parsed and checked here
/// so the settings carry the typed order.
pub(super) fn source_priority<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Source>, D::Error> {
    super::validate::source_priority(&string_list(d)?).map_err(D::Error::custom)
}

/// Durations as humantime strings ("250ms", "10s").
pub(super) mod duration_str {
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
    use super::super::test_support::load_with;
    use super::*;

    #[test]
    fn source_priority_accepts_a_comma_list() {
        let s = load_with(&[("BACKBONE__MERGE__SOURCE_PRIORITY", "suitex, netsuite")]).unwrap();
        assert_eq!(s.merge.source_priority, [Source::Suitex, Source::Netsuite]);
        let s = load_with(&[("BACKBONE__MERGE__SOURCE_PRIORITY", "NetSuite,SuiteX")]).unwrap();
        assert_eq!(s.merge.source_priority, [Source::Netsuite, Source::Suitex]);
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
}
