//! The delivery targets as `targets.<t>.*` configure them (docs/spec.md §4.2,
//! §4.3): their URL, authentication (secrets read from values or mounted
//! files, the OAuth 2.0 key parsed at start), error vocabulary and pacing.
//! A credential that cannot be used is a configuration error (exit 2,
//! naming the key), found before anything starts.

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::HeaderName;

use crate::config::{
    AuthKind, ConfigError, ErrorVocabulary, SecretInput, Target, DEFAULT_HMAC_HEADER,
    DEFAULT_OAUTH2_SCOPE,
};
use crate::model::raw_event::Source;
use crate::ops::records::Sinks;
use crate::stages::deliver::auth::{oauth1, oauth2, Auth, Secret};
use crate::stages::deliver::http_sink::HttpSink;
use crate::stages::deliver::http_sink::{self, Vocabulary};
use crate::stages::deliver::pacing::{PacingSettings, NEXT_IN_LINE};
use crate::stages::deliver::DeliverSettings;

fn invalid(key: String, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// A secret as the signer reads it; a file must be readable now.
fn secret(name: &str, key: &str, input: Option<SecretInput>) -> Result<Secret, ConfigError> {
    let full = format!("targets.{name}.{key}");
    match input {
        Some(SecretInput::Value(v)) => Ok(Secret::Value(v)),
        Some(SecretInput::File(path)) => {
            let s = Secret::file(path);
            s.read()
                .map_err(|e| invalid(format!("{full}_file"), e.to_string()))?;
            Ok(s)
        }
        None => Err(invalid(full, "is required by this auth.kind")),
    }
}

/// The authentication `t` configures; `client` also calls its token endpoint.
pub fn auth(name: &str, t: &Target, client: &reqwest::Client) -> Result<Auth, ConfigError> {
    let a = &t.auth;
    Ok(match t.auth_kind() {
        AuthKind::None => Auth::None,
        AuthKind::Bearer => Auth::Bearer(secret(name, "token", t.token_input())?),
        AuthKind::NetsuiteTba => Auth::NetsuiteTba(oauth1::Tba {
            realm: t.realm().unwrap_or_default(),
            consumer_key: secret(name, "auth.consumer_key", a.consumer_key())?,
            consumer_secret: secret(name, "auth.consumer_secret", a.consumer_secret())?,
            token_id: secret(name, "auth.token_id", a.token_id())?,
            token_secret: secret(name, "auth.token_secret", a.token_secret())?,
        }),
        AuthKind::NetsuiteOauth2 => {
            let key_path = a.private_key_file.clone().unwrap_or_default();
            let key = oauth2::SigningKey::from_pem_file(&key_path).map_err(|e| {
                invalid(
                    format!("targets.{name}.auth.private_key_file"),
                    e.to_string(),
                )
            })?;
            let scopes = a
                .scope
                .as_deref()
                .unwrap_or(DEFAULT_OAUTH2_SCOPE)
                .split([' ', ','])
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            let client_settings = oauth2::Oauth2Client {
                token_url: t.token_url().unwrap_or_default(),
                client_id: a.client_id.clone().unwrap_or_default(),
                certificate_id: a.certificate_id.clone().unwrap_or_default(),
                key,
                scopes,
            };
            Auth::NetsuiteOauth2(Arc::new(oauth2::TokenSource::new(
                client_settings,
                client.clone(),
            )))
        }
        AuthKind::HmacSha256 => {
            let header = a.header.as_deref().unwrap_or(DEFAULT_HMAC_HEADER);
            Auth::HmacSha256 {
                header: HeaderName::from_bytes(header.as_bytes()).map_err(|_| {
                    invalid(
                        format!("targets.{name}.auth.header"),
                        "is not a header name",
                    )
                })?,
                secret: secret(name, "auth.secret", a.secret_input())?,
            }
        }
        AuthKind::StandardWebhooks => Auth::StandardWebhooks {
            secret: secret(name, "auth.secret", a.secret_input())?,
            previous: match a.previous_secret() {
                Some(p) => Some(secret(name, "auth.previous_secret", Some(p))?),
                None => None,
            },
        },
    })
}

/// A target's delivery settings; `None` while its URL is unset.
pub fn deliver_settings(
    name: &'static str,
    t: &Target,
) -> Result<Option<DeliverSettings>, anyhow::Error> {
    let Some(url) = &t.url else {
        return Ok(None);
    };
    let url =
        url::Url::parse(url).map_err(|e| invalid(format!("targets.{name}.url"), e.to_string()))?;
    let client = http_sink::client(name, t.timeout)?;
    let auth = Arc::new(auth(name, t, &client)?);
    Ok(Some(DeliverSettings {
        url,
        auth,
        vocabulary: vocabulary(t.errors),
        timeout: t.timeout,
        lease_ttl: t.lease_ttl,
        coalesce: t.coalesce,
        takeover: t.takeover,
        client,
    }))
}

pub fn vocabulary(v: ErrorVocabulary) -> Vocabulary {
    match v {
        ErrorVocabulary::Http => Vocabulary::Http,
        ErrorVocabulary::Netsuite => Vocabulary::Netsuite,
    }
}

/// How a target is paced (docs/spec.md §4.2).
pub fn pacing_settings(t: &Target) -> PacingSettings {
    PacingSettings {
        // With the account's cap known, start at it and never above it: the
        // slots hold every replica to it, so probing higher only idles.
        initial_concurrency: match t.account_concurrency {
            0 => t.initial_concurrency,
            cap => cap.min(t.max_concurrency),
        },
        max_concurrency: match t.account_concurrency {
            0 => t.max_concurrency,
            cap => cap.min(t.max_concurrency),
        },
        // With permits equal to slots nobody waits at a slot, and every
        // request writes its slot back and claims one again around its POST
        // (slots.rs hands a slot over only to a waiter).
        slot_waiters: if t.account_concurrency > 0 {
            NEXT_IN_LINE
        } else {
            0
        },
        rate_limit: (t.rate_limit > 0.0).then_some(t.rate_limit),
        rate_burst: t.rate_burst,
        max_retry_after: t.max_retry_after,
        circuit_failures: t.circuit_failures,
        probe_max_interval: t.probe_max_interval,
        // Long enough for the other requests in flight to answer.
        verdict_wait: (t.timeout + Duration::from_secs(1)).min(Duration::from_secs(30)),
    }
}

/// The signed client of each configured target, for operator actions that
/// call a target outside the delivery stage (`records resync`).
pub fn sinks(settings: &crate::config::Settings) -> Result<Sinks, anyhow::Error> {
    sinks_of(settings, |_| true)
}

/// The signed client of the target named `target` alone (none when it is
/// not a target: the caller says so).
pub fn sinks_for(settings: &crate::config::Settings, target: &str) -> Result<Sinks, anyhow::Error> {
    sinks_of(settings, |s| s.as_str() == target)
}

fn sinks_of(
    settings: &crate::config::Settings,
    wanted: impl Fn(Source) -> bool,
) -> Result<Sinks, anyhow::Error> {
    let mut out = std::collections::HashMap::new();
    for (source, cfg) in [
        (Source::Netsuite, &settings.targets.netsuite),
        (Source::Suitex, &settings.targets.suitex),
    ] {
        if !wanted(source) {
            continue;
        }
        if let Some(d) = deliver_settings(source.as_str(), cfg)? {
            let sink = HttpSink::new(
                source.as_str(),
                d.url,
                d.auth,
                d.vocabulary,
                d.timeout,
                d.client,
            );
            out.insert(source, sink);
        }
    }
    Ok(Arc::new(out))
}
