//! The stand-in targets: in-process HTTP servers that record every request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

/// One request a stand-in received.
#[derive(Debug, Clone)]
pub(super) struct Arrival {
    pub(super) at: Instant,
    /// `record_type:record_id`.
    pub(super) record: String,
    pub(super) version: i64,
    pub(super) event_id: String,
    /// What applying the body sets: every `applied` field, then every
    /// conflict's `kept` value (the delivery contract).
    pub(super) fields: serde_json::Map<String, serde_json::Value>,
}

#[derive(Deserialize)]
struct BodyKey {
    record_type: String,
    record_id: String,
    version: i64,
    event_id: String,
    #[serde(default)]
    applied: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    conflicts: Vec<KeptValue>,
}

#[derive(Deserialize)]
struct KeptValue {
    field: String,
    kept: serde_json::Value,
}

#[derive(Default)]
struct Recorder {
    arrivals: Mutex<Vec<Arrival>>,
    unreadable: AtomicUsize,
    limits: Limits,
    inflight: AtomicUsize,
    /// Requests refused with 429 for being over the concurrency cap.
    refused: AtomicUsize,
}

/// What a stand-in allows: every request takes `latency`; more than
/// `concurrency` at once are refused at once, as a target with a
/// concurrency cap does (NetSuite's per-account limit, Laravel's throttle).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Limits {
    pub(super) latency: Duration,
    pub(super) concurrency: Option<usize>,
    pub(super) refusal: Refusal,
}

/// How a stand-in refuses a request over its concurrency cap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Refusal {
    /// 429 without `Retry-After` (Laravel's `throttle`).
    #[default]
    Http429,
    /// 400 with a RESTlet's `SSS_REQUEST_LIMIT_EXCEEDED` error body.
    Netsuite400,
}

impl Limits {
    /// Requests per second the target can serve, if it is limited.
    pub(super) fn allows_per_s(&self) -> Option<f64> {
        let c = self.concurrency?;
        (!self.latency.is_zero()).then(|| c as f64 / self.latency.as_secs_f64())
    }
}

/// A poisoned lock only means a handler panicked mid-push; the data stays usable.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A target that records what arrived: without limits it cannot be the
/// bottleneck (answers 200 at once); with [`Limits`] it is.
pub(super) struct StandIn {
    addr: SocketAddr,
    rec: Arc<Recorder>,
}

impl StandIn {
    pub(super) async fn start(stop: CancellationToken, limits: Limits) -> std::io::Result<StandIn> {
        let rec = Arc::new(Recorder {
            limits,
            ..Recorder::default()
        });
        let app = axum::Router::new()
            .fallback(receive)
            .with_state(rec.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
        });
        Ok(StandIn { addr, rec })
    }

    pub(super) fn url(&self) -> String {
        format!("http://{}/merged-events", self.addr)
    }

    pub(super) fn count(&self) -> usize {
        lock(&self.rec.arrivals).len()
    }

    pub(super) fn arrivals(&self) -> Vec<Arrival> {
        lock(&self.rec.arrivals).clone()
    }

    pub(super) fn unreadable(&self) -> usize {
        self.rec.unreadable.load(Ordering::Relaxed)
    }

    pub(super) fn refused(&self) -> usize {
        self.rec.refused.load(Ordering::Relaxed)
    }
}

/// Counts a request in flight for as long as it lives.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn receive(State(rec): State<Arc<Recorder>>, body: Bytes) -> Response {
    let now = rec.inflight.fetch_add(1, Ordering::AcqRel) + 1;
    let _inflight = InFlight(&rec.inflight);
    if rec.limits.concurrency.is_some_and(|c| now > c) {
        rec.refused.fetch_add(1, Ordering::Relaxed);
        return match rec.limits.refusal {
            Refusal::Http429 => StatusCode::TOO_MANY_REQUESTS.into_response(),
            Refusal::Netsuite400 => (
                StatusCode::BAD_REQUEST,
                axum::Json(serde_json::json!({"error": {
                    "code": "SSS_REQUEST_LIMIT_EXCEEDED",
                    "message": "Request limit exceeded. Only 15 concurrent requests are allowed for this account."
                }})),
            )
                .into_response(),
        };
    }
    if !rec.limits.latency.is_zero() {
        tokio::time::sleep(rec.limits.latency).await;
    }
    let at = Instant::now();
    match serde_json::from_slice::<BodyKey>(&body) {
        Ok(k) => {
            let mut fields = k.applied;
            for c in k.conflicts {
                fields.insert(c.field, c.kept);
            }
            lock(&rec.arrivals).push(Arrival {
                at,
                record: backbone::model::raw_event::ordering_key(&k.record_type, &k.record_id),
                version: k.version,
                event_id: k.event_id,
                fields,
            })
        }
        Err(_) => {
            rec.unreadable.fetch_add(1, Ordering::Relaxed);
        }
    }
    StatusCode::OK.into_response()
}
