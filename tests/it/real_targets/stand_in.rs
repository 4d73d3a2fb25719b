//! Stand-ins that answer as the real targets do (docs/spec.md §4.3), and check our
//! signatures with code we did not write ([`Verifier`]):
//!
//! - a NetSuite RESTlet: OAuth 1.0a TBA (oauthlib) or OAuth 2.0 bearer
//!   tokens from its own token endpoint (the client assertion checked by
//!   PyJWT); over its concurrency cap **400 `SSS_REQUEST_LIMIT_EXCEEDED`**;
//!   a revoked credential **401 `INVALID_LOGIN_ATTEMPT`**; a record it
//!   refuses **400 `USER_ERROR`**; nonces it saw before refused;
//! - a Laravel receiver with spatie/laravel-webhook-client (hex HMAC of the
//!   body in `Signature`; a bad one is a 500 by default, 401 when strict),
//!   or one that verifies Standard Webhooks.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::verifier::Verifier;

/// What the stand-in accepts as proof of who calls.
#[derive(Debug, Clone)]
pub enum Check {
    None,
    Tba {
        realm: String,
        consumer_key: String,
        consumer_secret: String,
        token_id: String,
        token_secret: String,
    },
    /// Bearer tokens its own `/token` endpoint issued for a client
    /// assertion signed by the key whose public half is `public_pem`.
    Oauth2 {
        client_id: String,
        kid: String,
        public_pem: String,
        lifetime: Duration,
    },
    /// spatie/laravel-webhook-client: `Signature` = hex HMAC-SHA256 of the
    /// body; a bad one answers 500 (spatie's default) or 401 (`strict`).
    Spatie {
        secret: String,
        strict: bool,
    },
    StandardWebhooks {
        secret: String,
    },
}

/// How the stand-in answers besides checking signatures.
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// Requests in flight beyond this get NetSuite's 400 SSS_REQUEST_LIMIT_EXCEEDED.
    pub cap: Option<usize>,
    pub latency: Duration,
    /// Every credential refused, as NetSuite answers a revoked token.
    pub revoked: bool,
    /// Record ids refused with 400 USER_ERROR.
    pub user_error: HashSet<String>,
    /// Errors in the REST record API's form rather than a RESTlet's.
    pub rest_api_errors: bool,
    /// The stand-in's clock runs this many seconds ahead of ours (its
    /// `Date` header and its TBA timestamp check).
    pub clock_offset: i64,
}

#[derive(Default)]
struct Counters {
    by_kind: BTreeMap<&'static str, usize>,
}

struct Inner {
    check: Mutex<Check>,
    behaviour: Mutex<Behaviour>,
    verifier: Verifier,
    inflight: AtomicUsize,
    peak: AtomicUsize,
    counts: Mutex<Counters>,
    nonces: Mutex<HashSet<String>>,
    /// Highest version acknowledged per record, and the fields received.
    acked: Mutex<HashMap<String, i64>>,
    fields: Mutex<HashMap<String, Map<String, Value>>>,
    /// Access tokens issued, with their expiry.
    tokens: Mutex<HashMap<String, Instant>>,
    token_inflight: AtomicUsize,
    token_peak: AtomicUsize,
    /// What the token endpoint checks the assertion's `aud` against.
    token_url: String,
    /// Client assertions accepted, by signing algorithm.
    algorithms: Mutex<BTreeMap<String, usize>>,
}

