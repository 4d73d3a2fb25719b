//! How a request to a target proves who sends it (docs/spec.md §4.3): nothing, a
//! bearer token, NetSuite's OAuth 1.0a TBA or OAuth 2.0 token, or a body
//! signature a Laravel receiver verifies. Every request — first try,
//! retry, probe, replay — is signed afresh; no header carrying a secret is
//! ever logged (they are marked sensitive).

pub mod oauth1;
pub mod oauth2;
pub mod secret;
pub mod webhook;

use std::sync::Arc;

use reqwest::header::{HeaderName, HeaderValue, AUTHORIZATION};
use secrecy::ExposeSecret;

pub use self::secret::{Secret, SecretError};

/// One configured authentication.
#[derive(Debug)]
pub enum Auth {
    None,
    Bearer(Secret),
    NetsuiteTba(oauth1::Tba),
    NetsuiteOauth2(Arc<oauth2::TokenSource>),
    HmacSha256 {
        header: HeaderName,
        secret: Secret,
    },
    StandardWebhooks {
        secret: Secret,
        /// Signs too during a rotation, so a receiver on either secret accepts.
        previous: Option<Secret>,
    },
}

impl std::fmt::Debug for oauth2::TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenSource({})", self.client().token_url)
    }
}

/// What is signed: the request as it goes out.
pub struct Request<'a> {
    pub method: &'a str,
    pub url: &'a url::Url,
    pub body: &'a [u8],
    /// The merged event's fingerprint (Standard Webhooks' `webhook-id`).
    pub fingerprint: &'a str,
}

/// The headers to add, and which OAuth 2.0 token they carry.
#[derive(Default)]
pub struct Signed {
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The token generation, and whether it was fetched for this request.
    pub token: Option<(u64, bool)>,
}

impl Signed {
    /// Credentials nobody has used before this request: a refusal of them
    /// is not a stale token but the credentials themselves.
    pub fn fresh(&self) -> bool {
        self.token.is_some_and(|(_, fresh)| fresh)
    }
}

/// Why a request could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    Token(#[from] oauth2::TokenError),
    #[error("a credential holds characters an HTTP header cannot carry")]
    Header,
}

impl Auth {
    pub fn kind(&self) -> &'static str {
        match self {
            Auth::None => "none",
            Auth::Bearer(_) => "bearer",
            Auth::NetsuiteTba(_) => "netsuite_tba",
            Auth::NetsuiteOauth2(_) => "netsuite_oauth2",
            Auth::HmacSha256 { .. } => "hmac_sha256",
            Auth::StandardWebhooks { .. } => "standard_webhooks",
        }
    }

    pub fn token_source(&self) -> Option<&Arc<oauth2::TokenSource>> {
        match self {
            Auth::NetsuiteOauth2(t) => Some(t),
            _ => None,
        }
    }

    /// Signs one request. A `probe` of a target held for its credentials
    /// fetches a new OAuth 2.0 token first.
    pub async fn sign(&self, req: &Request<'_>, probe: bool) -> Result<Signed, SignError> {
        let mut signed = Signed::default();
        match self {
            Auth::None => {}
            Auth::Bearer(token) => {
                let v = format!("Bearer {}", token.read()?.expose_secret());
                signed.headers.push((AUTHORIZATION, sensitive(&v)?));
            }
            Auth::NetsuiteTba(tba) => {
                let v = tba.header(req.method, req.url)?;
                signed.headers.push((AUTHORIZATION, sensitive(&v)?));
            }
            Auth::NetsuiteOauth2(source) => {
                if probe {
                    source.clear().await;
                }
                let issued = source.token().await?;
                signed
                    .headers
                    .push((AUTHORIZATION, sensitive(&oauth2::bearer(&issued))?));
                signed.token = Some((issued.generation, issued.fresh));
            }
            Auth::HmacSha256 { header, secret } => {
                let sig =
                    webhook::spatie_signature(secret.read()?.expose_secret().as_bytes(), req.body);
                signed.headers.push((header.clone(), sensitive(&sig)?));
            }
            Auth::StandardWebhooks { secret, previous } => {
                let ts = chrono::Utc::now().timestamp();
                let mut sigs = Vec::with_capacity(2);
                for s in std::iter::once(secret).chain(previous.iter()) {
                    let key = webhook::whsec_key(s.read()?.expose_secret())
                        .map_err(|_| SignError::Header)?;
                    sigs.push(webhook::standard_signature(
                        &key,
                        req.fingerprint,
                        ts,
                        req.body,
                    ));
                }
                signed.headers.push((
                    HeaderName::from_static("webhook-id"),
                    HeaderValue::from_str(req.fingerprint).map_err(|_| SignError::Header)?,
                ));
                signed.headers.push((
                    HeaderName::from_static("webhook-timestamp"),
                    HeaderValue::from(ts),
                ));
                signed.headers.push((
                    HeaderName::from_static("webhook-signature"),
                    sensitive(&sigs.join(" "))?,
                ));
            }
        }
        Ok(signed)
    }

    /// The target refused the credentials of `signed`. `true` when sending
    /// once more with a renewed OAuth 2.0 token is worth it (the refused
    /// token was cached, not fetched for this request).
    pub async fn renew_after_refusal(&self, signed: &Signed) -> bool {
        match (self, signed.token) {
            (Auth::NetsuiteOauth2(source), Some((generation, fresh))) => {
                source.invalidate(generation).await;
                !fresh
            }
            _ => false,
        }
    }
}

