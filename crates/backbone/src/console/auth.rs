//! Logging in and out, and the two extractors every console handler takes:
//! [`Authed`] (a valid session) and [`PostForm`] (a valid session and the
//! form's CSRF token checked).

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::html;

// Re-exported: the page handlers take `auth::Authed` with `auth::PostForm`.
pub use super::authed::Authed;
use super::form::{Fields, BODY_MAX};
use super::layout;
use super::session::{self, Keys};
use super::{forbidden, over_https, redirect, Console};

impl FromRequestParts<Console> for Authed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, c: &Console) -> Result<Self, Response> {
        authed(c, &parts.headers).ok_or_else(|| redirect("/console/login"))
    }
}

fn authed(c: &Console, headers: &HeaderMap) -> Option<Authed> {
    let keys = c.keys.as_ref()?;
    let session = c.session(headers)?;
    let csrf = keys.csrf(&session);
    Some(Authed {
        session,
        csrf,
        flash: layout::flash_of(headers),
    })
}

/// A POST with a valid session and its CSRF token: anything else is 403.
pub struct PostForm {
    pub authed: Authed,
    pub fields: Fields,
}

impl FromRequest<Console> for PostForm {
    type Rejection = Response;

    async fn from_request(req: Request, c: &Console) -> Result<Self, Response> {
        let Some(authed) = authed(c, req.headers()) else {
            return Err(forbidden(
                "You are not logged in (or your session expired): log in again.",
            ));
        };
        let body = axum::body::to_bytes(req.into_body(), BODY_MAX)
            .await
            .map_err(|_| forbidden("The form is too large."))?;
        let fields = Fields::parse(&body);
        let ok = match (&c.keys, fields.get("csrf")) {
            (Some(keys), Some(token)) => keys.csrf_matches(&authed.session, &token),
            _ => false,
        };
        if !ok {
            return Err(forbidden(
                "The form's CSRF token is missing or wrong: reload the page and try again.",
            ));
        }
        Ok(PostForm { authed, fields })
    }
}

pub async fn login_page(State(c): State<Console>) -> Response {
    if c.keys.is_none() {
        return layout::disabled().into_response();
    }
    login_form(StatusCode::OK, None)
}

fn login_form(status: StatusCode, error: Option<&str>) -> Response {
    let body = html! {
        h1 { "Log in to the event-backbone console" }
        @if let Some(e) = error {
            p.flash.error role="alert" { (e) }
        }
        form.login method="post" action="/console/login" {
            p {
                label for="token" { "Admin token" }
                input #token type="password" name="token" autocomplete="current-password" required autofocus;
            }
            p {
                label for="operator" { "Your name (recorded with the actions you take)" }
                input #operator type="text" name="operator" maxlength=(session::OPERATOR_MAX) autocomplete="username";
            }
            p { button type="submit" { "Log in" } }
        }
    };
    (status, layout::bare_page("Log in", body)).into_response()
}

pub async fn login(State(c): State<Console>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(keys) = c.keys.as_ref() else {
        return layout::disabled().into_response();
    };
    let fields = Fields::parse(&body);
    let token = fields.get("token").unwrap_or_default();
    if !keys.token_matches(&token) {
        tracing::warn!("A console login was refused: wrong admin token.");
        return login_form(
            StatusCode::UNAUTHORIZED,
            Some("That is not the admin token."),
        );
    }
    start(keys, &fields, &headers)
}

fn start(keys: &Keys, fields: &Fields, headers: &HeaderMap) -> Response {
    let operator = fields.get("operator").unwrap_or_default();
    let s = keys.issue(&operator, chrono::Utc::now().timestamp());
    tracing::info!(operator = %s.operator, "An operator logged in to the console.");
    let mut r = redirect("/console");
    if let Ok(v) = session::set_cookie(&s, over_https(headers)).parse() {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

pub async fn logout(State(_c): State<Console>, headers: HeaderMap, form: PostForm) -> Response {
    tracing::info!(operator = %form.authed.session.operator, "An operator logged out of the console.");
    let mut r = redirect("/console/login");
    if let Ok(v) = session::clear_cookie(over_https(&headers)).parse() {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}
