//! Dead letters as issues: the grouped page (filters, paged), one issue's
//! or one filter's dead letters (paged by id, with a selection), and one
//! dead letter's envelope, attempts and error history.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, NaiveDateTime, Utc};
use maud::{html, Markup};
use serde::Deserialize;

use super::auth::Authed;
use super::layout::{self, capped, csrf_field, enc, when, Section};
use super::Console;
use crate::store::dead_letters::{DeadLetter, DlqFilter};
use crate::store::dlq_groups::{DlqGroup, GroupFilter, GroupKey};

/// Issues per page.
const GROUPS_PAGE: i64 = 50;
/// Dead letters per page of a list.
const LIST_PAGE: i64 = 100;
/// Characters of a dead letter's data shown.
const DATA_SHOWN: usize = 8192;

/// The query of the dead-letter pages; also the hidden fields of their
/// action forms (the same names).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Params {
    pub stage: Option<String>,
    pub reason: Option<String>,
    pub record_type: Option<String>,
    pub record_id: Option<String>,
    /// `YYYY-MM-DDTHH:MM` (UTC, as a `datetime-local` input sends) or RFC 3339.
    pub since: Option<String>,
    pub until: Option<String>,
    /// Present (any value) when the list is one issue's.
    pub group: Option<String>,
    pub g_stage: Option<String>,
    pub g_reason: Option<String>,
    pub g_status: Option<String>,
    pub g_msg: Option<String>,
    pub page: Option<i64>,
    pub after_id: Option<i64>,
}

fn blank_none(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

/// A time as a `datetime-local` input or RFC 3339 gives it (UTC).
pub fn parse_time(v: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(v) {
        return Ok(t.with_timezone(&Utc));
    }
    ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(v, f).ok())
        .map(|t| t.and_utc())
        .ok_or_else(|| format!("`{v}` is not a time (e.g. 2026-03-13T20:00, UTC)"))
}

impl Params {
    pub fn filter(&self) -> Result<GroupFilter, String> {
        let time = |v: &Option<String>| blank_none(v).map(|v| parse_time(&v)).transpose();
        Ok(GroupFilter {
            stage: blank_none(&self.stage),
            reason: blank_none(&self.reason),
            record_type: blank_none(&self.record_type),
            record_id: blank_none(&self.record_id),
            since: time(&self.since)?,
            until: time(&self.until)?,
        })
    }

    pub fn key(&self) -> Option<GroupKey> {
        self.group.as_ref()?;
        Some(GroupKey {
            stage: self.g_stage.clone().unwrap_or_default(),
            reason: self.g_reason.clone().unwrap_or_default(),
            status: self.g_status.clone().unwrap_or_default(),
            message: self.g_msg.clone().unwrap_or_default(),
        })
    }
}

/// The filter and issue as query pairs (links) — the same names as [`Params`].
fn pairs(f: &GroupFilter, key: Option<&GroupKey>) -> Vec<(&'static str, String)> {
    let mut p = Vec::new();
    let opt = [
        ("stage", &f.stage),
        ("reason", &f.reason),
        ("record_type", &f.record_type),
        ("record_id", &f.record_id),
    ];
    for (k, v) in opt {
        if let Some(v) = v {
            p.push((k, v.clone()));
        }
    }
    if let Some(t) = f.since {
        p.push(("since", t.format("%Y-%m-%dT%H:%M:%S").to_string()));
    }
    if let Some(t) = f.until {
        p.push(("until", t.format("%Y-%m-%dT%H:%M:%S").to_string()));
    }
    if let Some(k) = key {
        p.push(("group", "1".into()));
        p.push(("g_stage", k.stage.clone()));
        p.push(("g_reason", k.reason.clone()));
        p.push(("g_status", k.status.clone()));
        p.push(("g_msg", k.message.clone()));
    }
    p
}