fn sensitive(v: &str) -> Result<HeaderValue, SignError> {
    let mut h = HeaderValue::from_str(v).map_err(|_| SignError::Header)?;
    h.set_sensitive(true);
    Ok(h)
}

/// The innermost cause of an error, which reqwest's Display hides
/// ("connection refused" rather than "error sending request").
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        cause = s.to_string();
        src = s.source();
    }
    cause
}

/// The start of a body on one line, control characters blanked, cut at
/// `max` bytes (on a character boundary) with `…`.
pub fn excerpt(body: &[u8], max: usize) -> String {
    let cut = body.len() > max;
    let text = String::from_utf8_lossy(&body[..body.len().min(max)]);
    let mut s: String = text
        .chars()
        .filter(|c| *c != char::REPLACEMENT_CHARACTER || !cut)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let trimmed = s.trim_end().len();
    s.truncate(trimmed);
    if cut {
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(url: &'a url::Url, body: &'a [u8]) -> Request<'a> {
        Request {
            method: "POST",
            url,
            body,
            fingerprint: "f00d",
        }
    }

    #[tokio::test]
    async fn every_kind_signs_and_marks_its_secret_header_sensitive() {
        let url = url::Url::parse("https://h.example/x?script=1&deploy=1").unwrap();
        let body = br#"{"a":1}"#;
        let kinds = [
            Auth::Bearer(Secret::value("t0k")),
            Auth::NetsuiteTba(oauth1::Tba {
                realm: "1234567_SB1".into(),
                consumer_key: Secret::value("ck"),
                consumer_secret: Secret::value("cs"),
                token_id: Secret::value("ti"),
                token_secret: Secret::value("ts"),
            }),
            Auth::HmacSha256 {
                header: HeaderName::from_static("signature"),
                secret: Secret::value("s3cret"),
            },
            Auth::StandardWebhooks {
                secret: Secret::value("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
                previous: Some(Secret::value("whsec_c2VjcmV0LXByZXZpb3VzLTE2Ynl0ZXM=")),
            },
        ];
        for auth in kinds {
            let signed = auth.sign(&req(&url, body), false).await.unwrap();
            assert!(!signed.headers.is_empty(), "{}", auth.kind());
            let secret_header = signed
                .headers
                .iter()
                .find(|(n, _)| n != "webhook-id" && n != "webhook-timestamp")
                .unwrap();
            assert!(secret_header.1.is_sensitive(), "{}", auth.kind());
            let shown = format!("{:?}", secret_header.1);
            assert!(
                !shown.contains("t0k") && !shown.contains("OAuth"),
                "{shown}"
            );
        }
        let hmac = Auth::HmacSha256 {
            header: HeaderName::from_static("signature"),
            secret: Secret::value("s3cret"),
        };
        let signed = hmac.sign(&req(&url, body), false).await.unwrap();
        assert_eq!(
            signed.headers[0].1.to_str().unwrap(),
            webhook::spatie_signature(b"s3cret", body)
        );
    }

    #[tokio::test]
    async fn a_rotation_signs_with_both_secrets() {
        let url = url::Url::parse("https://h.example/x").unwrap();
        let auth = Auth::StandardWebhooks {
            secret: Secret::value("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            previous: Some(Secret::value("whsec_c2VjcmV0LXByZXZpb3VzLTE2Ynl0ZXM=")),
        };
        let signed = auth.sign(&req(&url, b"{}"), false).await.unwrap();
        let sig = signed
            .headers
            .iter()
            .find(|(n, _)| n == "webhook-signature")
            .unwrap()
            .1
            .to_str()
            .unwrap()
            .to_string();
        assert_eq!(sig.split(' ').count(), 2, "{sig}");
        assert!(sig.split(' ').all(|s| s.starts_with("v1,")));
    }

    #[test]
    fn excerpts_are_one_line_and_cut() {
        assert_eq!(excerpt(b"a\nb\r\n", 100), "a b");
        assert_eq!(excerpt("ééé".as_bytes(), 3), "é…");
    }
}