#[derive(Clone)]
pub struct StandIn {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A RESTlet's error body, or the REST API's.
fn netsuite_error(rest_api: bool, status: u16, code: &str, message: &str) -> Response {
    let body = if rest_api {
        json!({"type": "https://www.rfc-editor.org/rfc/rfc9110.html#section-15.5.1",
               "title": "Bad Request", "status": status,
               "o:errorDetails": [{"detail": message, "o:errorCode": code}]})
    } else {
        json!({"error": {"code": code, "message": message}})
    };
    let status =
        axum::http::StatusCode::from_u16(status).unwrap_or(axum::http::StatusCode::BAD_REQUEST);
    (status, axum::Json(body)).into_response()
}

impl StandIn {
    pub async fn start(verifier: Verifier, check: Check, behaviour: Behaviour) -> StandIn {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind the stand-in");
        let addr = listener.local_addr().expect("addr");
        let inner = Arc::new(Inner {
            token_url: format!("http://{addr}/services/rest/auth/oauth2/v1/token"),
            algorithms: Mutex::new(BTreeMap::new()),
            check: Mutex::new(check),
            behaviour: Mutex::new(behaviour),
            verifier,
            inflight: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            counts: Mutex::new(Counters::default()),
            nonces: Mutex::new(HashSet::new()),
            acked: Mutex::new(HashMap::new()),
            fields: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
            token_inflight: AtomicUsize::new(0),
            token_peak: AtomicUsize::new(0),
        });
        let app = axum::Router::new()
            .route(
                "/services/rest/auth/oauth2/v1/token",
                axum::routing::post(token),
            )
            .fallback(receive)
            .with_state(inner.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        StandIn { addr, inner }
    }

    /// A RESTlet's URL, `script` and `deploy` in its query.
    pub fn restlet_url(&self) -> String {
        format!(
            "http://{}/app/site/hosting/restlet.nl?script=customscript_backbone_sync&deploy=1",
            self.addr
        )
    }

    pub fn token_url(&self) -> String {
        format!("http://{}/services/rest/auth/oauth2/v1/token", self.addr)
    }

    pub fn hook_url(&self) -> String {
        format!("http://{}/api/sync/merged-events", self.addr)
    }

    pub fn set(&self, f: impl FnOnce(&mut Behaviour)) {
        f(&mut lock(&self.inner.behaviour));
    }

    pub fn set_check(&self, check: Check) {
        *lock(&self.inner.check) = check;
    }

    /// How many answers of each kind (`ok`, `busy`, `bad_signature`,
    /// `revoked`, `user_error`, `nonce_reused`, `expired_token`,
    /// `token_issued`, `token_refused`).
    pub fn count(&self, kind: &str) -> usize {
        lock(&self.inner.counts)
            .by_kind
            .get(kind)
            .copied()
            .unwrap_or(0)
    }

    pub fn requests(&self) -> usize {
        lock(&self.inner.counts)
            .by_kind
            .iter()
            .filter(|(k, _)| !k.starts_with("token_"))
            .map(|(_, v)| v)
            .sum()
    }

    pub fn peak(&self) -> usize {
        self.inner.peak.load(Ordering::SeqCst)
    }

    /// Client assertions accepted, by algorithm (`PS256`, `ES256`).
    pub fn algorithms(&self) -> BTreeMap<String, usize> {
        lock(&self.inner.algorithms).clone()
    }

    pub fn token_peak(&self) -> usize {
        self.inner.token_peak.load(Ordering::SeqCst)
    }

    pub fn acked(&self) -> HashMap<String, i64> {
        lock(&self.inner.acked).clone()
    }

    /// The fields received per record, folded in arrival order.
    pub fn fields(&self) -> HashMap<String, Map<String, Value>> {
        lock(&self.inner.fields).clone()
    }

    pub fn summary(&self, name: &str) -> String {
        format!(
            "{name}: requests={} {:?} peak_inflight={} token_peak_concurrent_fetches={}",
            self.requests(),
            lock(&self.inner.counts).by_kind,
            self.peak(),
            self.token_peak()
        )
    }
}

fn count(s: &Inner, kind: &'static str) {
    *lock(&s.counts).by_kind.entry(kind).or_insert(0) += 1;
}

/// The stand-in's token endpoint: checks the client assertion (PyJWT) and
/// issues a bearer token for `lifetime`. Counts concurrent fetches.
async fn token(State(s): State<Arc<Inner>>, body: Bytes) -> Response {
    let now = s.token_inflight.fetch_add(1, Ordering::SeqCst) + 1;
    s.token_peak.fetch_max(now, Ordering::SeqCst);
    let answer = issue(&s, &body).await;
    s.token_inflight.fetch_sub(1, Ordering::SeqCst);
    answer
}

async fn issue(s: &Inner, body: &[u8]) -> Response {
    let Check::Oauth2 {
        client_id,
        kid,
        public_pem,
        lifetime,
    } = lock(&s.check).clone()
    else {
        return (axum::http::StatusCode::NOT_FOUND, "no token endpoint").into_response();
    };
    // A fetch takes a moment at NetSuite: concurrent fetches would show.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let form: HashMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
    let refuse = |why: String| {
        count(s, "token_refused");
        (
            axum::http::StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "invalid_client", "error_description": why})),
        )
            .into_response()
    };
    if form.get("grant_type").map(String::as_str) != Some("client_credentials")
        || form.get("client_assertion_type").map(String::as_str)
            != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    {
        return refuse(format!("unexpected form {form:?}"));
    }
    let verdict = s
        .verifier
        .ask(json!({
            "op": "jwt",
            "assertion": form.get("client_assertion").cloned().unwrap_or_default(),
            "public_key_pem": public_pem,
            "audience": s.token_url,
            "issuer": client_id,
            "kid": kid,
        }))
        .await;
    if verdict["ok"] != true {
        eprintln!("stand-in: client assertion refused: {}", verdict["reason"]);
        return refuse(verdict["reason"].as_str().unwrap_or_default().to_string());
    }
    let access = format!("tok-{}", crate::support::rand_suffix(24));
    lock(&s.tokens).insert(access.clone(), Instant::now() + lifetime);
    *lock(&s.algorithms)
        .entry(verdict["alg"].as_str().unwrap_or("?").to_string())
        .or_insert(0) += 1;
    count(s, "token_issued");
    // NetSuite writes expires_in as a string.
    axum::Json(json!({"access_token": access, "token_type": "bearer",
        "expires_in": lifetime.as_secs().to_string()}))
    .into_response()
}

