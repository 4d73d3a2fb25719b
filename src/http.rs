//! The metrics port: `/metrics`, `/healthz` (process and supervisor loop
//! alive), `/readyz` (database answers and every enabled consumer streams).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::metrics::metrics;
use crate::store::Store;
use crate::supervisor::Health;

#[derive(Clone)]
struct Ctx {
    store: Store,
    health: Arc<Health>,
}

/// Binds the metrics address and serves until `shutdown`.
pub async fn serve(
    settings: &Settings,
    store: Store,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Ctx { store, health });
    let listener = tokio::net::TcpListener::bind(&settings.http.metrics_addr)
        .await
        .with_context(|| format!("binding http.metrics_addr {}", settings.http.metrics_addr))?;
    tracing::info!(addr = %settings.http.metrics_addr, "Serving /metrics, /healthz and /readyz.");
    Ok(tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    }))
}

async fn metrics_text(State(ctx): State<Ctx>) -> impl IntoResponse {
    let pool = ctx.store.pool();
    let idle = pool.num_idle() as i64;
    let size = i64::from(pool.size());
    let g = &metrics().db_pool_connections;
    g.with_label_values(&["idle"]).set(idle);
    g.with_label_values(&["in_use"]).set(size - idle);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        metrics().render(),
    )
}

async fn healthz(State(ctx): State<Ctx>) -> impl IntoResponse {
    if ctx.health.alive(Duration::from_secs(10)) {
        (StatusCode::OK, "ok")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "supervisor loop is not running",
        )
    }
}

async fn readyz(State(ctx): State<Ctx>) -> impl IntoResponse {
    let db = tokio::time::timeout(Duration::from_secs(2), ctx.store.ping()).await;
    let db_ok = matches!(db, Ok(Ok(())));
    let consumers = ctx.health.snapshot();
    let ready = db_ok && ctx.health.all_up();
    let body = Json(json!({
        "ready": ready,
        "database": if db_ok { "ok".to_string() } else {
            match db { Ok(Err(e)) => e.to_string(), _ => "timed out".to_string() }
        },
        "consumers": consumers,
    }));
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body)
}
