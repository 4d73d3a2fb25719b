//! `targets.<t>.auth.*` and the bearer token: how a target is
//! authenticated (docs/spec.md §4.3), and the checks on each kind's keys.

use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::{check_url, Target};
use crate::config::error::invalid;
use crate::config::serde_helpers::serialize_redacted_opt;
use crate::config::ConfigError;

/// `targets.<t>.auth.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthKind {
    None,
    Bearer,
    NetsuiteTba,
    NetsuiteOauth2,
    HmacSha256,
    StandardWebhooks,
}

impl AuthKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthKind::None => "none",
            AuthKind::Bearer => "bearer",
            AuthKind::NetsuiteTba => "netsuite_tba",
            AuthKind::NetsuiteOauth2 => "netsuite_oauth2",
            AuthKind::HmacSha256 => "hmac_sha256",
            AuthKind::StandardWebhooks => "standard_webhooks",
        }
    }
}

/// The keys of every kind, flat as they are written; [`Target::validate`]
/// checks that a kind has its keys and none of another kind's. Each secret
/// may be given as a value or as a file (`<key>_file`), never both.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct AuthSettings {
    /// Unset: `bearer` when `targets.<t>.token` is set, else `none`.
    pub kind: Option<AuthKind>,
    /// NetSuite account id as NetSuite shows it (`1234567`, `1234567_SB1`).
    pub account: Option<String>,
    #[serde(serialize_with = "serialize_redacted_opt")]
    pub consumer_key: Option<SecretString>,
    pub consumer_key_file: Option<PathBuf>,
    #[serde(serialize_with = "serialize_redacted_opt")]
    pub consumer_secret: Option<SecretString>,
    pub consumer_secret_file: Option<PathBuf>,
    #[serde(serialize_with = "serialize_redacted_opt")]
    pub token_id: Option<SecretString>,
    pub token_id_file: Option<PathBuf>,
    #[serde(serialize_with = "serialize_redacted_opt")]
    pub token_secret: Option<SecretString>,
    pub token_secret_file: Option<PathBuf>,
    pub client_id: Option<String>,
    /// The certificate id NetSuite shows for the uploaded public key (the JWT's `kid`).
    pub certificate_id: Option<String>,
    /// PEM private key (RSA → PS256, EC P-256 → ES256).
    pub private_key_file: Option<PathBuf>,
    pub scope: Option<String>,
    pub token_url: Option<String>,
    /// Header carrying the HMAC (`hmac_sha256`; default `Signature`).
    pub header: Option<String>,
    #[serde(serialize_with = "serialize_redacted_opt")]
    pub secret: Option<SecretString>,
    pub secret_file: Option<PathBuf>,
    #[serde(serialize_with = "serialize_redacted_opt")]
    pub previous_secret: Option<SecretString>,
    pub previous_secret_file: Option<PathBuf>,
}

/// A secret as configured: its value, or the file that holds it.
#[derive(Debug, Clone)]
pub enum SecretInput {
    Value(SecretString),
    File(PathBuf),
}

/// NetSuite's default OAuth 2.0 scopes for a RESTlet or the REST API.
pub const DEFAULT_OAUTH2_SCOPE: &str = "restlets rest_webservices";
/// The header spatie/laravel-webhook-client reads by default.
pub const DEFAULT_HMAC_HEADER: &str = "Signature";

impl AuthSettings {
    fn secret(&self, value: &Option<SecretString>, file: &Option<PathBuf>) -> Option<SecretInput> {
        match (value, file) {
            (Some(v), _) => Some(SecretInput::Value(v.clone())),
            (None, Some(f)) => Some(SecretInput::File(f.clone())),
            (None, None) => None,
        }
    }
    pub fn consumer_key(&self) -> Option<SecretInput> {
        self.secret(&self.consumer_key, &self.consumer_key_file)
    }
    pub fn consumer_secret(&self) -> Option<SecretInput> {
        self.secret(&self.consumer_secret, &self.consumer_secret_file)
    }
    pub fn token_id(&self) -> Option<SecretInput> {
        self.secret(&self.token_id, &self.token_id_file)
    }
    pub fn token_secret(&self) -> Option<SecretInput> {
        self.secret(&self.token_secret, &self.token_secret_file)
    }
    pub fn secret_input(&self) -> Option<SecretInput> {
        self.secret(&self.secret, &self.secret_file)
    }
    pub fn previous_secret(&self) -> Option<SecretInput> {
        self.secret(&self.previous_secret, &self.previous_secret_file)
    }

