//! The demo's stand-ins for NetSuite and SuiteX: local HTTP servers that
//! record every delivery and fail on command, so the story can show a sink
//! that recovers, a sink that never does, and the bearer token at work.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// The path merged events are POSTed to on both stand-ins.
pub const PATH: &str = "/api/sync/merged-events";

/// One request a stand-in received, and how it answered.
#[derive(Debug, Clone)]
pub struct Received {
    /// The `Idempotency-Key` header: the event's fingerprint.
    pub fingerprint: Option<String>,
    pub status: u16,
    pub body_len: usize,
    pub body: Value,
    pub at: Instant,
}

impl Received {
    pub fn version(&self) -> Option<i64> {
        self.body.get("version").and_then(Value::as_i64)
    }
}

/// Faults the story switches on and off.
#[derive(Debug, Default)]
struct Faults {
    /// Answer 503 to this many more requests, then recover.
    fail_next: u32,
    /// Answer 500 to every event of this record type.
    reject_record_type: Option<String>,
}

struct Shared {
    token: String,
    received: Mutex<Vec<Received>>,
    faults: Mutex<Faults>,
}

/// A poisoned lock only means a handler panicked mid-update; the data is
/// still the best record we have.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running stand-in target.
pub struct StandIn {
    pub name: &'static str,
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl StandIn {
    /// Binds 127.0.0.1 on a free port and serves until `shutdown`.
    pub async fn start(
        name: &'static str,
        token: String,
        shutdown: CancellationToken,
    ) -> std::io::Result<StandIn> {
        let shared = Arc::new(Shared {
            token,
            received: Mutex::new(Vec::new()),
            faults: Mutex::new(Faults::default()),
        });
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await;
        });
        Ok(StandIn { name, addr, shared })
    }

    pub fn url(&self) -> String {
        format!("http://{}{PATH}", self.addr)
    }

    /// The next `n` requests get 503, later ones succeed again.
    pub fn fail_next(&self, n: u32) {
        lock(&self.shared.faults).fail_next = n;
    }

    /// Every event of `record_type` gets 500 until this is called with None.
    pub fn reject_record_type(&self, record_type: Option<&str>) {
        lock(&self.shared.faults).reject_record_type = record_type.map(str::to_string);
    }

    /// Requests carrying this fingerprint, oldest first.
    pub fn received_for(&self, fingerprint: &str) -> Vec<Received> {
        lock(&self.shared.received)
            .iter()
            .filter(|r| r.fingerprint.as_deref() == Some(fingerprint))
            .cloned()
            .collect()
    }

    /// Every request, oldest first.
    pub fn received(&self) -> Vec<Received> {
        lock(&self.shared.received).clone()
    }
}

async fn answer(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let authorized = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        == Some(s.token.as_str());
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let record_type = parsed
        .as_ref()
        .and_then(|v| v.get("record_type"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let (status, text) = if !authorized {
        (StatusCode::UNAUTHORIZED, "missing or wrong bearer token")
    } else if parsed.is_none() {
        (StatusCode::BAD_REQUEST, "the body is not JSON")
    } else {
        let mut faults = lock(&s.faults);
        if faults.fail_next > 0 {
            faults.fail_next -= 1;
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily down (demo fault)",
            )
        } else if record_type.is_some() && faults.reject_record_type == record_type {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "this record type always fails (demo fault)",
            )
        } else {
            (StatusCode::OK, "ok")
        }
    };
    lock(&s.received).push(Received {
        fingerprint: headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        status: status.as_u16(),
        body_len: body.len(),
        body: parsed.unwrap_or(Value::Null),
        at: Instant::now(),
    });
    (status, text).into_response()
}
