//! NetSuite OAuth 2.0 machine-to-machine: client credentials with a JWT
//! client assertion signed by the key of the certificate uploaded to the
//! integration (PS256 for RSA, ES256 for EC P-256). The access token lives
//! 60 minutes; it is cached per process, fetched by one request at a time
//! (concurrent deliveries wait for that fetch), renewed before it expires
//! and once more after a 401.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;

/// How long a client assertion is valid: NetSuite allows up to 60 minutes;
/// it is used at once, so a short one limits what a leaked one is worth.
const ASSERTION_LIFETIME: Duration = Duration::from_secs(600);
/// Renew this long before expiry at most (a quarter of a short lifetime).
const RENEW_MARGIN: Duration = Duration::from_secs(60);
/// An answer without `expires_in` is taken to live this long (NetSuite's).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);
/// The most of a token endpoint's error body read.
const ERROR_BODY_BYTES: usize = 4096;

/// The key named by `private_key_file`, read once at start.
pub struct SigningKey {
    key: EncodingKey,
    pub algorithm: Algorithm,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({:?})", self.algorithm)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {}: {reason}", .path.display())]
    Read {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("{} is not a PEM private key NetSuite can use: {reason}", .path.display())]
    Parse {
        path: std::path::PathBuf,
        reason: String,
    },
}

impl SigningKey {
    /// An RSA key signs PS256, an EC P-256 key ES256 (both PKCS#8
    /// `BEGIN PRIVATE KEY`, or `BEGIN RSA PRIVATE KEY`, as openssl writes them).
    pub fn from_pem_file(path: &Path) -> Result<Self, KeyError> {
        let pem = std::fs::read(path).map_err(|e| KeyError::Read {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Self::from_pem(&pem).map_err(|reason| KeyError::Parse {
            path: path.to_path_buf(),
            reason,
        })
    }

    pub fn from_pem(pem: &[u8]) -> Result<Self, String> {
        install_provider();
        let text = String::from_utf8_lossy(pem);
        if text.contains("BEGIN EC PRIVATE KEY") {
            return Err("an EC key in SEC1 form: convert it to PKCS#8 with `openssl pkcs8 -topk8 -nocrypt -in key.pem -out key8.pem`".into());
        }
        if text.contains("ENCRYPTED PRIVATE KEY") {
            return Err("the key is encrypted: store it unencrypted in the mounted secret".into());
        }
        if let Ok(key) = EncodingKey::from_ec_pem(pem) {
            // An EC key of another curve fails here, when signing.
            let probe =
                jsonwebtoken::encode(&Header::new(Algorithm::ES256), &serde_json::json!({}), &key);
            return match probe {
                Ok(_) => Ok(Self {
                    key,
                    algorithm: Algorithm::ES256,
                }),
                Err(e) => Err(format!("an EC key NetSuite cannot use (P-256 only): {e}")),
            };
        }
        match EncodingKey::from_rsa_pem(pem) {
            Ok(key) => Ok(Self {
                key,
                algorithm: Algorithm::PS256,
            }),
            Err(e) => Err(format!("neither an RSA nor an EC P-256 key: {e}")),
        }
    }
}

fn install_provider() {
    // Err means one is installed already (ours, or the Google crates').
    let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
}

/// What the token endpoint is asked for.
#[derive(Debug)]
pub struct Oauth2Client {
    pub token_url: String,
    pub client_id: String,
    /// The certificate id NetSuite shows (the JWT's `kid`).
    pub certificate_id: String,
    pub key: SigningKey,
    pub scopes: Vec<String>,
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    iss: &'a str,
    scope: &'a [String],
    aud: &'a str,
    iat: i64,
    exp: i64,
}

impl Oauth2Client {
    /// The signed client assertion, issued now.
    pub fn assertion(&self, now_unix: i64) -> Result<String, String> {
        install_provider();
        let mut header = Header::new(self.key.algorithm);
        header.kid = Some(self.certificate_id.clone());
        let claims = Claims {
            iss: &self.client_id,
            scope: &self.scopes,
            aud: &self.token_url,
            iat: now_unix,
            exp: now_unix + ASSERTION_LIFETIME.as_secs() as i64,
        };
        jsonwebtoken::encode(&header, &claims, &self.key.key).map_err(|e| e.to_string())
    }
}

/// Why no token could be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    /// The endpoint refused the client (invalid_client, invalid_grant…):
    /// the credentials, the certificate or the clock.
    #[error("the token endpoint refused the client assertion (HTTP {status}): {detail}")]
    Refused { status: u16, detail: String },
    /// A 5xx, 429 or a timeout: try again later.
    #[error("the token endpoint failed (HTTP {status}): {detail}")]
    Failed { status: u16, detail: String },
    #[error("the token endpoint could not be reached: {0}")]
    Unreachable(String),
    #[error("the client assertion could not be signed: {0}")]
    Sign(String),
    #[error("the token endpoint answered something that is not a token: {0}")]
    Malformed(String),
}

/// A token as the cache holds it.
#[derive(Clone)]
struct Token {
    access: SecretString,
    renew_at: Instant,
    generation: u64,
}

/// A token handed to one request.
#[derive(Clone)]
pub struct Issued {
    pub access: SecretString,
    /// Which fetch it came from, to renew exactly that one after a 401.
    pub generation: u64,
    /// Fetched for this request: a refusal of it is not a stale token.
    pub fresh: bool,
}

/// The per-process token cache of one target.
pub struct TokenSource {
    client: Oauth2Client,
    http: reqwest::Client,
    /// Held across a fetch: concurrent callers wait for it, then find the new token.
    state: tokio::sync::Mutex<Option<Token>>,
    fetches: AtomicU64,
}

impl TokenSource {
    pub fn new(client: Oauth2Client, http: reqwest::Client) -> Self {
        Self {
            client,
            http,
            state: tokio::sync::Mutex::new(None),
            fetches: AtomicU64::new(0),
        }
    }