    /// Which keys are set, by name (values and files alike).
    fn set_keys(&self) -> Vec<&'static str> {
        let mut keys = Vec::new();
        let mut has = |name: &'static str, set: bool| {
            if set {
                keys.push(name)
            }
        };
        has("account", self.account.is_some());
        has("consumer_key", self.consumer_key.is_some());
        has("consumer_key_file", self.consumer_key_file.is_some());
        has("consumer_secret", self.consumer_secret.is_some());
        has("consumer_secret_file", self.consumer_secret_file.is_some());
        has("token_id", self.token_id.is_some());
        has("token_id_file", self.token_id_file.is_some());
        has("token_secret", self.token_secret.is_some());
        has("token_secret_file", self.token_secret_file.is_some());
        has("client_id", self.client_id.is_some());
        has("certificate_id", self.certificate_id.is_some());
        has("private_key_file", self.private_key_file.is_some());
        has("scope", self.scope.is_some());
        has("token_url", self.token_url.is_some());
        has("header", self.header.is_some());
        has("secret", self.secret.is_some());
        has("secret_file", self.secret_file.is_some());
        has("previous_secret", self.previous_secret.is_some());
        has("previous_secret_file", self.previous_secret_file.is_some());
        keys
    }
}

impl AuthKind {
    /// The keys (besides `kind`) this kind reads; a `<key>_file` counts as its key.
    fn keys(self) -> &'static [&'static str] {
        match self {
            AuthKind::None | AuthKind::Bearer => &[],
            AuthKind::NetsuiteTba => &[
                "account",
                "consumer_key",
                "consumer_secret",
                "token_id",
                "token_secret",
            ],
            AuthKind::NetsuiteOauth2 => &[
                "account",
                "client_id",
                "certificate_id",
                "private_key_file",
                "scope",
                "token_url",
            ],
            AuthKind::HmacSha256 => &["header", "secret"],
            AuthKind::StandardWebhooks => &["secret", "previous_secret"],
        }
    }
}
impl Target {
    /// The kind in effect: `auth.kind`, else `bearer` when a token is set.
    pub fn auth_kind(&self) -> AuthKind {
        self.auth
            .kind
            .unwrap_or(if self.token.is_some() || self.token_file.is_some() {
                AuthKind::Bearer
            } else {
                AuthKind::None
            })
    }

    /// The bearer token, as a value or a file.
    pub fn token_input(&self) -> Option<SecretInput> {
        self.auth.secret(&self.token, &self.token_file)
    }

    /// NetSuite's realm for TBA: the account id, upper case.
    pub fn realm(&self) -> Option<String> {
        self.auth.account.as_ref().map(|a| a.to_uppercase())
    }

    /// `auth.token_url`, or the account's token endpoint.
    pub fn token_url(&self) -> Option<String> {
        if let Some(u) = &self.auth.token_url {
            return Some(u.clone());
        }
        let account = self.auth.account.as_ref()?;
        Some(format!(
            "https://{}.suitetalk.api.netsuite.com/services/rest/auth/oauth2/v1/token",
            account_host(account)
        ))
    }

    /// Checks the target's authentication: each secret given once and not
    /// empty, only the keys of its kind, then what the kind requires.
    pub(super) fn validate_auth(&self, name: &str) -> Result<(), ConfigError> {
        self.check_secrets_given_once(name)?;
        let kind = self.auth_kind();
        self.check_keys_of_kind(name, kind)?;
        match kind {
            AuthKind::None => Ok(()),
            AuthKind::Bearer => self.check_bearer(name),
            AuthKind::NetsuiteTba => self.check_netsuite_tba(name),
            AuthKind::NetsuiteOauth2 => self.check_netsuite_oauth2(name),
            AuthKind::HmacSha256 => self.check_hmac_sha256(name),
            AuthKind::StandardWebhooks => self.check_standard_webhooks(name),
        }
    }

