//! Outside `local`, a configuration must be complete before the daemon
//! runs on it (`run`, `doctor`, `check-config`): every target it delivers
//! to has a URL that is not a placeholder and credentials for its kind, and
//! the database URL carries a password. Locally these are fine (a stand-in
//! target without authentication, SQLite), so `local` stays lenient.
//!
//! The other commands (`migrate` with the administrator's URL, `dlq`,
//! `events`…) load the same settings without these checks: they do not
//! deliver, and the migration Job has no target credentials.

use secrecy::ExposeSecret;

use super::{AuthKind, ConfigError, Settings, Target};
use crate::topology::{ConsumerKind, Env};

/// One thing missing from a deployment's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incomplete {
    /// The dotted key to set, e.g. `targets.netsuite.url`.
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for Incomplete {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` ({}): {}",
            self.key,
            super::env_var_for_key(&self.key),
            self.message
        )
    }
}

impl Settings {
    /// Every gap in a configuration outside `local` (none in `local`).
    pub fn incomplete(&self) -> Vec<Incomplete> {
        let mut out = Vec::new();
        if self.env == Env::Local {
            return out;
        }
        let mut gap = |key: String, message: String| out.push(Incomplete { key, message });
        let db = self.database.url.expose_secret();
        if db.starts_with("mysql://") || db.starts_with("mariadb://") {
            if let Ok(u) = url::Url::parse(db) {
                if u.password().is_none_or(str::is_empty) {
                    gap(
                        "database.url".into(),
                        format!(
                            "{} has no password; set the whole URL, password included, as {} (from a Secret)",
                            self.database.url_masked(),
                            super::env_var_for_key("database.url")
                        ),
                    );
                }
                if let Some(why) = u.host_str().and_then(placeholder) {
                    gap("database.url".into(), why);
                }
            }
        }
        for (kind, target) in [
            (ConsumerKind::Netsuite, &self.targets.netsuite),
            (ConsumerKind::Suitex, &self.targets.suitex),
        ] {
            if self.consumers.get(kind).enabled {
                target_gaps(kind.as_str(), target, &mut gap);
            }
        }
        out
    }

    /// [`Settings::incomplete`] as an error (exit 2), naming every key.
    pub fn check_complete(&self) -> Result<(), ConfigError> {
        let gaps = self.incomplete();
        if gaps.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Incomplete {
                env: self.env.as_str().to_owned(),
                gaps,
            })
        }
    }
}

fn target_gaps(name: &str, t: &Target, gap: &mut impl FnMut(String, String)) {
    let key = |k: &str| format!("targets.{name}.{k}");
    let Some(url) = &t.url else {
        gap(
            key("url"),
            format!("is not set while consumers.{name}.enabled is true"),
        );
        return;
    };
    for (k, u) in [("url", Some(url)), ("probe_url", t.probe_url.as_ref())] {
        let host = u.and_then(|u| url::Url::parse(u).ok()?.host_str().map(str::to_owned));
        if let Some(why) = host.as_deref().and_then(placeholder) {
            gap(key(k), why);
        }
    }
    if let Some(account) = &t.auth.account {
        if is_example_account(account) {
            gap(
                key("auth.account"),
                format!("`{account}` is the documentation's example account id; set the real one"),
            );
        }
    }
    if t.auth_kind() == AuthKind::None {
        gap(
            key("auth.kind"),
            format!(
                "no credentials: requests to {name} would go unsigned; set targets.{name}.auth.kind \
                 and its keys (docs/spec.md §4.3), or targets.{name}.token for a bearer token"
            ),
        );
    }
}

/// Why `host` is a placeholder rather than a real host, if it is one: the
/// reserved example names, a "change me" word, angle brackets, or the
/// documentation's NetSuite account (the shipped env files use it).
pub(super) fn placeholder(host: &str) -> Option<String> {
    let h = host.to_lowercase();
    let labels: Vec<&str> = h.split('.').collect();
    let reserved = labels
        .last()
        .is_some_and(|tld| matches!(*tld, "example" | "invalid" | "test" | "localdomain"))
        || ["example.com", "example.org", "example.net"]
            .iter()
            .any(|d| h == *d || h.ends_with(&format!(".{d}")));
    let words = [
        "changeme",
        "change-me",
        "change_me",
        "your-",
        "your_",
        "placeholder",
        "replace-me",
        "todo",
        "xxx",
    ];
    let marked = h.contains('<')
        || h.contains('>')
        || h.contains("%3c")
        || words.iter().any(|w| h.contains(w));
    let example_account =
        labels.first().is_some_and(|l| is_example_account(l)) && h.ends_with(".netsuite.com");
    if reserved || marked {
        Some(format!("host `{host}` is a placeholder; set the real one"))
    } else if example_account {
        Some(format!(
            "host `{host}` is the shipped placeholder (NetSuite account 1234567 of the docs); \
             set your account's RESTlet URL"
        ))
    } else {
        None
    }
}

/// `1234567`, `1234567_SB1`, `1234567-sb1`: the documentation's account.
fn is_example_account(account: &str) -> bool {
    let a = account.to_lowercase();
    a == "1234567" || a.starts_with("1234567_") || a.starts_with("1234567-")
}

#[cfg(test)]
mod tests {
    use super::super::test_support::load_with;
    use super::*;

    fn keys(vars: &[(&str, &str)]) -> Vec<String> {
        load_with(vars)
            .unwrap()
            .incomplete()
            .into_iter()
            .map(|g| g.key)
            .collect()
    }

    #[test]
    fn placeholders_are_recognised() {
        for h in [
            "example.com",
            "ns.example.com",
            "hook.example",
            "x.example.invalid",
            "changeme.internal",
            "your-account.restlets.api.netsuite.com",
            "1234567-sb1.restlets.api.netsuite.com",
            "1234567.restlets.api.netsuite.com",
        ] {
            assert!(placeholder(h).is_some(), "{h}");
        }
        for h in [
            "7654321-sb1.restlets.api.netsuite.com",
            "suitex-app.suitex-sandbox.svc.cluster.local",
            "127.0.0.1",
            "examples.org",
        ] {
            assert!(placeholder(h).is_none(), "{h}");
        }
    }

    #[test]
    fn local_is_lenient() {
        assert!(keys(&[]).is_empty());
        assert!(keys(&[
            ("BACKBONE__DATABASE__URL", "mysql://u@h/db"),
            (
                "BACKBONE__TARGETS__NETSUITE__URL",
                "https://ns.example.com/x"
            ),
            ("BACKBONE__CONSUMERS__NETSUITE__ENABLED", "true"),
        ])
        .is_empty());
    }

    #[test]
    fn the_shipped_sandbox_file_alone_is_incomplete_naming_each_key() {
        let got = keys(&[("BACKBONE_ENV", "sandbox")]);
        assert_eq!(
            got,
            [
                "database.url",
                "targets.netsuite.url",
                "targets.netsuite.auth.kind",
                "targets.suitex.auth.kind",
            ]
        );
    }

    #[test]
    fn a_complete_production_configuration_passes() {
        let got = keys(&[
            ("BACKBONE_ENV", "production"),
            ("BACKBONE__DATABASE__URL", "mysql://sync_worker:pw@127.0.0.1:3306/eb"),
            ("BACKBONE__TARGETS__NETSUITE__URL", "https://7654321.restlets.api.netsuite.com/app/site/hosting/restlet.nl?script=1&deploy=1"),
            ("BACKBONE__TARGETS__NETSUITE__TOKEN", "t"),
            ("BACKBONE__TARGETS__SUITEX__TOKEN", "t"),
        ]);
        assert!(got.is_empty(), "{got:?}");
        // A target whose consumer is off is not checked.
        let got = keys(&[
            ("BACKBONE_ENV", "production"),
            (
                "BACKBONE__DATABASE__URL",
                "mysql://sync_worker:pw@127.0.0.1:3306/eb",
            ),
            ("BACKBONE__CONSUMERS__NETSUITE__ENABLED", "false"),
            (
                "BACKBONE__TARGETS__SUITEX__URL",
                "https://hooks.example.com/x",
            ),
            ("BACKBONE__TARGETS__SUITEX__TOKEN", "t"),
        ]);
        assert_eq!(got, ["targets.suitex.url"]);
    }
}
