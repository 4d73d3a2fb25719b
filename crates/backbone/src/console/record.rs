//! A record's timeline: its state at a chosen sequence (the history
//! module's replay), every field with the event that set it, its conflicts
//! and where each target stands (`explain`), the deliveries' acknowledged
//! positions, the merged versions and the events with their audit trail.
//! Nothing here folds or explains on its own: it renders what
//! `crates/backbone/src/history` and `crates/backbone/src/explain` answer the CLI and the admin API.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{html, Markup};
use serde::Deserialize;

use super::auth::Authed;
use super::layout::{self, capped, enc, when, Section};
use super::targets::outcome_badge;
use super::{redirect, Console};
use crate::explain::{self, DeliveryStatus, Explanation};
use crate::history::{self, ListQuery};
use crate::model::raw_event::Source;

/// Events per page of the timeline.
const EVENTS_PAGE: u32 = 50;
/// Merged versions shown.
const MERGED_SHOWN: i64 = 100;

#[derive(Debug, Default, Deserialize)]
pub struct FindParams {
    record_type: Option<String>,
    record_id: Option<String>,
}

/// The record finder: a form, or a redirect to the record asked for.
pub async fn find(a: Authed, q: Result<Query<FindParams>, QueryRejection>) -> Response {
    let p = q.map(|Query(p)| p).unwrap_or_default();
    if let (Some(t), Some(i)) = (
        p.record_type.filter(|v| !v.trim().is_empty()),
        p.record_id.filter(|v| !v.trim().is_empty()),
    ) {
        return redirect(&format!(
            "/console/records/{}/{}",
            enc(t.trim()),
            enc(i.trim())
        ));
    }
    let body = html! {
        form.filters method="get" action="/console/records" aria-label="Open a record" {
            label { "Record type" input type="text" name="record_type" required placeholder="project"; }
            label { "Record id" input type="text" name="record_id" required placeholder="42"; }
            button type="submit" { "Open the record" }
        }
    };
    layout::page(&a, Section::Records, "Records", body)
}

#[derive(Debug, Default, Deserialize)]
pub struct TimelineParams {
    at_seq: Option<i64>,
    before_seq: Option<i64>,
}

