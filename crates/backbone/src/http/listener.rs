//! Serving a router on a port that slow or idle clients can reach (docs/spec.md §10):
//! a header-read timeout (idle keep-alive connections included), a request
//! timeout, and a cap on open connections at which the oldest connection
//! that never sent a request is closed to make room — so 1,000 idle or
//! half-sent connections cost a bounded number of sockets for at most the
//! header-read timeout, and a client that sends its request at once (a
//! scrape, a probe, an operator) is still served.
//!
//! `axum::serve` sets none of these: it runs hyper without a timer, so even
//! hyper's default header-read timeout never fires.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::service::Service as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::internal_events::{emit, HttpConnectionShed};

/// What a listener allows its clients.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A connection must send a request's headers within this, counted
    /// from when it opened or finished its previous request.
    pub header_read_timeout: Duration,
    /// A request must be answered (body read and handler done) within this.
    pub request_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
    /// How long shutdown waits for requests in progress.
    pub drain: Duration,
}

/// `/metrics`, `/healthz`, `/readyz`: answers are quick (a scrape waits
/// ≤ 1 s for the database, readiness ≤ 2 s).
pub const METRICS: Limits = Limits {
    header_read_timeout: Duration::from_secs(5),
    request_timeout: Duration::from_secs(10),
    max_connections: 256,
    drain: Duration::from_secs(2),
};

/// The admin API (and MCP over HTTP): a replay or an `explain` of a long
/// history may take a while; operators are few.
pub const ADMIN: Limits = Limits {
    header_read_timeout: Duration::from_secs(5),
    request_timeout: Duration::from_secs(120),
    max_connections: 64,
    drain: Duration::from_secs(5),
};

/// One open connection, as the cap sees it.
struct Slot {
    id: u64,
    /// Whether it has sent a request yet; one that has not may be closed
    /// to make room for a newcomer.
    served: Arc<AtomicBool>,
    close: CancellationToken,
}

#[derive(Default)]
struct Open {
    slots: Mutex<VecDeque<Slot>>,
    next_id: AtomicU64,
}

impl Open {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a new connection; at the cap, closes the oldest one that
    /// never sent a request. None when every open connection is in use
    /// (the newcomer is refused).
    fn admit(
        &self,
        max: usize,
        listener: &'static str,
    ) -> Option<(u64, Arc<AtomicBool>, CancellationToken)> {
        let mut slots = self.lock();
        if slots.len() >= max {
            match slots.iter().position(|s| !s.served.load(Ordering::Acquire)) {
                Some(i) => {
                    if let Some(idle) = slots.remove(i) {
                        idle.close.cancel();
                    }
                    emit(HttpConnectionShed {
                        listener,
                        action: "evicted_idle",
                        open: max,
                    });
                }
                None => {
                    emit(HttpConnectionShed {
                        listener,
                        action: "refused",
                        open: max,
                    });
                    return None;
                }
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let served = Arc::new(AtomicBool::new(false));
        let close = CancellationToken::new();
        slots.push_back(Slot {
            id,
            served: served.clone(),
            close: close.clone(),
        });
        Some((id, served, close))
    }

    fn release(&self, id: u64) {
        self.lock().retain(|s| s.id != id);
    }
}

/// `router` with every request bounded by `d`: past it the client gets a
/// 503 and the handler is dropped.
pub fn with_request_timeout(router: Router, d: Duration) -> Router {
    router.layer(middleware::from_fn(
        move |req: Request, next: Next| async move {
            match tokio::time::timeout(d, next.run(req)).await {
                Ok(r) => r,
                Err(_) => timed_out(d),
            }
        },
    ))
}

fn timed_out(d: Duration) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "the request was not answered within {}\n",
            humantime::format_duration(d)
        ),
    )
        .into_response()
}

/// Serves `router` on `listener` within `limits` until `shutdown`; then
/// stops accepting and lets requests in progress finish (at most
/// `limits.drain`).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    name: &'static str,
    shutdown: CancellationToken,
) {
    let router = with_request_timeout(router, limits.request_timeout);
    let open = Arc::new(Open::default());
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors or a connection reset before
                    // it was accepted: wait a little rather than spin.
                    tracing::warn!(listener = name, error = %e, "Accepting a connection failed.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some((id, served, close)) = open.admit(limits.max_connections, name) else {
            drop(stream);
            continue;
        };
        let inner = TowerToHyperService::new(router.clone());
        let service = hyper::service::service_fn(move |req| {
            served.store(true, Ordering::Release);
            inner.call(req)
        });
        let conn = http.serve_connection(TokioIo::new(stream), service);
        let (open, shutdown) = (open.clone(), shutdown.clone());
        tokio::spawn(async move {
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                // Evicted to make room: it never sent a request.
                _ = close.cancelled() => {}
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(limits.drain, conn).await;
                }
            }
            open.release(id);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_not_answered_in_time_gets_a_503_and_the_port_serves_on() {
        let app = Router::new()
            .route(
                "/slow",
                axum::routing::get(|| async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    "late"
                }),
            )
            .route("/fast", axum::routing::get(|| async { "ok" }));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let limits = Limits {
            request_timeout: Duration::from_millis(300),
            ..METRICS
        };
        let server = tokio::spawn(serve(listener, app, limits, "test", stop.clone()));
        let slow = reqwest::get(format!("http://{addr}/slow")).await.unwrap();
        assert_eq!(slow.status(), 503);
        let fast = reqwest::get(format!("http://{addr}/fast")).await.unwrap();
        assert_eq!(fast.text().await.unwrap(), "ok");
        stop.cancel();
        let _ = server.await;
    }

    #[test]
    fn at_the_cap_the_oldest_connection_that_never_sent_a_request_makes_room() {
        let open = Open::default();
        let a = open.admit(2, "t").unwrap();
        let b = open.admit(2, "t").unwrap();
        a.1.store(true, Ordering::Release); // a has been served
        let c = open.admit(2, "t").expect("b is evicted for c");
        assert!(b.2.is_cancelled() && !a.2.is_cancelled());
        c.1.store(true, Ordering::Release);
        assert!(open.admit(2, "t").is_none(), "all busy: refused");
        open.release(a.0);
        assert!(open.admit(2, "t").is_some());
    }
}