    /// No secret both as a value and as a file (which one wins would be a
    /// guess), and none set empty.
    fn check_secrets_given_once(&self, name: &str) -> Result<(), ConfigError> {
        let key = |k: &str| format!("targets.{name}.auth.{k}");
        let a = &self.auth;
        if self.token.is_some() && self.token_file.is_some() {
            return Err(invalid(
                &format!("targets.{name}.token"),
                "is set both as a value and as token_file; keep one",
            ));
        }
        for (k, both) in [
            (
                "consumer_key",
                a.consumer_key.is_some() && a.consumer_key_file.is_some(),
            ),
            (
                "consumer_secret",
                a.consumer_secret.is_some() && a.consumer_secret_file.is_some(),
            ),
            (
                "token_id",
                a.token_id.is_some() && a.token_id_file.is_some(),
            ),
            (
                "token_secret",
                a.token_secret.is_some() && a.token_secret_file.is_some(),
            ),
            ("secret", a.secret.is_some() && a.secret_file.is_some()),
            (
                "previous_secret",
                a.previous_secret.is_some() && a.previous_secret_file.is_some(),
            ),
        ] {
            if both {
                return Err(invalid(
                    &key(k),
                    format!("is set both as a value and as {k}_file; keep one"),
                ));
            }
        }
        for empty in [
            ("token", &self.token),
            ("auth.consumer_key", &a.consumer_key),
            ("auth.consumer_secret", &a.consumer_secret),
            ("auth.token_id", &a.token_id),
            ("auth.token_secret", &a.token_secret),
            ("auth.secret", &a.secret),
            ("auth.previous_secret", &a.previous_secret),
        ] {
            if empty
                .1
                .as_ref()
                .is_some_and(|t| t.expose_secret().trim().is_empty())
            {
                return Err(invalid(
                    &format!("targets.{name}.{}", empty.0),
                    "is empty; set it or leave it unset",
                ));
            }
        }
        Ok(())
    }

    /// A key of another kind is a half-changed configuration.
    fn check_keys_of_kind(&self, name: &str, kind: AuthKind) -> Result<(), ConfigError> {
        let allowed = kind.keys();
        for set in self.auth.set_keys() {
            let base = set.strip_suffix("_file").unwrap_or(set);
            let base = if set == "private_key_file" { set } else { base };
            if !allowed.contains(&base) {
                return Err(invalid(
                    &format!("targets.{name}.auth.{set}"),
                    format!(
                        "is not used by auth.kind = \"{}\" (it reads: {})",
                        kind.as_str(),
                        if allowed.is_empty() {
                            "no auth.* keys".to_string()
                        } else {
                            allowed.join(", ")
                        }
                    ),
                ));
            }
        }
        if kind != AuthKind::Bearer && (self.token.is_some() || self.token_file.is_some()) {
            return Err(invalid(
                &format!("targets.{name}.token"),
                format!(
                    "is a bearer token, but auth.kind is \"{}\"; unset one of them",
                    kind.as_str()
                ),
            ));
        }
        Ok(())
    }

    fn check_bearer(&self, name: &str) -> Result<(), ConfigError> {
        if self.token_input().is_none() {
            return Err(invalid(
                &format!("targets.{name}.token"),
                "is required by auth.kind = \"bearer\" (or token_file)",
            ));
        }
        Ok(())
    }

    fn check_netsuite_tba(&self, name: &str) -> Result<(), ConfigError> {
        let a = &self.auth;
        let require = |k: &str, set: bool| require(name, AuthKind::NetsuiteTba, k, set);
        require("account", a.account.is_some())?;
        check_account(
            a.account.as_deref().unwrap_or_default(),
            &format!("targets.{name}.auth.account"),
        )?;
        require("consumer_key", a.consumer_key().is_some())?;
        require("consumer_secret", a.consumer_secret().is_some())?;
        require("token_id", a.token_id().is_some())?;
        require("token_secret", a.token_secret().is_some())?;
        self.check_account_domain(name)
    }

    fn check_netsuite_oauth2(&self, name: &str) -> Result<(), ConfigError> {
        let key = |k: &str| format!("targets.{name}.auth.{k}");
        let a = &self.auth;
        let require = |k: &str, set: bool| require(name, AuthKind::NetsuiteOauth2, k, set);
        require("account", a.account.is_some())?;
        check_account(a.account.as_deref().unwrap_or_default(), &key("account"))?;
        require(
            "client_id",
            a.client_id.as_ref().is_some_and(|c| !c.trim().is_empty()),
        )?;
        require(
            "certificate_id",
            a.certificate_id
                .as_ref()
                .is_some_and(|c| !c.trim().is_empty()),
        )?;
        require("private_key_file", a.private_key_file.is_some())?;
        if a.scope.as_ref().is_some_and(|s| s.trim().is_empty()) {
            return Err(invalid(
                &key("scope"),
                "is empty; leave it unset for the default",
            ));
        }
        if let Some(u) = &a.token_url {
            check_url(
                u,
                self.allow_http,
                &key("token_url"),
                &format!("targets.{name}.allow_http"),
            )?;
        }
        self.check_account_domain(name)
    }

