//! The admin API (docs/spec.md §7) on `http.admin_addr`: bound to 127.0.0.1 by
//! default, bearer token required, disabled when `http.admin_token` is unset.
//!
//! Routes live in small groups (`record_routes`, …) merged by [`router`];
//! the token check wraps all of them, including unknown paths, so the API's
//! shape is not discoverable without the token.

use std::sync::Arc;

use anyhow::Context;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::explain::{self, ExplainError};
use crate::history::{self, HistoryError, ListQuery};
use crate::mcp;
use crate::model::raw_event::Source;
use crate::model::rules::MergePolicy;
use crate::pubsub::publisher::Publishers;
use crate::runtime::health::Health;
use crate::store::dead_letters::DlqFilter;
use crate::store::Store;

/// What admin handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AdminState {
    pub store: Store,
    /// The configured merge policy: replays must fold exactly as the live stage does.
    pub policy: Arc<MergePolicy>,
    pub settings: Arc<Settings>,
    /// For DLQ replay; without it the replay route answers 503.
    pub publishers: Option<Arc<Publishers>>,
    /// SHA-256 of the admin token; `None` refuses every request.
    token_digest: Option<[u8; 32]>,
    /// The daemon's readiness, for the MCP `pipeline_status` tool.
    pub health: Option<Arc<Health>>,
    /// Ends the MCP sessions at shutdown.
    pub shutdown: CancellationToken,
    /// Each target's signed client, for `records resync`.
    pub sinks: crate::ops::records::Sinks,
}

impl AdminState {
    pub fn new(store: Store, settings: &Settings) -> Self {
        let token_digest = settings
            .http
            .admin_token
            .as_ref()
            .map(|t| t.expose_secret().trim().to_string())
            .filter(|t| !t.is_empty())
            .map(|t| digest(t.as_bytes()));
        Self {
            store,
            policy: Arc::new(settings.merge_policy()),
            settings: Arc::new(settings.clone()),
            publishers: None,
            token_digest,
            health: None,
            shutdown: CancellationToken::new(),
            sinks: Default::default(),
        }
    }

    /// The targets' signed clients (`records resync`).
    pub fn with_sinks(mut self, sinks: crate::ops::records::Sinks) -> Self {
        self.sinks = sinks;
        self
    }

    pub fn with_health(mut self, health: Arc<Health>) -> Self {
        self.health = Some(health);
        self
    }

    /// The MCP endpoint's view of this server (`mcp.http_enabled`).
    fn mcp(&self) -> Option<mcp::Ctx> {
        if !self.settings.mcp.http_enabled {
            return None;
        }
        let mut ctx = mcp::Ctx::new(self.store.clone(), &self.settings, mcp::Transport::Http);
        if let Some(p) = &self.publishers {
            ctx = ctx.with_publishers(p.clone());
        }
        if let Some(h) = &self.health {
            ctx = ctx.with_health(h.clone());
        }
        Some(ctx.with_sinks(self.sinks.clone()))
    }

    pub fn with_publishers(mut self, publishers: Arc<Publishers>) -> Self {
        self.publishers = Some(publishers);
        self
    }

    /// The admin API only runs with a non-empty token.
    pub fn enabled(&self) -> bool {
        self.token_digest.is_some()
    }
}

fn digest(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

/// Compares fixed-length digests without an early exit, so response time
/// says nothing about how much of a guessed token was right.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// Every admin route, behind the bearer-token check; `/mcp` too (the
/// MCP streamable HTTP transport) unless `mcp.http_enabled` is off.
pub fn router(state: AdminState) -> Router {
    let mut routes = Router::new()
        .merge(record_routes())
        .merge(dlq_routes())
        .merge(
            crate::admin_ops::routes().with_state(crate::admin_ops::OpsState {
                store: state.store.clone(),
                publishers: state.publishers.clone(),
                health: state.health.clone(),
                sinks: state.sinks.clone(),
            }),
        );
    if let Some(ctx) = state.mcp() {
        routes = routes.nest_service(
            mcp::http::PATH,
            mcp::http::service(ctx, &state.settings.http.admin_addr, state.shutdown.clone()),
        );
    }
    // The operator console (docs/spec.md §7.1) logs in on its own: beside the bearer check.
    let console = crate::console::Console::new(state.store.clone(), &state.settings)
        .with_publishers(state.publishers.clone())
        .with_health(state.health.clone())
        .with_sinks(state.sinks.clone());
    let api = routes
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state);
    // Merged second, the API's fallback (behind the token) answers unknown paths.
    crate::console::router(console).merge(api)
}

