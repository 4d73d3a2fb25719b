//! `backbone-bench mcp`: the MCP tools' latency on a large event
//! store. Loads (or reuses) the data `bench history` loads — by default
//! 1 M events over 10,000 records, so 100 events per record — then calls
//! the tool handlers in-process, as the MCP server does for each request
//! (JSON-RPC framing and transport excluded): `query_events` (the last 100
//! events with their audit rows, `total_count`, `has_more`), `replay_events`
//! of a whole record, and `emit_event` to the Pub/Sub emulator (validation,
//! publish with its ordering key, audit row). Prints p50/p99 against the
//! issue's targets; the figures are printed, never asserted.

use std::time::Instant;

use anyhow::{bail, Context};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use super::history::{self as hist, Stats};
use backbone::config::Settings;
use backbone::mcp::tools::{EmitEventInput, QueryEventsInput, RecordRef, ReplayEventsInput};
use backbone::mcp::{Ctx, Transport};

/// The targets (the planning notes' figures).
const TARGET_QUERY_P99_MS: f64 = 50.0;
const TARGET_REPLAY_P99_MS: f64 = 200.0;
const TARGET_EMIT_P99_MS: f64 = 10.0;
/// The record type of the emitted events (never merged: no daemon runs).
const EMIT_TYPE: &str = "bench_mcp";

#[derive(Debug, clap::Args)]
pub struct McpBenchArgs {
    #[command(flatten)]
    pub load: hist::Args,
    /// emit_event calls timed (0 skips them; they need the Pub/Sub emulator
    /// or a real project, whose raw topic is provisioned first).
    #[arg(long, default_value_t = 1_000)]
    pub emits: usize,
}

/// Loads the data, then times each tool in turn: query_events,
/// replay_events, emit_event.
pub async fn run(settings: Settings, args: McpBenchArgs) -> anyhow::Result<i32> {
    let a = &args.load;
    if a.records == 0 || a.events < a.records {
        bail!("--events must be at least --records, and --records at least 1");
    }
    let store = backbone::app::create_store(&settings).await?;
    store
        .migrate()
        .await
        .context("migrating the bench database")?;
    let policy = settings.merge_policy();
    let load = hist::load(&store, &policy, a).await?;
    let mut settings = settings;
    settings.mcp.allow_emit = true;
    let ctx = Ctx::new(store.clone(), &settings, Transport::Stdio);
    let per_record = a.events / a.records;

    let mut rng = StdRng::seed_from_u64(a.seed ^ 0x3c9);
    let mut draw = || -> Vec<u64> {
        (0..a.samples)
            .map(|_| rng.random_range(0..a.records))
            .collect()
    };
    let (query_sample, replay_sample) = (draw(), draw());
    let query = time_queries(&ctx, &query_sample, per_record).await?;
    let (replay, folded) = time_replays(&ctx, &replay_sample, per_record).await?;
    let emit = if args.emits > 0 {
        Some(time_emits(&ctx, &settings, args.emits).await?)
    } else {
        None
    };

    let out = json!({
        "bench": "mcp",
        "backend": format!("{:?}", store.backend()),
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        "events": a.events,
        "records": a.records,
        "events_per_record": per_record,
        "load": load,
        "samples": a.samples,
        "query_events_last_100": query.json(),
        "replay_events_full_record": {"events_per_replay": folded, "latency": replay.json()},
        "emit_event": emit.as_ref().map(|e| json!({"calls": args.emits, "latency": e.json()})),
        "targets": {"query_events_p99_ms": TARGET_QUERY_P99_MS,
                    "replay_events_p99_ms": TARGET_REPLAY_P99_MS,
                    "emit_event_p99_ms": TARGET_EMIT_P99_MS},
        "meets_targets": query.p99_ms <= TARGET_QUERY_P99_MS
            && replay.p99_ms <= TARGET_REPLAY_P99_MS
            && emit.as_ref().is_none_or(|e| e.p99_ms <= TARGET_EMIT_P99_MS),
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    store.close().await;
    Ok(0)
}

fn record(r: u64) -> RecordRef {
    RecordRef {
        record_type: hist::RECORD_TYPE.to_string(),
        record_id: hist::record_id(r),
    }
}

/// query_events of each sampled record (its last 100 events), after a few
/// uncounted calls to warm the pool; fails if one returns fewer.
async fn time_queries(ctx: &Ctx, sample: &[u64], per_record: u64) -> anyhow::Result<Stats> {
    let query = |r: u64| QueryEventsInput {
        record: record(r),
        source: None,
        outcome: None,
        since: None,
        until: None,
        keyword: None,
        limit: None,
        offset: None,
    };
    // Warm the pool a little; not counted.
    for r in sample.iter().take(20) {
        ctx.query_events(query(*r)).await?;
    }
    let mut times = Vec::with_capacity(sample.len());
    for r in sample {
        let t = Instant::now();
        let page = ctx.query_events(query(*r)).await?;
        times.push(t.elapsed());
        let want = per_record.min(100) as usize;
        if page.events.len() < want || page.total_count < want as i64 {
            bail!(
                "query_events of {} returned {} of {} events; expected {want}",
                hist::record_id(*r),
                page.events.len(),
                page.total_count
            );
        }
    }
    Ok(Stats::of(&mut times))
}

/// replay_events of each sampled record, whole; fails if one folds fewer
/// than the record's events. Also the most events one replay folded.
async fn time_replays(
    ctx: &Ctx,
    sample: &[u64],
    per_record: u64,
) -> anyhow::Result<(Stats, usize)> {
    let mut times = Vec::with_capacity(sample.len());
    let mut folded = 0usize;
    for r in sample {
        let t = Instant::now();
        let rep = ctx
            .replay_events(ReplayEventsInput {
                record: record(*r),
                to_sequence_num: None,
            })
            .await?;
        times.push(t.elapsed());
        if (rep.events_replayed as u64) < per_record {
            bail!(
                "replay_events of {} folded {} events; expected {per_record}",
                hist::record_id(*r),
                rep.events_replayed
            );
        }
        folded = folded.max(rep.events_replayed);
    }
    Ok((Stats::of(&mut times), folded))
}

/// `emits` emit_event calls to the provisioned raw topic, after a few
/// uncounted ones (the publisher's connection and first batch).
async fn time_emits(ctx: &Ctx, settings: &Settings, emits: usize) -> anyhow::Result<Stats> {
    let endpoint = backbone::app::endpoint(settings);
    backbone::pubsub::provision::provision(&settings.topology(), &endpoint)
        .await
        .context("provisioning the topics emit_event publishes to")?;
    let run = uuid::Uuid::now_v7().simple().to_string();
    let event = |i: usize| EmitEventInput {
        event: json!({
            "record_type": EMIT_TYPE, "record_id": format!("{run}-{}", i % 100),
            "source": "suitex", "timestamp": "2026-03-13T20:00:00.123456Z",
            "base_version": i / 100, "changes": {"n": i},
        }),
    };
    // The publisher's connection and the first batch; not counted.
    for i in 0..5 {
        ctx.emit_event(event(emits + i)).await?;
    }
    let mut times = Vec::with_capacity(emits);
    for i in 0..emits {
        let t = Instant::now();
        ctx.emit_event(event(i)).await?;
        times.push(t.elapsed());
    }
    Ok(Stats::of(&mut times))
}