/// Whether the request proves who calls; `Err` is the refusal to send.
async fn authenticate(
    s: &Inner,
    method: &str,
    headers: &HeaderMap,
    url: &str,
    body: &[u8],
) -> Result<(), Response> {
    let check = lock(&s.check).clone();
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let (rest_api, offset) = {
        let b = lock(&s.behaviour);
        (b.rest_api_errors, b.clock_offset)
    };
    let now = chrono::Utc::now().timestamp() + offset;
    let invalid_login = |kind: &'static str| {
        count(s, kind);
        netsuite_error(
            rest_api,
            401,
            "INVALID_LOGIN_ATTEMPT",
            "Invalid login attempt.",
        )
    };
    match check {
        Check::None => Ok(()),
        Check::Tba {
            realm,
            consumer_key,
            consumer_secret,
            token_id,
            token_secret,
        } => {
            let a = s
                .verifier
                .ask(
                    json!({"op": "tba", "method": method, "url": url, "now": now,
                    "authorization": header("authorization"), "realm": realm,
                    "consumer_key": consumer_key, "consumer_secret": consumer_secret,
                    "token_id": token_id, "token_secret": token_secret}),
                )
                .await;
            if a["ok"] != true {
                eprintln!("stand-in: TBA refused: {}", a["reason"]);
                return Err(invalid_login("bad_signature"));
            }
            let nonce = a["nonce"].as_str().unwrap_or_default().to_string();
            if !lock(&s.nonces).insert(nonce) {
                return Err(invalid_login("nonce_reused"));
            }
            Ok(())
        }
        Check::Oauth2 { .. } => {
            let auth = header("authorization");
            let token = auth.strip_prefix("Bearer ").unwrap_or_default();
            match lock(&s.tokens).get(token) {
                Some(until) if Instant::now() < *until => Ok(()),
                Some(_) => Err(invalid_login("expired_token")),
                None => Err(invalid_login("bad_signature")),
            }
        }
        Check::Spatie { secret, strict } => {
            let a = s
                .verifier
                .ask(json!({"op": "hmac", "secret": secret,
                    "body_b64": base64::engine::general_purpose::STANDARD.encode(body),
                    "signature": header("signature")}))
                .await;
            if a["ok"] == true {
                return Ok(());
            }
            count(s, "bad_signature");
            Err(if strict {
                (axum::http::StatusCode::UNAUTHORIZED, "Invalid signature").into_response()
            } else {
                // Laravel in production hides the exception's text.
                (
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    "Server Error",
                )
                    .into_response()
            })
        }
        Check::StandardWebhooks { secret } => {
            let hs: Map<String, Value> = ["webhook-id", "webhook-timestamp", "webhook-signature"]
                .iter()
                .map(|n| (n.to_string(), Value::String(header(n))))
                .collect();
            let a = s
                .verifier
                .ask(json!({"op": "standard_webhooks", "secret": secret,
                    "body_b64": base64::engine::general_purpose::STANDARD.encode(body),
                    "headers": hs}))
                .await;
            if a["ok"] == true {
                Ok(())
            } else {
                eprintln!("stand-in: Standard Webhooks refused: {}", a["reason"]);
                count(s, "bad_signature");
                Err((axum::http::StatusCode::UNAUTHORIZED, "Invalid signature").into_response())
            }
        }
    }
}