/// `/admin/records/…`: a record's history and its state at any sequence.
fn record_routes() -> Router<AdminState> {
    Router::new()
        .route(
            "/admin/records/{record_type}/{record_id}/events",
            get(record_events),
        )
        .route(
            "/admin/records/{record_type}/{record_id}/state",
            get(record_state),
        )
        .route(
            "/admin/records/{record_type}/{record_id}/explain",
            get(record_explain),
        )
}

/// `/admin/dlq`: list dead letters (docs/spec.md §4, §7); the actions on
/// them are in [`crate::admin_ops`].
fn dlq_routes() -> Router<AdminState> {
    Router::new().route("/admin/dlq", get(dlq_list))
}

#[derive(Debug, Deserialize)]
struct DlqListParams {
    stage: Option<String>,
    record_type: Option<String>,
    record_id: Option<String>,
    reason: Option<String>,
    /// Include rows already replayed.
    #[serde(default)]
    all: bool,
    /// Only this status (`parked`, `replayed`, `superseded`, `discarded`).
    status: Option<String>,
    limit: Option<i64>,
    /// The page after this row id (`next_after_id` of the previous page).
    after_id: Option<i64>,
}

/// Rows per page of `GET /admin/dlq` at most (without their data).
pub const DLQ_PAGE_MAX: i64 = 1000;

async fn dlq_list(
    State(state): State<AdminState>,
    params: Result<Query<DlqListParams>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(p) = params.map_err(|e| bad_request(e.body_text()))?;
    let filter = DlqFilter {
        ids: Vec::new(),
        stage: p.stage,
        record_type: p.record_type,
        record_id: p.record_id,
        reason: p.reason,
        include_replayed: p.all,
        status: p.status,
        ..Default::default()
    };
    let limit = p.limit.unwrap_or(100);
    if !(1..=DLQ_PAGE_MAX).contains(&limit) {
        return Err(bad_request(format!(
            "limit must be between 1 and {DLQ_PAGE_MAX}; page on with after_id"
        )));
    }
    // Details only: each row's data stays in the database (`data_bytes`
    // says how big it is; `dlq show` and MCP `show_dead_letter` read it).
    let rows = state
        .store
        .dead_letter_page(&filter, p.after_id, limit)
        .await
        .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let next_after_id = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|d| d.id))
        .flatten();
    let pending = state.store.pending_dead_letters().await.unwrap_or(-1);
    Ok(Json(
        json!({"pending": pending, "dead_letters": rows, "next_after_id": next_after_id}),
    ))
}

/// Binds `http.admin_addr` and serves until `shutdown`; `None` (with a log
/// line) when no admin token is configured.
pub async fn serve(
    settings: &Settings,
    state: AdminState,
    shutdown: CancellationToken,
) -> anyhow::Result<Option<JoinHandle<()>>> {
    if !state.enabled() {
        tracing::info!(
            "The admin API and the console are disabled because http.admin_token is not set."
        );
        return Ok(None);
    }
    let addr = &settings.http.admin_addr;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding http.admin_addr {addr}"))?;
    let local = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| addr.clone());
    tracing::info!(addr = %local, "Serving the admin API (bearer token required).");
    let mut state = state;
    state.shutdown = shutdown.clone();
    let app = router(state);
    Ok(Some(tokio::spawn(crate::http::listener::serve(
        listener,
        app,
        crate::http::listener::ADMIN,
        "admin",
        shutdown,
    ))))
}

async fn require_token(State(state): State<AdminState>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .map(|t| digest(t.as_bytes()));
    let ok = match (&state.token_digest, &presented) {
        (Some(want), Some(got)) => constant_time_eq(want, got),
        _ => false,
    };
    if !ok {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(json!({"error": "a valid bearer token is required"})),
        )
            .into_response();
    }
    next.run(req).await
}

/// The token of an `Authorization: Bearer <token>` header. The scheme is
/// case-insensitive (RFC 7235 §2.1), so `bearer` and `BEARER` work too.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once([' ', '\t'])?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// An error response with a JSON body.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

