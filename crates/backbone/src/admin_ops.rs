//! The operator actions on the admin API (docs/spec.md §7.1), behind the
//! same bearer token as every `/admin` route (the check wraps the merged
//! router in [`crate::admin::router`]). Each handler calls `crate::ops`,
//! exactly as the CLI, MCP and the console do; the actor is `admin-api`.
//!
//! - `GET  /admin/dlq/{id}`: one dead letter with the body sent and the answer;
//! - `POST /admin/dlq/preview`: what a replay of a selection would cover;
//! - `POST /admin/dlq/replay`: replay a selection (`dry_run` to preview);
//! - `POST /admin/dlq/discard`: `{"ids": […], "reason": "…"}`;
//! - `GET  /admin/targets`; `POST /admin/targets/{t}/pause` (`{"reason"}`),
//!   `POST /admin/targets/{t}/resume`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use std::sync::Arc;

use crate::ops::dlq::{self, Selection};
use crate::ops::{targets, Actor, OpsError};
use crate::pubsub::publisher::Publishers;
use crate::runtime::health::Health;
use crate::store::Store;

/// What these routes need of the admin server's state (handed over by
/// [`crate::admin::router`], which owns the token check).
#[derive(Clone)]
pub struct OpsState {
    pub store: Store,
    /// For replays; without it `/admin/dlq/replay` answers 503.
    pub publishers: Option<Arc<Publishers>>,
    /// The daemon's live view of the targets, for `/admin/targets`.
    pub health: Option<Arc<Health>>,
    /// Each target's signed client, for `/admin/records/resync`.
    pub sinks: crate::ops::records::Sinks,
}

/// An operator action's failure as an HTTP answer.
pub struct OpsApiError(StatusCode, String);

impl From<OpsError> for OpsApiError {
    fn from(e: OpsError) -> Self {
        let code = match &e {
            OpsError::Invalid(_) => StatusCode::BAD_REQUEST,
            OpsError::NotFound(_) => StatusCode::NOT_FOUND,
            _ if e.is_transient() => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        OpsApiError(code, e.to_string())
    }
}

impl IntoResponse for OpsApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

type Answer = Result<Json<serde_json::Value>, OpsApiError>;

pub fn routes() -> Router<OpsState> {
    Router::new()
        .route("/admin/dlq/{id}", get(dlq_show))
        .route("/admin/dlq/preview", post(dlq_preview))
        .route("/admin/dlq/replay", post(dlq_replay))
        .route("/admin/dlq/discard", post(dlq_discard))
        .route("/admin/targets", get(targets_list))
        .route("/admin/targets/{target}/pause", post(target_pause))
        .route("/admin/targets/{target}/resume", post(target_resume))
        .route("/admin/records/resync", post(records_resync))
}

#[derive(Debug, Deserialize)]
struct ResyncBody {
    target: String,
    /// `type:id` each.
    records: Vec<String>,
}

/// `records resync` (docs/spec.md §7.1): each record's current routed
/// state to the target as one signed request, `X-Backbone-Resync: true`.
async fn records_resync(State(s): State<OpsState>, Json(b): Json<ResyncBody>) -> Answer {
    let (source, sink, recs) = crate::ops::records::resolve(&s.sinks, &b.target, &b.records)?;
    let rows =
        crate::ops::records::resync(&s.store, sink, source, &recs, &Actor::admin_api()).await?;
    Ok(Json(json!(rows)))
}

async fn dlq_show(State(s): State<OpsState>, Path(id): Path<i64>) -> Answer {
    Ok(Json(json!(dlq::show(&s.store, id).await?)))
}

async fn dlq_preview(State(s): State<OpsState>, body: Option<Json<Selection>>) -> Answer {
    let sel = body.map(|Json(b)| b).unwrap_or_default();
    Ok(Json(json!(dlq::preview(&s.store, &sel).await?)))
}

#[derive(Debug, Default, Deserialize)]
struct ReplayBody {
    #[serde(flatten)]
    selection: Selection,
    #[serde(default)]
    dry_run: bool,
}

async fn dlq_replay(State(s): State<OpsState>, body: Option<Json<ReplayBody>>) -> Answer {
    let b = body.map(|Json(b)| b).unwrap_or_default();
    let Some(publishers) = s.publishers.clone() else {
        return Err(OpsApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "replay is not available on this server (no publisher)".into(),
        ));
    };
    // Its own task: a replay longer than the request timeout goes on to
    // the end (rows are marked one by one) after the client got its 503.
    let store = s.store.clone();
    let report = tokio::spawn(async move {
        dlq::replay(
            &store,
            &publishers,
            &b.selection,
            &Actor::admin_api(),
            b.dry_run,
        )
        .await
    })
    .await
    .map_err(|e| {
        OpsApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the replay failed: {e}"),
        )
    })??;
    Ok(Json(json!(report)))
}

#[derive(Debug, Deserialize)]
struct DiscardBody {
    ids: Vec<i64>,
    #[serde(default)]
    reason: String,
}

async fn dlq_discard(State(s): State<OpsState>, Json(b): Json<DiscardBody>) -> Answer {
    let r = dlq::discard(&s.store, &b.ids, &Actor::admin_api(), &b.reason).await?;
    Ok(Json(json!(r)))
}

async fn targets_list(State(s): State<OpsState>) -> Answer {
    let live = s.health.as_deref();
    Ok(Json(json!(targets::list(&s.store, live).await?)))
}

#[derive(Debug, Default, Deserialize)]
struct PauseBody {
    #[serde(default)]
    reason: String,
}

async fn target_pause(
    State(s): State<OpsState>,
    Path(target): Path<String>,
    body: Option<Json<PauseBody>>,
) -> Answer {
    let b = body.map(|Json(b)| b).unwrap_or_default();
    let r = targets::pause(&s.store, &target, &Actor::admin_api(), &b.reason).await?;
    Ok(Json(json!(r)))
}

async fn target_resume(State(s): State<OpsState>, Path(target): Path<String>) -> Answer {
    Ok(Json(json!(
        targets::resume(&s.store, &target, &Actor::admin_api()).await?
    )))
}
