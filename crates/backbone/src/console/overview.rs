//! The overview: consumers, held messages, pending events, parked dead
//! letters by issue, the targets' state and the newest activity.

use axum::extract::State;
use axum::response::Response;
use maud::{html, Markup};

use super::auth::Authed;
use super::dead_letters::group_table;
use super::layout::{self, Section};
use super::targets::{outcome_badge, record_link, state_table};
use super::Console;
use crate::store::dlq_groups::GroupFilter;

/// Issues shown on the overview (the dead-letter page pages on).
const TOP_GROUPS: i64 = 8;
/// Audit rows looked through, and shown, for the recent activity.
const ACTIVITY_WINDOW: i64 = 500;
const ACTIVITY_SHOWN: i64 = 15;

pub async fn page(State(c): State<Console>, a: Authed) -> Response {
    let groups = c
        .store
        .dead_letter_groups(&GroupFilter::default(), 0, TOP_GROUPS)
        .await;
    let pending = c.store.pending_records(5).await;
    let activity = c
        .store
        .recent_activity("", ACTIVITY_WINDOW, ACTIVITY_SHOWN)
        .await;
    let snaps = c.health.as_ref().map(|h| h.targets()).unwrap_or_default();
    let body = html! {
        div.grid {
            section aria-labelledby="consumers" {
                h2 #consumers { "Consumers" }
                (consumers(&c))
            }
            section aria-labelledby="pending" {
                h2 #pending { "Pending events (waiting for an earlier version)" }
                @match &pending {
                    Ok((list, total)) if *total > 0 => {
                        p { (total) " record(s) have pending events; the oldest:" }
                        ul { @for p in list {
                            li {
                                a href={"/console/records/" (layout::enc(&p.record_type)) "/" (layout::enc(&p.record_id))} {
                                    (p.record_type) "/" (p.record_id)
                                }
                                " — " (p.pending) " waiting since " (layout::when(&p.oldest_received_at))
                                @if p.gap_reported { " " span.badge.bad { "gap reported" } }
                            }
                        } }
                    }
                    Ok(_) => p.muted { "None." },
                    Err(e) => p.flash.error role="alert" { "Could not read pending events: " (e) },
                }
            }
        }
        section aria-labelledby="dl" {
            h2 #dl { "Open dead letters by issue" }
            @match &groups {
                Ok(g) => {
                    p { (g.total_dead_letters) " open dead letter(s) in " (g.total_groups) " issue(s). "
                        a href="/console/dead-letters" { "All issues and filters" } }
                    (group_table(&g.groups, &GroupFilter::default()))
                }
                Err(e) => p.flash.error role="alert" { "Could not read dead letters: " (e) },
            }
        }
        section aria-labelledby="targets" {
            h2 #targets { "Targets" }
            (state_table(&c, &snaps))
        }
        section aria-labelledby="activity" {
            h2 #activity { "Recent activity" }
            @match &activity {
                Ok(rows) if !rows.is_empty() => {
                    table {
                        thead { tr {
                            th scope="col" { "When" } th scope="col" { "Stage" }
                            th scope="col" { "Outcome" } th scope="col" { "Record" }
                        } }
                        tbody { @for r in rows { tr {
                            td { (layout::when(&r.at)) }
                            td { (r.stage) }
                            td { (outcome_badge(&r.outcome)) }
                            td { (record_link(r)) }
                        } } }
                    }
                }
                Ok(_) => p.muted { "Nothing yet." },
                Err(e) => p.flash.error role="alert" { "Could not read the audit log: " (e) },
            }
        }
    };
    layout::page(&a, Section::Overview, "Overview", body)
}

fn consumers(c: &Console) -> Markup {
    let Some(h) = &c.health else {
        return html! { p.muted { "No consumer runs in this process." } };
    };
    let consumers = h.snapshot();
    html! {
        @if let Some(holding) = h.holding() {
            p.flash.error role="alert" { "Messages held for an outage: " (holding) }
        } @else {
            p { span.badge.ok { "nothing held" } }
        }
        @if let Err(why) = h.broker() {
            p.flash.error role="alert" { "Pub/Sub does not answer: " (why) }
        }
        table {
            thead { tr { th scope="col" { "Consumer" } th scope="col" { "State" } th scope="col" { "Detail" } } }
            tbody { @for (label, s) in &consumers { tr {
                th scope="row" { (label) }
                td { @if s.up { span.badge.ok { "up" } } @else { span.badge.bad { "down" } } }
                td { (s.detail) }
            } } }
        }
    }
}