    pub fn client(&self) -> &Oauth2Client {
        &self.client
    }

    /// Token fetches so far (what the tests and `doctor` count).
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// A token valid for a while yet, fetched if there is none.
    pub async fn token(&self) -> Result<Issued, TokenError> {
        let mut state = self.state.lock().await;
        if let Some(t) = state.as_ref() {
            if Instant::now() < t.renew_at {
                return Ok(Issued {
                    access: t.access.clone(),
                    generation: t.generation,
                    fresh: false,
                });
            }
        }
        let (access, lifetime) = self.fetch().await?;
        let generation = self.fetches.fetch_add(1, Ordering::Relaxed) + 1;
        let t = Token {
            access: access.clone(),
            renew_at: Instant::now() + renew_after(lifetime),
            generation,
        };
        *state = Some(t);
        Ok(Issued {
            access,
            generation,
            fresh: true,
        })
    }

    /// The token of `generation` was refused: the next caller fetches a
    /// new one. A later generation (another request renewed it already) stays.
    pub async fn invalidate(&self, generation: u64) {
        let mut state = self.state.lock().await;
        if state.as_ref().is_some_and(|t| t.generation == generation) {
            *state = None;
        }
    }

    /// Forget any token: the next request (a probe) fetches afresh.
    pub async fn clear(&self) {
        *self.state.lock().await = None;
    }

    async fn fetch(&self) -> Result<(SecretString, Duration), TokenError> {
        let assertion = self
            .client
            .assertion(chrono::Utc::now().timestamp())
            .map_err(TokenError::Sign)?;
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "client_credentials")
            .append_pair(
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            )
            .append_pair("client_assertion", &assertion)
            .finish();
        let resp = self
            .http
            .post(&self.client.token_url)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(form)
            .send()
            .await
            .map_err(|e| TokenError::Unreachable(super::error_chain(&e)))?;
        let status = resp.status().as_u16();
        let body = read_capped(resp, ERROR_BODY_BYTES).await;
        if !(200..300).contains(&status) {
            let detail = oauth_error(&body);
            return Err(match status {
                400 | 401 | 403 => TokenError::Refused { status, detail },
                _ => TokenError::Failed { status, detail },
            });
        }
        parse_token(&body).map_err(TokenError::Malformed)
    }
}

/// When to fetch the next token: `RENEW_MARGIN` (at most a quarter of the
/// lifetime) before this one expires.
fn renew_after(lifetime: Duration) -> Duration {
    lifetime.saturating_sub(RENEW_MARGIN.min(lifetime / 4))
}

/// `{"access_token", "expires_in"}`; NetSuite writes `expires_in` as a string.
fn parse_token(body: &[u8]) -> Result<(SecretString, Duration), String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not JSON ({e})"))?;
    let access = v["access_token"]
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or("no access_token")?;
    let secs = match &v["expires_in"] {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    let lifetime = secs.map_or(DEFAULT_LIFETIME, Duration::from_secs);
    if lifetime.is_zero() {
        return Err("expires_in is 0".into());
    }
    Ok((SecretString::from(access.to_string()), lifetime))
}

/// RFC 6749 §5.2: `error` and `error_description`, else the body's start.
fn oauth_error(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        if let Some(e) = v["error"].as_str() {
            return match v["error_description"].as_str() {
                Some(d) => format!("{e}: {d}"),
                None => e.to_string(),
            };
        }
    }
    super::excerpt(body, 200)
}

async fn read_capped(mut resp: reqwest::Response, cap: usize) -> Vec<u8> {
    let mut buf = Vec::new();
    while buf.len() < cap {
        match resp.chunk().await {
            Ok(Some(c)) => buf.extend_from_slice(&c),
            Ok(None) | Err(_) => break,
        }
    }
    buf.truncate(cap);
    buf
}

/// The token's value, for the `Authorization` header.
pub fn bearer(issued: &Issued) -> String {
    format!("Bearer {}", issued.access.expose_secret())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_comes_before_expiry() {
        assert_eq!(
            renew_after(Duration::from_secs(3600)),
            Duration::from_secs(3540)
        );
        assert_eq!(
            renew_after(Duration::from_secs(15)),
            Duration::from_millis(11_250)
        );
    }

    #[test]
    fn token_answers_are_read_as_netsuite_writes_them() {
        let (t, l) =
            parse_token(br#"{"access_token":"abc","expires_in":"3600","token_type":"bearer"}"#)
                .unwrap();
        assert_eq!((t.expose_secret(), l), ("abc", Duration::from_secs(3600)));
        let (_, l) = parse_token(br#"{"access_token":"abc","expires_in":15}"#).unwrap();
        assert_eq!(l, Duration::from_secs(15));
        assert!(parse_token(br#"{"expires_in":15}"#).is_err());
        assert_eq!(
            oauth_error(br#"{"error":"invalid_client","error_description":"bad kid"}"#),
            "invalid_client: bad kid"
        );
    }

    #[test]
    fn sec1_and_encrypted_keys_are_refused_with_the_fix() {
        let e = SigningKey::from_pem(
            b"-----BEGIN EC PRIVATE KEY-----\nAA==\n-----END EC PRIVATE KEY-----\n",
        )
        .unwrap_err();
        assert!(e.contains("openssl pkcs8"), "{e}");
        let e = SigningKey::from_pem(b"not a key").unwrap_err();
        assert!(e.contains("neither"), "{e}");
    }
}