    fn check_hmac_sha256(&self, name: &str) -> Result<(), ConfigError> {
        let a = &self.auth;
        require(
            name,
            AuthKind::HmacSha256,
            "secret",
            a.secret_input().is_some(),
        )?;
        if let Some(h) = &a.header {
            if reqwest::header::HeaderName::from_bytes(h.as_bytes()).is_err() {
                return Err(invalid(
                    &format!("targets.{name}.auth.header"),
                    format!("`{h}` is not a valid HTTP header name"),
                ));
            }
        }
        Ok(())
    }

    fn check_standard_webhooks(&self, name: &str) -> Result<(), ConfigError> {
        let a = &self.auth;
        require(
            name,
            AuthKind::StandardWebhooks,
            "secret",
            a.secret_input().is_some(),
        )?;
        for (k, v) in [
            ("secret", &a.secret),
            ("previous_secret", &a.previous_secret),
        ] {
            if let Some(v) = v {
                check_whsec(v.expose_secret(), &format!("targets.{name}.auth.{k}"))?;
            }
        }
        Ok(())
    }

    /// A NetSuite host names its account (`1234567-sb1.restlets.api…`): one
    /// that names another is the "wrong account domain" NetSuite answers
    /// with a redirect or a login error.
    fn check_account_domain(&self, name: &str) -> Result<(), ConfigError> {
        let Some(account) = &self.auth.account else {
            return Ok(());
        };
        for (k, u) in [
            ("url", self.url.as_deref()),
            ("probe_url", self.probe_url.as_deref()),
            ("auth.token_url", self.auth.token_url.as_deref()),
        ] {
            let Some(host) = u
                .and_then(|u| url::Url::parse(u).ok())
                .and_then(|u| u.host_str().map(str::to_owned))
            else {
                continue;
            };
            if !host.ends_with(".api.netsuite.com") {
                continue;
            }
            let named = host.split('.').next().unwrap_or_default();
            if named != account_host(account) {
                return Err(invalid(
                    &format!("targets.{name}.{k}"),
                    format!(
                        "names NetSuite account `{named}` but targets.{name}.auth.account is `{account}` (the host should start with `{}.`)",
                        account_host(account)
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// `targets.<name>.auth.<k>` must be `set` for `kind`.
fn require(name: &str, kind: AuthKind, k: &str, set: bool) -> Result<(), ConfigError> {
    if set {
        return Ok(());
    }
    Err(invalid(
        &format!("targets.{name}.auth.{k}"),
        format!(
            "is required by auth.kind = \"{}\" (as a value or {k}_file)",
            kind.as_str()
        ),
    ))
}

/// `1234567_SB1` → `1234567-sb1`, as NetSuite's host names write it.
pub fn account_host(account: &str) -> String {
    account.to_lowercase().replace('_', "-")
}

/// An account id as NetSuite shows it: letters and digits, optionally one
/// `_` suffix (`1234567`, `1234567_SB1`, `TSTDRV1234567`).
fn check_account(account: &str, key: &str) -> Result<(), ConfigError> {
    let ok = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric());
    let valid = match account.split_once('_') {
        Some((a, b)) => ok(a) && ok(b),
        None => ok(account),
    };
    if valid {
        return Ok(());
    }
    let hint = if account.contains('-') {
        format!(
            "; write it as NetSuite shows it, `{}` (underscore), not the host name form",
            account.to_uppercase().replace('-', "_")
        )
    } else {
        String::new()
    };
    Err(invalid(
        key,
        format!("`{account}` is not a NetSuite account id such as 1234567 or 1234567_SB1{hint}"),
    ))
}

/// `whsec_<base64>`, as Standard Webhooks secrets are written.
fn check_whsec(secret: &str, key: &str) -> Result<(), ConfigError> {
    use base64::Engine as _;
    let body = secret.strip_prefix("whsec_").unwrap_or(secret);
    match base64::engine::general_purpose::STANDARD.decode(body) {
        Ok(k) if k.len() >= 16 => Ok(()),
        Ok(_) => Err(invalid(key, "is shorter than 16 bytes once decoded")),
        // Never echo a secret.
        Err(_) => Err(invalid(key, "must be `whsec_` followed by base64")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::{expect_invalid, load_with};

    const NS_URL: &str = "https://1234567-sb1.restlets.api.netsuite.com/app/site/hosting/restlet.nl?script=1&deploy=1";

    fn tba<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut v = vec![
            ("BACKBONE__TARGETS__NETSUITE__URL", NS_URL),
            ("BACKBONE__TARGETS__NETSUITE__AUTH__KIND", "netsuite_tba"),
            ("BACKBONE__TARGETS__NETSUITE__AUTH__ACCOUNT", "1234567_SB1"),
            (
                "BACKBONE__TARGETS__NETSUITE__AUTH__CONSUMER_KEY",
                "ck-value",
            ),
            (
                "BACKBONE__TARGETS__NETSUITE__AUTH__CONSUMER_SECRET",
                "cs-value",
            ),
            ("BACKBONE__TARGETS__NETSUITE__AUTH__TOKEN_ID", "ti-value"),
            (
                "BACKBONE__TARGETS__NETSUITE__AUTH__TOKEN_SECRET_FILE",
                "/run/secrets/ts",
            ),
        ];
        v.extend_from_slice(extra);
        v
    }

    #[test]
    fn a_complete_tba_configuration_loads_and_check_config_shows_no_secret() {
        let s = load_with(&tba(&[])).unwrap();
        let t = &s.targets.netsuite;
        assert_eq!(t.auth_kind(), AuthKind::NetsuiteTba);
        assert_eq!(t.realm().as_deref(), Some("1234567_SB1"));
        let text = s.redacted().to_string();
        for secret in ["ck-value", "cs-value", "ti-value"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(text.contains("/run/secrets/ts"), "the file path is shown");
    }

    #[test]
    fn a_kind_without_its_keys_or_with_anothers_is_refused_by_name() {
        let mut v = tba(&[]);
        v.retain(|(k, _)| !k.ends_with("TOKEN_ID"));
        expect_invalid(&v, "targets.netsuite.auth.token_id");
        expect_invalid(
            &tba(&[("BACKBONE__TARGETS__NETSUITE__AUTH__SECRET", "x")]),
            "targets.netsuite.auth.secret",
        );
        expect_invalid(
            &tba(&[("BACKBONE__TARGETS__NETSUITE__AUTH__TOKEN_SECRET", "x")]),
            "targets.netsuite.auth.token_secret",
        );
        expect_invalid(
            &tba(&[("BACKBONE__TARGETS__NETSUITE__TOKEN", "bearer")]),
            "targets.netsuite.token",
        );
        expect_invalid(
            &[("BACKBONE__TARGETS__SUITEX__AUTH__KIND", "hmac_sha256")],
            "targets.suitex.auth.secret",
        );
        expect_invalid(
            &[
                ("BACKBONE__TARGETS__SUITEX__AUTH__KIND", "standard_webhooks"),
                ("BACKBONE__TARGETS__SUITEX__AUTH__SECRET", "not-whsec!"),
            ],
            "targets.suitex.auth.secret",
        );
        expect_invalid(
            &[
                ("BACKBONE__TARGETS__NETSUITE__AUTH__KIND", "netsuite_oauth2"),
                ("BACKBONE__TARGETS__NETSUITE__AUTH__ACCOUNT", "1234567"),
                ("BACKBONE__TARGETS__NETSUITE__AUTH__CLIENT_ID", "c"),
                ("BACKBONE__TARGETS__NETSUITE__AUTH__CERTIFICATE_ID", "k"),
            ],
            "targets.netsuite.auth.private_key_file",
        );
    }

    #[test]
    fn realm_format_and_account_domain_are_checked() {
        let msg = expect_invalid(
            &tba(&[("BACKBONE__TARGETS__NETSUITE__AUTH__ACCOUNT", "1234567-sb1")]),
            "targets.netsuite.auth.account",
        );
        assert!(msg.contains("1234567_SB1"), "{msg}");
        let msg = expect_invalid(
            &tba(&[("BACKBONE__TARGETS__NETSUITE__AUTH__ACCOUNT", "7654321_SB1")]),
            "targets.netsuite.url",
        );
        assert!(msg.contains("7654321-sb1"), "{msg}");
    }
}
