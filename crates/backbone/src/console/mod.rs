//! The operator console (docs/spec.md §7.1) at `/console` on the admin
//! listener: server-rendered pages (maud templates compiled into the
//! binary, one stylesheet, no JavaScript) over the same reads as the admin
//! API and the live process state `/readyz` shows; its actions call the
//! same operations as the CLI ([`actions`]).
//!
//! The admin token logs in ([`session`]); a session cookie then carries the
//! login and every POST a CSRF token. The console has its own login, so the
//! admin API's bearer check does not wrap it; every console route but the
//! login page and the stylesheet goes through [`require_session`].

pub mod actions;
mod auth;
mod authed;
mod dead_letters;
mod form;
mod layout;
mod overview;
mod record;
pub mod session;
mod targets;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::config::Settings;
use crate::model::rules::MergePolicy;
use crate::pubsub::publisher::Publishers;
use crate::runtime::health::Health;
use crate::store::Store;

pub use self::session::{Keys, Session};

/// What the console's handlers share. Cheap to clone.
#[derive(Clone)]
pub struct Console {
    pub store: Store,
    /// The configured merge policy: the record page folds as the merge stage does.
    pub policy: Arc<MergePolicy>,
    /// For replays; without it the replay action says it is unavailable.
    pub publishers: Option<Arc<Publishers>>,
    /// The live process state (consumers, holds, targets' pacing).
    pub health: Option<Arc<Health>>,
    /// Each target's signed client, for resync.
    pub sinks: crate::ops::records::Sinks,
    /// `None` when no admin token is configured: every page says the
    /// console is disabled.
    keys: Option<Keys>,
}

impl Console {
    pub fn new(store: Store, settings: &Settings) -> Self {
        use secrecy::ExposeSecret;
        let token = settings
            .http
            .admin_token
            .as_ref()
            .map(|t| t.expose_secret());
        Console {
            store,
            policy: Arc::new(settings.merge_policy()),
            publishers: None,
            health: None,
            sinks: Default::default(),
            keys: Keys::from_token(token),
        }
    }

    pub fn with_publishers(mut self, publishers: Option<Arc<Publishers>>) -> Self {
        self.publishers = publishers;
        self
    }

    pub fn with_health(mut self, health: Option<Arc<Health>>) -> Self {
        self.health = health;
        self
    }

    /// The targets' signed clients (resync).
    pub fn with_sinks(mut self, sinks: crate::ops::records::Sinks) -> Self {
        self.sinks = sinks;
        self
    }

    /// The session the request's cookie carries, if valid.
    fn session(&self, headers: &HeaderMap) -> Option<Session> {
        let keys = self.keys.as_ref()?;
        let cookie = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|h| session::cookie_value(h, session::COOKIE))?;
        keys.verify(cookie, chrono::Utc::now().timestamp())
    }
}

/// Every console route. Mounted by the admin listener beside (not behind)
/// the bearer-token routes.
pub fn router(console: Console) -> Router {
    let pages = Router::new()
        .route("/console", get(overview::page))
        .route("/console/dead-letters", get(dead_letters::groups))
        .route("/console/dead-letters/list", get(dead_letters::list))
        .route("/console/dead-letters/{id}", get(dead_letters::detail))
        .route("/console/records", get(record::find))
        .route(
            "/console/records/{record_type}/{record_id}",
            get(record::timeline),
        )
        .route(
            "/console/records/{record_type}/{record_id}/explain",
            get(record::explain),
        )
        .route("/console/targets", get(targets::page))
        .route("/console/logout", post(auth::logout))
        .route("/console/actions/replay", post(actions::replay_handler))
        .route("/console/actions/preview", post(actions::preview_handler))
        .route("/console/actions/discard", post(actions::discard_handler))
        .route("/console/actions/pause", post(actions::pause_handler))
        .route("/console/actions/resume", post(actions::resume_handler))
        .route("/console/actions/resync", post(actions::resync_handler))
        // Not a fallback: the admin listener's unknown paths stay behind its token.
        .route("/console/{*rest}", get(not_found))
        // route_layer: unknown paths are not the console's (the admin
        // listener's fallback keeps its own token check).
        .route_layer(middleware::from_fn_with_state(
            console.clone(),
            require_session,
        ));
    Router::new()
        .route("/console/login", get(auth::login_page).post(auth::login))
        .route("/console/static/console.css", get(layout::stylesheet))
        .merge(pages)
        .route_layer(middleware::map_response(protect))
        .with_state(console)
}

/// Headers on every console answer: no framing (clickjacking), nothing
/// loaded from elsewhere and no script at all, and pages with data not
/// kept in caches.
async fn protect(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_FRAME_OPTIONS,
        header::HeaderValue::from_static("DENY"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-store"),
        );
    }
    r
}

/// Sends a request without a valid session to the login page (a POST gets
/// 403: it cannot carry a valid CSRF token either).
async fn require_session(State(c): State<Console>, req: Request, next: Next) -> Response {
    if c.keys.is_none() {
        return layout::disabled().into_response();
    }
    if c.session(req.headers()).is_some() {
        return next.run(req).await;
    }
    if req.method() == axum::http::Method::GET || req.method() == axum::http::Method::HEAD {
        return redirect("/console/login");
    }
    forbidden("You are not logged in (or your session expired): log in again.")
}

async fn not_found(session: auth::Authed) -> Response {
    layout::error_page(&session, StatusCode::NOT_FOUND, "No such console page.")
}

/// A 303 to `to` (a path under `/console`).
pub(crate) fn redirect(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_string())]).into_response()
}

/// A 403 page (a refused POST).
pub(crate) fn forbidden(why: &str) -> Response {
    (StatusCode::FORBIDDEN, layout::bare_page("Refused", why)).into_response()
}

/// Whether the request reached us over HTTPS (an ingress that terminates
/// TLS says so in `X-Forwarded-Proto`): the cookie is then `Secure`.
pub(crate) fn over_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}
