//! The targets page: each delivery target's pacing (limit, in flight,
//! held), circuit and its cause, account slots, and its last answers — the
//! live state `/readyz` shows, read from this process — with the pause,
//! resume and resync controls.

use axum::extract::State;
use axum::response::Response;
use maud::{html, Markup};

use super::auth::Authed;
use super::layout::{self, csrf_field, Section};
use super::Console;
use crate::model::raw_event::Source;
use crate::stages::deliver::pacing::TargetSnapshot;
use crate::stages::deliver::stage_name;
use crate::store::activity::Activity;

/// Audit rows looked through for the last answers.
const ANSWER_WINDOW: i64 = 5000;
/// Answers shown per target.
const ANSWERS: usize = 8;

pub async fn page(State(c): State<Console>, a: Authed) -> Response {
    let snaps = c.health.as_ref().map(|h| h.targets()).unwrap_or_default();
    let answers = c
        .store
        .recent_activity("deliver.", ANSWER_WINDOW, 200)
        .await;
    let body = html! {
        (state_table(&c, &snaps))
        @for t in Source::ALL {
            @let stage = stage_name(t);
            section aria-labelledby={"answers-" (t)} {
                h2 #{"answers-" (t)} { "Last answers of " (t) }
                @match &answers {
                    Ok(rows) => (answer_table(rows.iter().filter(|r| r.stage == stage).take(ANSWERS))),
                    Err(e) => p.flash.error role="alert" { "The audit log could not be read: " (e) },
                }
                (controls(&a, t.as_str()))
            }
        }
    };
    layout::page(&a, Section::Targets, "Targets", body)
}

/// Pacing and circuit of every target this process delivers to.
pub fn state_table(c: &Console, snaps: &[TargetSnapshot]) -> Markup {
    html! {
        @if c.health.is_none() {
            p.muted { "This process runs no delivery (no live state to show)." }
        } @else if snaps.is_empty() {
            p.muted { "No delivery consumer runs in this process." }
        } @else {
            table {
                caption { "Live state in this replica (other replicas pace on their own)" }
                thead { tr {
                    th scope="col" { "Target" }
                    th scope="col" { "Circuit" }
                    th scope="col" class="num" { "Limit" }
                    th scope="col" class="num" { "In flight" }
                    th scope="col" class="num" { "Held" }
                    th scope="col" class="num" { "Account slots held / cap" }
                    th scope="col" class="num" { "Mean RTT (ms)" }
                    th scope="col" { "Retry-After pause" }
                } }
                tbody {
                    @for s in snaps {
                        tr {
                            th scope="row" { (s.target) }
                            td { (circuit(s)) }
                            td.num { (s.concurrency_limit) }
                            td.num { (s.inflight) }
                            td.num { (s.held) }
                            td.num {
                                @match (s.account_slots_held, s.account_concurrency) {
                                    (Some(h), Some(cap)) => { (h) " / " (cap) }
                                    _ => span.muted { "no account cap" },
                                }
                            }
                            td.num { (s.mean_rtt_ms.map(|m| format!("{m:.1}")).unwrap_or_else(|| "–".into())) }
                            td { (s.paused_for_seconds.map(|p| format!("{p:.0} s left")).unwrap_or_else(|| "none".into())) }
                        }
                    }
                }
            }
        }
    }
}

fn circuit(s: &TargetSnapshot) -> Markup {
    if !s.circuit_open {
        return html! { span.badge.ok { "closed" } };
    }
    let cause = s.circuit_cause.map(|c| c.as_str()).unwrap_or("unknown");
    let open_for = s
        .circuit_open_for_seconds
        .map(|f| format!(" for {f:.0} s"))
        .unwrap_or_default();
    html! { span.badge.bad { "open: " (cause) } (open_for) }
}

fn answer_table<'a>(rows: impl Iterator<Item = &'a Activity>) -> Markup {
    let rows: Vec<&Activity> = rows.collect();
    html! {
        @if rows.is_empty() {
            p.muted { "No answer among the newest audit rows." }
        } @else {
            table {
                thead { tr {
                    th scope="col" { "When" }
                    th scope="col" { "Outcome" }
                    th scope="col" { "Record" }
                    th scope="col" { "Answer" }
                } }
                tbody {
                    @for r in rows {
                        tr {
                            td { (layout::when(&r.at)) }
                            td { (outcome_badge(&r.outcome)) }
                            td { (record_link(r)) }
                            td.msg { (answer_of(r)) }
                        }
                    }
                }
            }
        }
    }
}

pub fn outcome_badge(outcome: &str) -> Markup {
    let class = match outcome {
        "delivered" | "merged" | "superseded" | "skipped" => "badge ok",
        "permanent" | "invalid" | "exhausted" | "gap" | "parked" => "badge bad",
        _ => "badge warn",
    };
    html! { span class=(class) { (outcome) } }
}

pub fn record_link(r: &Activity) -> Markup {
    match (&r.record_type, &r.record_id) {
        (Some(t), Some(id)) => html! {
            a href={"/console/records/" (layout::enc(t)) "/" (layout::enc(id))} { (t) "/" (id) }
        },
        _ => html! { span.muted { "–" } },
    }
}

/// A delivery's status or a failure's error, from the audit row's detail.
fn answer_of(r: &Activity) -> String {
    let Some(detail) = r
        .detail
        .as_deref()
        .and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok())
    else {
        return String::new();
    };
    if let Some(s) = detail.get("status") {
        return format!("HTTP {s}");
    }
    if let Some(e) = detail.get("error").and_then(|e| e.as_str()) {
        return e.chars().take(300).collect();
    }
    detail.to_string().chars().take(300).collect()
}

/// Pause, resume and resync a target (operations of docs/spec.md §7.1).
fn controls(a: &Authed, target: &str) -> Markup {
    html! {
        details id={"controls-" (target)} {
            summary { "Pause, resume or resync " (target) }
            form.inline method="post" action="/console/actions/pause" {
                (csrf_field(a))
                input type="hidden" name="target" value=(target);
                input type="hidden" name="back" value="/console/targets";
                label { "Why pause " (target) input id={"pause-reason-" (target)} type="text" name="reason" required; }
                button.danger id={"pause-" (target)} type="submit" { "Pause " (target) }
            }
            form.inline method="post" action="/console/actions/resume" {
                (csrf_field(a))
                input type="hidden" name="target" value=(target);
                input type="hidden" name="back" value="/console/targets";
                button.secondary id={"resume-" (target)} type="submit" { "Resume " (target) }
            }
            form.inline method="post" action="/console/actions/resync" {
                (csrf_field(a))
                input type="hidden" name="target" value=(target);
                input type="hidden" name="back" value="/console/targets";
                label { "Records to resync (type:id, one per line or space)" input type="text" name="records" required; }
                button.secondary id={"resync-" (target)} type="submit" { "Resync to " (target) }
            }
        }
    }
}
