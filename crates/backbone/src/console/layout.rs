//! The page shell every console page shares (navigation, flash message,
//! logout), the stylesheet, and small rendering helpers.

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};

use super::authed::Authed;
use super::session;

/// The console's only stylesheet, compiled in (no CDN, no web font).
const STYLESHEET: &str = include_str!("static/console.css");

/// The cookie a flash message rides on across the redirect after an action.
const FLASH: &str = "backbone_console_flash";

pub async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "private, max-age=3600"),
        ],
        STYLESHEET,
    )
        .into_response()
}

/// The sections of the navigation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Overview,
    DeadLetters,
    Records,
    Targets,
}

const NAV: [(Section, &str, &str); 4] = [
    (Section::Overview, "/console", "Overview"),
    (
        Section::DeadLetters,
        "/console/dead-letters",
        "Dead letters",
    ),
    (Section::Records, "/console/records", "Records"),
    (Section::Targets, "/console/targets", "Targets"),
];

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · event-backbone console" }
            link rel="stylesheet" href="/console/static/console.css";
        }
    }
}

/// A page for a logged-in operator.
pub fn page(a: &Authed, section: Section, title: &str, body: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                a.skip href="#main" { "Skip to content" }
                header {
                    nav aria-label="Console" {
                        span.brand { "event-backbone" }
                        ul {
                            @for (s, href, label) in NAV {
                                li {
                                    @if s == section {
                                        a href=(href) aria-current="page" { (label) }
                                    } @else {
                                        a href=(href) { (label) }
                                    }
                                }
                            }
                        }
                        form.logout method="post" action="/console/logout" {
                            (csrf_field(a))
                            span { "Logged in as " strong { (a.session.operator) } }
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main #main {
                    @if let Some(f) = &a.flash {
                        p.flash role="status" { (f) }
                    }
                    h1 { (title) }
                    (body)
                }
            }
        }
    };
    let mut r = Html(markup.into_string()).into_response();
    if a.flash.is_some() {
        if let Ok(v) =
            format!("{FLASH}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0").parse()
        {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    r
}

/// A page outside a session (login, refusals).
pub fn bare_page(title: &str, body: impl maud::Render) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                (head(title))
                body { main #main.narrow { (body) } }
            }
        }
        .into_string(),
    )
}

/// What every console URL answers when no admin token is configured.
pub fn disabled() -> (StatusCode, Html<String>) {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        bare_page(
            "Console disabled",
            html! {
                h1 { "The console is disabled" }
                p { "No admin token is configured (" code { "http.admin_token" } "): the console, like the admin API, needs one to log in with." }
            },
        ),
    )
}

/// An error inside the console's frame.
pub fn error_page(a: &Authed, status: StatusCode, message: &str) -> Response {
    let mut r = page(
        a,
        Section::Overview,
        "Something went wrong",
        html! { p.flash.error role="alert" { (message) } },
    );
    *r.status_mut() = status;
    r
}

/// The hidden CSRF field of a POST form.
pub fn csrf_field(a: &Authed) -> Markup {
    html! { input type="hidden" name="csrf" value=(a.csrf); }
}

/// A 303 to `to` that leaves `message` for the next page.
pub fn redirect_with_flash(to: &str, message: &str) -> Response {
    let mut r = super::redirect(to);
    let value: String = url::form_urlencoded::byte_serialize(message.as_bytes()).collect();
    let cookie = format!("{FLASH}={value}; Path=/console; HttpOnly; SameSite=Strict; Max-Age=60");
    if let Ok(v) = cookie.parse() {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

/// The flash message a request carries, if any.
pub fn flash_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|h| session::cookie_value(h, FLASH))
        .map(|v| {
            url::form_urlencoded::parse(format!("m={v}").as_bytes())
                .map(|(_, v)| v.into_owned())
                .next()
                .unwrap_or_default()
        })
        .filter(|m| !m.is_empty())
        .map(|m| m.chars().take(500).collect())
}

/// Text shown whole up to `max` characters, then cut with a note.
pub fn capped(text: &str, max: usize) -> Markup {
    let count = text.chars().count();
    if count <= max {
        return html! { (text) };
    }
    let head: String = text.chars().take(max).collect();
    html! { (head) "\n… (" (count - max) " more characters not shown)" }
}

/// A timestamp as stored (RFC 3339) shortened for a table cell.
pub fn when(ts: &str) -> Markup {
    let short = ts.get(..19).unwrap_or(ts).replace('T', " ");
    html! { time datetime=(ts) { (short) } }
}

/// A URL query value, percent-encoded.
pub fn enc(v: &str) -> String {
    url::form_urlencoded::byte_serialize(v.as_bytes()).collect()
}
