//! The metrics port: `/metrics`, `/healthz` (process and supervisor loop
//! alive), `/readyz` (database and Pub/Sub answer, every enabled consumer streams).
//! `listener` serves it, and the admin API, within limits slow clients
//! cannot exhaust.

pub mod listener;

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
use crate::metrics;
use crate::runtime::health::Health;
use crate::store::probe::Probe;
use crate::store::Store;

/// Longest a readiness check waits for the database (the chart's probe
/// timeout is 3 s; answering 503 in time beats a probe timeout).
const DB_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest a `/metrics` scrape waits for the database.
const SCRAPE_DB_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Clone)]
struct Ctx {
    store: Store,
    health: Arc<Health>,
    db: Arc<DbProbe>,
}

/// Readiness's view of the database, over its own connection (see [`Probe`]).
struct DbProbe(Probe);

impl DbProbe {
    /// `SELECT 1`, reconnecting when needed; a broken or timed-out
    /// connection is dropped so the next check starts afresh.
    async fn check(&self) -> Result<(), String> {
        match tokio::time::timeout(DB_CHECK_TIMEOUT, self.0.ping()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "no answer within {}",
                humantime::format_duration(DB_CHECK_TIMEOUT)
            )),
        }
    }
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
        .with_state(Ctx {
            store,
            health: health.clone(),
            db: Arc::new(DbProbe(Probe::new(settings.database.url.clone()))),
        });
    let listener = tokio::net::TcpListener::bind(&settings.http.metrics_addr)
        .await
        .with_context(|| format!("binding http.metrics_addr {}", settings.http.metrics_addr))?;
    let addr = listener
        .local_addr()
        .context("reading the bound metrics address")?;
    health.set_metrics_addr(addr);
    tracing::info!(addr = %addr, "Serving /metrics, /healthz and /readyz.");
    Ok(tokio::spawn(listener::serve(
        listener,
        app,
        listener::METRICS,
        "metrics",
        shutdown,
    )))
}

async fn metrics_text(State(ctx): State<Ctx>) -> impl IntoResponse {
    let pool = ctx.store.pool();
    let idle = pool.num_idle() as i64;
    let size = i64::from(pool.size());
    metrics::set_db_pool_connections(idle, size - idle);
    // Dead letters are parked and replayed by every replica and by the CLI:
    // recount them so the gauge is true here too (skipped if the DB is slow).
    // `backbone_ready` says what /readyz would answer now, probes or not; a
    // database that does not answer within the same second counts as unready.
    // Both at once, so a hanging database delays a scrape by 1 s, not more.
    let (parked, ready) = tokio::join!(
        tokio::time::timeout(SCRAPE_DB_TIMEOUT, ctx.store.pending_dead_letters()),
        tokio::time::timeout(SCRAPE_DB_TIMEOUT, readiness(&ctx)),
    );
    if let Ok(Ok(n)) = parked {
        metrics::set_dead_letters_parked(n);
    }
    if ready.is_err() {
        metrics::set_ready(false);
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        metrics::render(),
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

/// The readiness verdict and what it rests on; also sets `backbone_ready`.
struct Readiness {
    ready: bool,
    db: Result<(), String>,
    pubsub: Result<(), String>,
    holding: Option<String>,
}

async fn readiness(ctx: &Ctx) -> Readiness {
    let db = ctx.db.check().await;
    let pubsub = ctx.health.broker();
    let holding = ctx.health.holding();
    let ready = db.is_ok() && pubsub.is_ok() && holding.is_none() && ctx.health.all_up();
    metrics::set_ready(ready);
    Readiness {
        ready,
        db,
        pubsub,
        holding,
    }
}

/// What `/readyz` says of a dependency that does not answer. The port is
/// unauthenticated: the error itself (host names, user names, the
/// server's words) goes to the log, never into the answer.
const UNAVAILABLE: &str = "unavailable (details in the log)";

/// The unparked dead letters' detail without the database's own words.
fn without_error(mut detail: serde_json::Value) -> serde_json::Value {
    if let Some(e) = detail.pointer_mut("/example/error") {
        *e = json!(UNAVAILABLE);
    }
    detail
}

async fn readyz(State(ctx): State<Ctx>) -> impl IntoResponse {
    let Readiness {
        ready,
        db,
        pubsub,
        holding,
    } = readiness(&ctx).await;
    if let Err(e) = &db {
        tracing::warn!(error = %e, "Readiness: the database does not answer.");
    }
    if let Err(e) = &pubsub {
        tracing::warn!(error = %e, "Readiness: Pub/Sub does not answer.");
    }
    if let Some(h) = &holding {
        tracing::warn!(holding = %h, "Readiness: messages are held.");
    }
    let generic = |r: &Result<(), String>| match r {
        Ok(()) => "ok",
        Err(_) => UNAVAILABLE,
    };
    let consumers: std::collections::BTreeMap<String, serde_json::Value> = ctx
        .health
        .snapshot()
        .into_iter()
        .map(|(label, c)| {
            let detail = if c.up {
                c.detail
            } else {
                UNAVAILABLE.to_string()
            };
            (label, json!({"up": c.up, "detail": detail}))
        })
        .collect();
    let body = Json(json!({
        "ready": ready,
        "holding": holding.is_some().then(|| ctx.health.holding_counts()).flatten(),
        "database": generic(&db),
        "pubsub": generic(&pubsub),
        "consumers": consumers,
        // Detail only: a dead letter that cannot be parked is not fixed by
        // a restart (see the park stage).
        "dead_letters_unparked": without_error(crate::stages::park::unparked_detail()),
        // Detail only (docs/spec.md §4.2): a target that is down or throttling is
        // held and paced, and a restart of ours would not help it.
        "targets": ctx.health.targets(),
    }));
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body)
}