async fn receive(
    State(s): State<Arc<Inner>>,
    method: axum::http::Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let offset = lock(&s.behaviour).clock_offset;
    let mut resp = answer(&s, method.as_str(), uri, headers, body).await;
    // The stand-in's clock, as `doctor` reads it to name a skew.
    let date = (chrono::Utc::now() + chrono::Duration::seconds(offset)).to_rfc2822();
    if let Ok(v) = axum::http::HeaderValue::from_str(&date) {
        resp.headers_mut().insert(axum::http::header::DATE, v);
    }
    resp
}

async fn answer(
    s: &Arc<Inner>,
    method: &str,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let url = format!("http://{host}{uri}");
    let ev: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let record_id = ev["record_id"].as_str().unwrap_or("?").to_string();
    let record = format!("{}:{record_id}", ev["record_type"].as_str().unwrap_or("?"));
    let b = lock(&s.behaviour).clone();
    if b.revoked {
        count(s, "revoked");
        return netsuite_error(
            b.rest_api_errors,
            401,
            "INVALID_LOGIN_ATTEMPT",
            "Invalid login attempt.",
        );
    }
    if let Err(refusal) = authenticate(s, method, &headers, &url, &body).await {
        return refusal;
    }
    let now = s.inflight.fetch_add(1, Ordering::SeqCst) + 1;
    s.peak.fetch_max(now, Ordering::SeqCst);
    let answer = if b.cap.is_some_and(|c| now > c) {
        count(s, "busy");
        netsuite_error(
            b.rest_api_errors,
            400,
            "SSS_REQUEST_LIMIT_EXCEEDED",
            "Request limit exceeded. Only 5 concurrent requests are allowed for this account.",
        )
    } else {
        tokio::time::sleep(b.latency).await;
        if b.user_error.contains(&record_id) {
            count(s, "user_error");
            netsuite_error(
                b.rest_api_errors,
                400,
                "USER_ERROR",
                "Invalid value for the resource or sub-resource field 'status'.",
            )
        } else {
            count(s, "ok");
            let version = ev["version"].as_i64().unwrap_or(-1);
            let mut acked = lock(&s.acked);
            let a = acked.entry(record.clone()).or_insert(0);
            *a = (*a).max(version);
            if let Some(applied) = ev["applied"].as_object() {
                let mut fields = lock(&s.fields);
                let f = fields.entry(record).or_default();
                for (k, v) in applied {
                    f.insert(k.clone(), v.clone());
                }
            }
            axum::Json(json!({"ok": true})).into_response()
        }
    };
    s.inflight.fetch_sub(1, Ordering::SeqCst);
    answer
}