fn query_string(pairs: &[(&str, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Hidden fields that carry a filter and an issue into an action's form.
pub fn selection_fields(f: &GroupFilter, key: Option<&GroupKey>) -> Markup {
    html! { @for (k, v) in pairs(f, key) { input type="hidden" name=(k) value=(v); } }
}

/// The NetSuite error code in an error (`… answered HTTP 400 USER_ERROR: …`).
pub fn error_code(message: &str) -> Option<&str> {
    let rest = &message[message.find("answered HTTP ")? + 14..];
    let rest = rest.get(3..)?.strip_prefix(' ')?;
    let code: &str = rest
        .split([':', ' '])
        .next()
        .filter(|c| c.len() > 2 && c.chars().all(|ch| ch.is_ascii_uppercase() || ch == '_'))?;
    Some(code)
}

fn bad_query(a: &Authed, e: impl std::fmt::Display) -> Response {
    layout::error_page(a, StatusCode::BAD_REQUEST, &e.to_string())
}

pub async fn groups(
    State(c): State<Console>,
    a: Authed,
    q: Result<Query<Params>, QueryRejection>,
) -> Response {
    let Ok(Query(p)) = q.map_err(|e| e.body_text()) else {
        return bad_query(&a, "The page's query is not understood.");
    };
    let f = match p.filter() {
        Ok(f) => f,
        Err(e) => return bad_query(&a, e),
    };
    let page = p.page.unwrap_or(0).max(0);
    let result = c
        .store
        .dead_letter_groups(&f, page * GROUPS_PAGE, GROUPS_PAGE)
        .await;
    let body = html! {
        (filter_form(&p))
        @match &result {
            Ok(g) => {
                p { (g.total_dead_letters) " open dead letter(s) in " (g.total_groups) " issue(s) match. "
                    a href={"/console/dead-letters/list?" (query_string(&pairs(&f, None)))} { "List them all" } }
                (group_table(&g.groups, &f))
                nav.pager aria-label="Pages" {
                    @if page > 0 {
                        a href={"/console/dead-letters?" (query_string(&pairs(&f, None))) "&page=" (page - 1)} { "← Newer issues" }
                    }
                    @if (page + 1) * GROUPS_PAGE < g.total_groups {
                        a href={"/console/dead-letters?" (query_string(&pairs(&f, None))) "&page=" (page + 1)} { "Older issues →" }
                    }
                }
            }
            Err(e) => p.flash.error role="alert" { "Could not read dead letters: " (e) },
        }
    };
    layout::page(&a, Section::DeadLetters, "Dead letters by issue", body)
}

fn filter_form(p: &Params) -> Markup {
    let v = |o: &Option<String>| o.clone().unwrap_or_default();
    html! {
        form.filters method="get" action="/console/dead-letters" aria-label="Filter dead letters" {
            label { "Stage (target)"
                select name="stage" {
                    option value="" { "any" }
                    @for s in ["merge", "deliver.netsuite", "deliver.suitex"] {
                        option value=(s) selected[p.stage.as_deref() == Some(s)] { (s) }
                    }
                }
            }
            label { "Reason"
                select name="reason" {
                    option value="" { "any" }
                    @for r in ["invalid", "permanent", "exhausted", "gap"] {
                        option value=(r) selected[p.reason.as_deref() == Some(r)] { (r) }
                    }
                }
            }
            label { "Record type" input type="text" name="record_type" value=(v(&p.record_type)); }
            label { "Record id" input type="text" name="record_id" value=(v(&p.record_id)); }
            label { "Parked since (UTC)" input type="datetime-local" name="since" value=(v(&p.since)); }
            label { "Parked before (UTC)" input type="datetime-local" name="until" value=(v(&p.until)); }
            button type="submit" { "Filter" }
            a href="/console/dead-letters" { "Clear" }
        }
    }
}

/// The issues as a table, each linking to its dead letters.
pub fn group_table(groups: &[DlqGroup], f: &GroupFilter) -> Markup {
    html! {
        @if groups.is_empty() {
            p.muted { "No open dead letter." }
        } @else {
            table.groups {
                thead { tr {
                    th scope="col" { "Stage" } th scope="col" { "Reason" }
                    th scope="col" { "Status" } th scope="col" { "Error code" }
                    th scope="col" { "Error (digits and ids replaced)" }
                    th scope="col" class="num" { "Count" } th scope="col" class="num" { "Records" }
                    th scope="col" { "First seen" } th scope="col" { "Last seen" }
                } }
                tbody { @for g in groups {
                    @let href = format!("/console/dead-letters/list?{}", query_string(&pairs(f, Some(&g.key))));
                    tr {
                        td { (g.key.stage) }
                        td { (g.key.reason) }
                        td { @if g.key.status.is_empty() { span.muted { "–" } } @else { (g.key.status) } }
                        td { (g.sample.as_deref().and_then(error_code).unwrap_or("–")) }
                        td.msg { a href=(href) { @if g.key.message.is_empty() { "(no error recorded)" } @else { (g.key.message) } } }
                        td.num { (g.count) }
                        td.num { (g.records) }
                        td { (when(&g.first_seen)) }
                        td { (when(&g.last_seen)) }
                    }
                } }
            }
        }
    }
}

pub async fn list(
    State(c): State<Console>,
    a: Authed,
    q: Result<Query<Params>, QueryRejection>,
) -> Response {
    let Ok(Query(p)) = q else {
        return bad_query(&a, "The page's query is not understood.");
    };
    let f = match p.filter() {
        Ok(f) => f,
        Err(e) => return bad_query(&a, e),
    };
    let key = p.key();
    let ids = c
        .store
        .dead_letter_group_ids(&f, key.as_ref(), p.after_id, LIST_PAGE)
        .await;
    let rows = match ids {
        Ok(ids) if ids.is_empty() => Ok(Vec::new()),
        Ok(ids) => {
            let by_id = DlqFilter {
                ids,
                ..Default::default()
            };
            c.store.dead_letter_page(&by_id, None, LIST_PAGE).await
        }
        Err(e) => Err(e),
    };
    let here = format!(
        "/console/dead-letters/list?{}",
        query_string(&pairs(&f, key.as_ref()))
    );
    let body = html! {
        @if let Some(k) = &key {
            dl.attrs {
                dt { "Stage" } dd { (k.stage) }
                dt { "Reason" } dd { (k.reason) }
                dt { "Status" } dd { @if k.status.is_empty() { "–" } @else { (k.status) } }
                dt { "Error" } dd { code { (k.message) } }
            }
        }
        p { a href={"/console/dead-letters?" (query_string(&pairs(&f, None)))} { "← Back to the issues" } }
        section aria-labelledby="all" {
            h2 #all { @if key.is_some() { "The whole issue" } @else { "Everything this filter selects" } }
            form.inline method="post" action="/console/actions/replay" {
                (csrf_field(&a))
                input type="hidden" name="back" value=(here);
                (selection_fields(&f, key.as_ref()))
                button #preview-all type="submit" formaction="/console/actions/preview" class="secondary" { "Preview the replay" }
                button #replay-all type="submit" { "Replay them all" }
                label { "Reason to discard" input type="text" name="reason_text"; }
                button #discard-all .danger type="submit" formaction="/console/actions/discard" { "Discard them all" }
            }
        }
        @match &rows {
            Ok(rows) => {
                (selection_form(&a, &here, rows))
                @if rows.len() as i64 == LIST_PAGE {
                    @if let Some(last) = rows.last() {
                        nav.pager aria-label="Pages" { a href={(here) "&after_id=" (last.id)} { "Next page →" } }
                    }
                }
            }
            Err(e) => p.flash.error role="alert" { "Could not read dead letters: " (e) },
        }
    };
    layout::page(&a, Section::DeadLetters, "Dead letters", body)
}

/// One page of dead letters, each with a box to tick for the selection.
fn selection_form(a: &Authed, here: &str, rows: &[DeadLetter]) -> Markup {
    html! {
        form method="post" action="/console/actions/replay" {
            (csrf_field(a))
            input type="hidden" name="back" value=(here);
            table.dead-letters {
                thead { tr {
                    th scope="col" { "Select" } th scope="col" { "Id" } th scope="col" { "Record" }
                    th scope="col" { "Stage" } th scope="col" { "Reason" } th scope="col" class="num" { "Attempts" }
                    th scope="col" { "Parked" } th scope="col" { "Last error" }
                } }
                tbody { @for d in rows { tr {
                    td { input type="checkbox" name="id" value=(d.id) id={"sel-" (d.id)} aria-label={"Select dead letter " (d.id)}; }
                    td { a href={"/console/dead-letters/" (d.id)} { (d.id) } }
                    td { @match (&d.record_type, &d.record_id) {
                        (Some(t), Some(i)) => a href={"/console/records/" (enc(t)) "/" (enc(i))} { (t) "/" (i) },
                        _ => span.muted { "–" },
                    } }
                    td { (d.stage) } td { (d.reason) } td.num { (d.attempts) }
                    td { (when(&d.parked_at)) }
                    td.msg { (capped(d.last_error.as_deref().unwrap_or(""), 240)) }
                } } }
            }
            @if rows.is_empty() { p.muted { "No open dead letter matches." } } @else {
                div.inline {
                    button #replay-selected type="submit" { "Replay the selected" }
                    " "
                    button #preview-selected type="submit" formaction="/console/actions/preview" class="secondary" { "Preview the selected" }
                    " "
                    label { "Reason to discard" input #discard-selected-reason type="text" name="reason_text"; }
                    button #discard-selected .danger type="submit" formaction="/console/actions/discard" { "Discard the selected" }
                }
            }
        }
    }
}

pub async fn detail(State(c): State<Console>, a: Authed, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<i64>() else {
        return bad_query(&a, "A dead letter's id is a number.");
    };
    let dl = match c.store.dead_letter(id).await {
        Ok(Some(d)) => d,
        Ok(None) => {
            return layout::error_page(
                &a,
                StatusCode::NOT_FOUND,
                &format!("No dead letter {id} (archived, or never parked)."),
            )
        }
        Err(e) => return layout::error_page(&a, StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    let mut attrs: Vec<(&String, &String)> = dl.attributes.iter().collect();
    attrs.sort();
    let data = String::from_utf8_lossy(&dl.data);
    let back = format!("/console/dead-letters/{id}");
    let body = html! {
        dl.attrs {
            dt { "Stage" } dd { (dl.stage) }
            dt { "Reason" } dd { (dl.reason) }
            dt { "Record" } dd { @match (&dl.record_type, &dl.record_id) {
                (Some(t), Some(i)) => a href={"/console/records/" (enc(t)) "/" (enc(i))} { (t) "/" (i) },
                _ => "–",
            } }
            dt { "Attempts" } dd { (dl.attempts) }
            dt { "Parked" } dd { (when(&dl.parked_at)) }
            dt { "Replayed" } dd { (dl.replay_count) " time(s)" @if let Some(r) = &dl.replayed_at { ", last " (when(r)) } }
            dt { "Fingerprint" } dd { code { (dl.fingerprint.as_deref().unwrap_or("–")) } }
            dt { "Origin message" } dd { code { (dl.origin_message_id.as_deref().unwrap_or("–")) } }
            dt { "Ordering key" } dd { code { (dl.ordering_key.as_deref().unwrap_or("–")) } }
        }
        @if dl.replayed_at.is_none() {
            form.inline method="post" action="/console/actions/replay" {
                (csrf_field(&a))
                input type="hidden" name="back" value=(back);
                input type="hidden" name="id" value=(id);
                button type="submit" { "Replay this dead letter" }
                label { "Reason to discard" input type="text" name="reason_text"; }
                button.danger type="submit" formaction="/console/actions/discard" { "Discard it" }
            }
        }
        h2 { "Last error" }
        pre { (dl.last_error.as_deref().unwrap_or("(none)")) }
        h2 { "Error history (one line per failed execution)" }
        @if dl.errors.is_empty() { p.muted { "None recorded." } } @else {
            ol { @for e in &dl.errors { li { code { (e) } } } }
        }
        h2 { "Envelope attributes" }
        table {
            thead { tr { th scope="col" { "Attribute" } th scope="col" { "Value" } } }
            tbody { @for (k, v) in attrs { tr { th scope="row" { (k) } td.msg { (capped(v, 2000)) } } } }
        }
        h2 { "Data (" (dl.data.len()) " bytes, as text)" }
        pre { (capped(&data, DATA_SHOWN)) }
    };
    layout::page(&a, Section::DeadLetters, &format!("Dead letter {id}"), body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netsuite_error_codes_are_found_in_errors() {
        let m = "netsuite answered HTTP 400 USER_ERROR: Invalid value";
        assert_eq!(error_code(m), Some("USER_ERROR"));
        assert_eq!(
            error_code("netsuite answered HTTP 401 INVALID_LOGIN_ATTEMPT (the target refused our credentials)"),
            Some("INVALID_LOGIN_ATTEMPT")
        );
        assert_eq!(error_code("suitex answered HTTP 502: bad gateway"), None);
        assert_eq!(error_code("merge failed"), None);
        assert_eq!(error_code("x answered HTTP 4"), None);
    }

    #[test]
    fn times_are_read_as_forms_send_them() {
        let t = parse_time("2026-03-13T20:00").expect("datetime-local");
        assert_eq!(t.to_rfc3339(), "2026-03-13T20:00:00+00:00");
        assert!(parse_time("2026-03-13T20:00:00Z").is_ok());
        assert!(parse_time("yesterday").is_err());
    }
}