pub async fn timeline(
    State(c): State<Console>,
    a: Authed,
    Path((rt, rid)): Path<(String, String)>,
    q: Result<Query<TimelineParams>, QueryRejection>,
) -> Response {
    let Ok(Query(p)) = q else {
        return layout::error_page(
            &a,
            StatusCode::BAD_REQUEST,
            "`at_seq` and `before_seq` are numbers.",
        );
    };
    let x = match explain::explain_record(&c.store, &c.policy, &rt, &rid, None).await {
        Ok(x) => x,
        Err(e) if e.is_not_found() => {
            return layout::error_page(&a, StatusCode::NOT_FOUND, &e.to_string())
        }
        Err(e) => return layout::error_page(&a, StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    let at = p.at_seq.filter(|s| *s >= 1);
    let state = history::replay(&c.store, &c.policy, &rt, &rid, at).await;
    let events = history::list(
        &c.store,
        &rt,
        &rid,
        &ListQuery {
            limit: EVENTS_PAGE,
            before_seq: p.before_seq,
            ..Default::default()
        },
    )
    .await;
    let merged = c.store.merged_after(&rt, &rid, 0, MERGED_SHOWN).await;
    let mut positions = Vec::new();
    for t in Source::ALL {
        positions.push((t, c.store.delivery_position(t.as_str(), &rt, &rid).await));
    }
    let base = format!("/console/records/{}/{}", enc(&rt), enc(&rid));
    let body = html! {
        p { "Version " strong { (x.version) } ", last sequence " (x.last_seq) ", " (x.events) " event(s)"
            @if x.pending > 0 { ", " span.badge.warn { (x.pending) " pending" } }
            ". Merge policy: " code { (format!("{:?}", x.policy.conflict_policy)) } "." }
        @for w in &x.warnings { p.flash.error role="alert" { (w) } }
        section aria-labelledby="fields" {
            h2 #fields { "Fields, conflicts and deliveries" }
            (fields_table(&x, &base))
        }
        (positions_section(&positions))
        (state_section(&base, at, &state))
        section aria-labelledby="merged" {
            h2 #merged { "Merged versions" }
            @match &merged {
                Ok(rows) if rows.is_empty() => p.muted { "None stored." },
                Ok(rows) => table {
                    thead { tr { th scope="col" class="num" { "Sequence" } th scope="col" class="num" { "Version" }
                        th scope="col" { "Merged event" } th scope="col" { "Payload" } } }
                    tbody { @for m in rows { tr {
                        td.num { (m.sequence_num) } td.num { (m.version) } td { code { (m.event_id) } }
                        td.msg { details { summary { "payload (" (m.payload.len()) " bytes)" } pre { (capped(&m.payload, 4000)) } } }
                    } } }
                },
                Err(e) => p.flash.error role="alert" { (e) },
            }
        }
        section aria-labelledby="events" {
            h2 #events { "Events, newest first" }
            (events_table(&events, &base))
        }
    };
    layout::page(&a, Section::Records, &format!("Record {rt}/{rid}"), body)
}

type Position = Result<Option<crate::store::delivery::DeliveryState>, crate::store::StoreError>;

fn positions_section(positions: &[(crate::model::raw_event::Source, Position)]) -> Markup {
    html! {
    section aria-labelledby="deliveries" {
        h2 #deliveries { "Delivery positions per target" }
        table {
            thead { tr { th scope="col" { "Target" } th scope="col" class="num" { "Acknowledged position (sequence)" }
                th scope="col" class="num" { "Acknowledged version" } th scope="col" class="num" { "Last attempted position" } } }
            tbody { @for (t, pos) in positions { tr {
                th scope="row" { (t) }
                @match pos {
                    Ok(Some(d)) => { td.num { (d.acked) } td.num { (d.acked_version) } td.num { (d.attempted) } }
                    Ok(None) => { td colspan="3" { span.muted { "never delivered to" } } }
                    Err(e) => { td colspan="3" { "could not read: " (e) } }
                }
            } } }
        }
    }
    }
}

fn state_section(
    base: &str,
    at: Option<i64>,
    state: &Result<history::Replayed, history::HistoryError>,
) -> Markup {
    html! {
    section aria-labelledby="state" {
        h2 #state { "State at a sequence" }
        form.inline method="get" action=(base) {
            label { "Sequence (empty: the head)" input type="number" name="at_seq" min="1" value=[at]; }
            button type="submit" { "Show the state" }
        }
        @match state {
            Ok(s) => {
                p { "Version " (s.state.version) " after sequence " (s.last_seq) " (" (s.events_replayed) " event(s) folded)." }
                table {
                    thead { tr { th scope="col" { "Field" } th scope="col" { "Value" } th scope="col" class="num" { "Version" }
                        th scope="col" { "Source" } th scope="col" { "Changed at" } } }
                    tbody { @for (name, f) in &s.state.fields { tr {
                        th scope="row" { (name) } td.msg { (capped(&f.value.to_string(), 400)) }
                        td.num { (f.version) } td { (f.source) }
                        td { (crate::model::fingerprint::format_timestamp(&f.timestamp)) }
                    } } }
                }
            }
            Err(e) => p.flash.error role="alert" { (e) },
        }
    }
    }
}

fn fields_table(x: &Explanation, base: &str) -> Markup {
    html! {
        table.fields {
            thead { tr {
                th scope="col" { "Field" } th scope="col" { "Value" } th scope="col" { "Set by" }
                th scope="col" class="num" { "Conflicts" }
                @for t in Source::ALL { th scope="col" { (t) } }
                th scope="col" { "Why" }
            } }
            tbody { @for (name, f) in &x.fields { tr {
                th scope="row" { (name) }
                td.msg { (capped(&f.value.to_string(), 200)) }
                td { "seq " (f.set_by.sequence_num) " (" (f.set_by.source) ")" }
                td.num { (f.conflicts.len()) }
                @for t in Source::ALL { td { @match f.delivery.get(&t) {
                    Some(d) => (delivery_badge(d.status)),
                    None => "–",
                } } }
                td { a href={(base) "/explain?field=" (enc(name))} aria-label={"Explain " (name)} { "Explain" } }
            } } }
        }
    }
}

fn delivery_badge(s: DeliveryStatus) -> Markup {
    let (class, text) = match s {
        DeliveryStatus::Delivered => ("badge ok", "delivered"),
        DeliveryStatus::NotNeeded => ("badge", "its source"),
        DeliveryStatus::Retrying => ("badge warn", "retrying"),
        DeliveryStatus::DeadLettered => ("badge bad", "dead-lettered"),
        DeliveryStatus::NotDelivered => ("badge warn", "not delivered"),
    };
    html! { span class=(class) { (text) } }
}

fn events_table(page: &Result<history::EventPage, history::HistoryError>, base: &str) -> Markup {
    let page = match page {
        Ok(p) => p,
        Err(e) => return html! { p.flash.error role="alert" { (e) } },
    };
    html! {
        @if !page.archived.is_empty() { p.muted { "Older events are archived (see `archive restore`)." } }
        table.events {
            thead { tr {
                th scope="col" class="num" { "Sequence" } th scope="col" { "Timestamp" } th scope="col" { "Source" }
                th scope="col" class="num" { "Base version" } th scope="col" { "Changes" } th scope="col" { "Audit" }
                th scope="col" { "State" }
            } }
            tbody { @for e in &page.events { tr {
                td.num { (e.event.sequence_num) }
                td { (when(&e.event.timestamp)) }
                td { (e.event.source) }
                td.num { (e.event.base_version) }
                td.msg { (capped(&e.event.changes.to_string(), 300)) }
                td { @for r in &e.audit { (r.stage) ": " (outcome_badge(&r.outcome)) " " } }
                td { a href={(base) "?at_seq=" (e.event.sequence_num) "#state"} { "state here" } }
            } } }
        }
        @if let Some(next) = page.next_before_seq {
            nav.pager aria-label="Pages" { a href={(base) "?before_seq=" (next) "#events"} { "Older events →" } }
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct ExplainParams {
    field: Option<String>,
}

/// One field's explanation, as `event-backbone explain` prints it, with its
/// conflicts as a table.
pub async fn explain(
    State(c): State<Console>,
    a: Authed,
    Path((rt, rid)): Path<(String, String)>,
    q: Result<Query<ExplainParams>, QueryRejection>,
) -> Response {
    let field = q
        .ok()
        .and_then(|Query(p)| p.field)
        .filter(|f| !f.is_empty());
    let x = match explain::explain_record(&c.store, &c.policy, &rt, &rid, field.as_deref()).await {
        Ok(x) => x,
        Err(e) if e.is_not_found() => {
            return layout::error_page(&a, StatusCode::NOT_FOUND, &e.to_string())
        }
        Err(e) => return layout::error_page(&a, StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    let base = format!("/console/records/{}/{}", enc(&rt), enc(&rid));
    let title = match &field {
        Some(f) => format!("Why {rt}/{rid} has its {f}"),
        None => format!("Why {rt}/{rid} looks as it does"),
    };
    let body = html! {
        p { a href=(base) { "← Back to the record" } }
        @for (name, f) in &x.fields {
            section aria-labelledby={"c-" (name)} {
                h2 #{"c-" (name)} { "Conflicts on " (name) }
                @if f.conflicts.is_empty() { p.muted { "None: no other value ever competed." } } @else {
                    table {
                        thead { tr { th scope="col" class="num" { "Sequence" } th scope="col" { "Rule" }
                            th scope="col" { "Winner" } th scope="col" { "Loser" } th scope="col" { "Why" } } }
                        tbody { @for cv in &f.conflicts { tr {
                            td.num { (cv.sequence_num) }
                            td { (format!("{:?}", cv.rule)) }
                            td { (cv.winner.role) " " (cv.winner.event.source) " seq " (cv.winner.event.sequence_num) ": " code { (capped(&cv.winner.value.to_string(), 120)) } }
                            td { (cv.loser.role) " " (cv.loser.event.source) " seq " (cv.loser.event.sequence_num) ": " code { (capped(&cv.loser.value.to_string(), 120)) } }
                            td { (cv.why) }
                        } } }
                    }
                }
            }
        }
        h2 { "The explanation" }
        pre.explain { (explain::text::render(&x)) }
    };
    layout::page(&a, Section::Records, &title, body)
}
