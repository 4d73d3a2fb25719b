//! The scripted story of docs/spec.md §9. Each step publishes raw events, waits for
//! what the daemon did (read back from the database, the stand-in targets and
//! the merged topic, with bounded waits) and narrates it; anything other than
//! the expected result ends the story with an error.

mod conflict;
mod ctx;
mod dead_letter;
mod duplicate;
mod malformed;
mod new_records;
mod oversized;
mod recovering_sink;
mod summary;

use std::time::Duration;

use serde_json::{json, Value};

pub use self::ctx::Ctx;
use self::summary::summary;
pub use self::summary::where_to_look;
use self::{
    conflict::step_conflict, dead_letter::step_dead_letter_and_replay, duplicate::step_duplicate,
    malformed::step_malformed, new_records::step_new_records, oversized::step_oversized,
    recovering_sink::step_recovering_sink,
};
use super::{DemoError, Narrator};
use backbone::model::raw_event::Source;

pub const NETSUITE_TOKEN: &str = "demo-netsuite-token";
pub const SUITEX_TOKEN: &str = "demo-suitex-token";
/// The record type the NetSuite stand-in rejects with 500 in step 7.
const REJECTED_TYPE: &str = "invoice";
/// Bound on each wait for the daemon.
const WAIT: Duration = Duration::from_secs(20);
/// Long enough for five executions at the demo's backoff (0.2 s … 1 s).
const WAIT_EXHAUSTED: Duration = Duration::from_secs(40);
/// Silence that shows nothing more is coming (the duplicate).
const QUIET: Duration = Duration::from_millis(1500);

fn short(fp: &str) -> &str {
    fp.get(..12).unwrap_or(fp)
}

fn kib(n: usize) -> String {
    format!("{:.1} KiB", n as f64 / 1024.0)
}

/// The base waits of the retry schedule between `max_attempts` executions
/// (the formula of [`backbone::stages::retry::schedule`], without jitter).
fn scheduled_waits(r: &backbone::config::RetrySettings) -> Vec<Duration> {
    (0..r.max_attempts.saturating_sub(1))
        .map(|i| {
            let secs = r.initial_backoff.as_secs_f64() * r.multiplier.powi(i.min(64) as i32);
            Duration::from_secs_f64(secs.min(r.max_backoff.as_secs_f64()))
        })
        .collect()
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn expect(ok: bool, why: impl FnOnce() -> String) -> Result<(), DemoError> {
    if ok {
        Ok(())
    } else {
        Err(DemoError::Unexpected(why()))
    }
}

fn target_name(t: Source) -> &'static str {
    match t {
        Source::Netsuite => "NetSuite",
        Source::Suitex => "SuiteX",
    }
}

/// A long, readable text of about `bytes` bytes (the oversized payloads).
fn filler(bytes: usize) -> String {
    const S: &str =
        "The supplier shall deliver the services described in the attached statement of work. ";
    S.repeat(bytes / S.len() + 1)
}

/// The raw event JSON the sources publish.
fn raw(
    source: &str,
    record_type: &str,
    record_id: &str,
    base: i64,
    ts: &str,
    changes: Value,
) -> Value {
    json!({
        "source": source, "record_type": record_type, "record_id": record_id,
        "base_version": base, "timestamp": ts, "changes": changes,
    })
}

pub async fn play(ctx: &Ctx<'_>, n: &mut Narrator) -> Result<(), DemoError> {
    let e1 = step_new_records(ctx, n).await?;
    step_duplicate(ctx, n, &e1).await?;
    step_conflict(ctx, n).await?;
    step_oversized(ctx, n).await?;
    step_malformed(ctx, n).await?;
    step_recovering_sink(ctx, n).await?;
    step_dead_letter_and_replay(ctx, n).await?;
    summary(ctx, n).await
}

/// The creation of project 42, kept byte for byte for the duplicate.
fn project_42_created() -> Value {
    raw(
        "suitex",
        "project",
        "42",
        0,
        "2026-03-13T09:00:00.000000Z",
        json!({"name": "Website relaunch", "status": "open", "budget": 12000}),
    )
}