impl From<HistoryError> for ApiError {
    fn from(e: HistoryError) -> Self {
        match e {
            HistoryError::BadLimit(_) => ApiError(StatusCode::BAD_REQUEST, e.to_string()),
            HistoryError::Replay { .. } => ApiError(StatusCode::CONFLICT, e.to_string()),
            // Archived history (docs/spec.md §6.1): there, but not in the database.
            HistoryError::Archived { .. } => ApiError(StatusCode::GONE, e.to_string()),
            HistoryError::Store(ref s) => {
                tracing::error!(error = %s, "An admin history read failed.");
                ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
            }
        }
    }
}

fn bad_request(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

#[derive(Debug, Deserialize)]
struct EventsParams {
    limit: Option<u32>,
    before_seq: Option<i64>,
    source: Option<String>,
    since: Option<String>,
    until: Option<String>,
}

fn parse_time(name: &str, v: Option<String>) -> Result<Option<DateTime<Utc>>, ApiError> {
    v.map(|s| {
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| bad_request(format!("`{name}` must be an RFC 3339 timestamp: {e}")))
    })
    .transpose()
}

async fn record_events(
    State(state): State<AdminState>,
    Path((record_type, record_id)): Path<(String, String)>,
    params: Result<Query<EventsParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(p) = params.map_err(|e| bad_request(e.body_text()))?;
    let source = p
        .source
        .map(|s| s.parse::<Source>())
        .transpose()
        .map_err(|e| bad_request(e.to_string()))?;
    let q = ListQuery {
        limit: p.limit.unwrap_or(history::DEFAULT_LIMIT),
        before_seq: p.before_seq,
        source,
        since: parse_time("since", p.since)?,
        until: parse_time("until", p.until)?,
    };
    let page = history::list(&state.store, &record_type, &record_id, &q).await?;
    Ok(Json(page).into_response())
}

#[derive(Debug, Deserialize)]
struct StateParams {
    at_seq: Option<i64>,
}

async fn record_state(
    State(state): State<AdminState>,
    Path((record_type, record_id)): Path<(String, String)>,
    params: Result<Query<StateParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(p) = params.map_err(|e| bad_request(e.body_text()))?;
    if p.at_seq.is_some_and(|s| s < 1) {
        return Err(bad_request("`at_seq` must be 1 or more"));
    }
    let r = history::replay(
        &state.store,
        &state.policy,
        &record_type,
        &record_id,
        p.at_seq,
    )
    .await?;
    if r.events_replayed == 0 {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("{record_type}/{record_id} has no events"),
        ));
    }
    Ok(Json(r.view()).into_response())
}

#[derive(Debug, Deserialize)]
struct ExplainParams {
    field: Option<String>,
}

async fn record_explain(
    State(state): State<AdminState>,
    Path((record_type, record_id)): Path<(String, String)>,
    params: Result<Query<ExplainParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(p) = params.map_err(|e| bad_request(e.body_text()))?;
    let x = explain::explain_record(
        &state.store,
        &state.policy,
        &record_type,
        &record_id,
        p.field.as_deref(),
    )
    .await?;
    Ok(Json(x).into_response())
}

impl From<ExplainError> for ApiError {
    fn from(e: ExplainError) -> Self {
        match e {
            ExplainError::UnknownRecord { .. } | ExplainError::UnknownField { .. } => {
                ApiError(StatusCode::NOT_FOUND, e.to_string())
            }
            ExplainError::Replay(h) => h.into(),
            ExplainError::Store(s) => HistoryError::Store(s).into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_digests_compare_equal_only_when_identical() {
        let a = digest(b"secret");
        assert!(constant_time_eq(&a, &digest(b"secret")));
        assert!(!constant_time_eq(&a, &digest(b"secret ")));
        assert!(!constant_time_eq(&a, &digest(b"")));
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        for v in [
            "Bearer t0k",
            "bearer t0k",
            "BEARER t0k",
            "bEaReR   t0k ",
            "Bearer\tt0k",
        ] {
            assert_eq!(bearer_token(v), Some("t0k"), "{v:?}");
        }
        for v in [
            "Basic t0k",
            "Bearer",
            "Bearer ",
            "Bearert0k",
            "",
            "Token t0k",
        ] {
            assert_eq!(bearer_token(v), None, "{v:?}");
        }
    }
}
