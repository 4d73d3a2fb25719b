//! `backbone-bench history`: loads a large event store (multi-row
//! INSERTs straight into the database, with contiguous sequence numbers,
//! claim audit rows, some duplicate audit rows and the projection, all
//! produced by the real merge rules), then times, over random records, the
//! `events list` query (last 100 events with audit rows) and a full replay.
//!
//! Point it at a scratch database: events are immutable, so a load cannot be
//! undone. It refuses to load into a database that already holds other
//! events unless `--allow-existing-data` says so. A second run on the same
//! database reuses the loaded data.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, TimeZone, Utc};
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};

use backbone::config::Settings;
use backbone::history::{self, ListQuery};
use backbone::model::fingerprint::fingerprint;
use backbone::model::raw_event::{RawEvent, Source};
use backbone::model::rules::{self, Incoming, MergePolicy, MergeResult, RecordState};
use backbone::store::ledger::{self, StateRow};
use backbone::store::{Dialect, Store};
use backbone::topology::StageName;

/// The record type every bench row uses, so its rows are recognisable.
pub(super) const RECORD_TYPE: &str = "bench_history";
/// Targets from the issue (MariaDB, a machine like the CI box).
const TARGET_LIST_P99_MS: f64 = 5.0;
const TARGET_REPLAY_P99_MS: f64 = 20.0;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Events to load in total.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Records the events are spread over (evenly).
    #[arg(long, default_value_t = 10_000)]
    pub records: u64,
    /// Random records timed for each query.
    #[arg(long, default_value_t = 1_000)]
    pub samples: usize,
    /// Rows per INSERT statement.
    #[arg(long, default_value_t = 1_000)]
    pub rows_per_insert: usize,
    /// Loader transactions running at once.
    #[arg(long, default_value_t = 3)]
    pub parallel: usize,
    /// Seed of the generated data and of the sampled records.
    #[arg(long, default_value_t = 6)]
    pub seed: u64,
    /// Also time `verify` over the loaded records.
    #[arg(long)]
    pub verify: bool,
    /// Load even though the database already holds events other than the
    /// bench's (they cannot be deleted afterwards).
    #[arg(long)]
    pub allow_existing_data: bool,
}

/// Why the bench will not load.
#[derive(Debug, thiserror::Error)]
pub enum LoadRefused {
    #[error(
        "refusing to load {events} bench events into a database that already holds other events \
         (e.g. record type `{other}`): events cannot be deleted, so the bench rows would stay \
         there for good. Point BACKBONE__DATABASE__URL at a scratch database, or pass \
         --allow-existing-data to load anyway."
    )]
    ExistingData { events: u64, other: String },
    #[error(
        "the database holds {existing} bench events, not {wanted}; events cannot be deleted, so use a fresh database"
    )]
    OtherBenchSize { existing: i64, wanted: u64 },
}

pub async fn run(settings: Settings, args: Args) -> anyhow::Result<i32> {
    if args.records == 0 || args.events < args.records {
        bail!("--events must be at least --records, and --records at least 1");
    }
    let store = backbone::app::create_store(&settings).await?;
    store
        .migrate()
        .await
        .context("migrating the bench database")?;
    let policy = settings.merge_policy();

    let load = load(&store, &policy, &args).await?;
    // Separate samples, so neither measurement runs on pages the other
    // just brought into the buffer pool.
    let mut rng = StdRng::seed_from_u64(args.seed ^ 0x5eed);
    let mut draw = || -> Vec<u64> {
        (0..args.samples)
            .map(|_| rng.random_range(0..args.records))
            .collect()
    };
    let sample = draw();
    let replay_sample = draw();
    let per_record = args.events / args.records;

    // Warm the pool and the buffer pool a little; not counted.
    for r in sample.iter().take(20) {
        history::list(&store, RECORD_TYPE, &record_id(*r), &ListQuery::default()).await?;
    }
    let mut list_times = Vec::with_capacity(sample.len());
    for r in &sample {
        let id = record_id(*r);
        let t = Instant::now();
        let page = history::list(&store, RECORD_TYPE, &id, &ListQuery::default()).await?;
        list_times.push(t.elapsed());
        let want = per_record.min(u64::from(history::DEFAULT_LIMIT)) as usize;
        if page.events.len() < want || page.events.iter().any(|e| e.audit.is_empty()) {
            bail!(
                "list of {id} returned {} events (or events without audit rows); expected {want}",
                page.events.len()
            );
        }
    }
    let mut replay_times = Vec::with_capacity(sample.len());
    let mut replayed_events = 0usize;
    for r in &replay_sample {
        let id = record_id(*r);
        let t = Instant::now();
        let rep = history::replay(&store, &policy, RECORD_TYPE, &id, None).await?;
        replay_times.push(t.elapsed());
        if (rep.events_replayed as u64) < per_record {
            bail!(
                "replay of {id} folded {} events; expected at least {per_record}",
                rep.events_replayed
            );
        }
        replayed_events = replayed_events.max(rep.events_replayed);
    }
    let list = Stats::of(&mut list_times);
    let replay = Stats::of(&mut replay_times);

    let verify = if args.verify {
        let t = Instant::now();
        let report = history::verify::verify(&store, &policy, Some(RECORD_TYPE)).await?;
        if !report.clean() {
            bail!(
                "verify found {} drifted records in the bench data",
                report.drift.len()
            );
        }
        json!({"records": report.records_checked, "events": report.events_replayed,
               "seconds": t.elapsed().as_secs_f64()})
    } else {
        Value::Null
    };
    let out = json!({
        "bench": "history",
        "backend": format!("{:?}", store.backend()),
        "events": args.events,
        "records": args.records,
        "events_per_record": per_record,
        "load": load,
        "samples": args.samples,
        "list_last_100": list.json(),
        "replay_full_record": {"events_per_replay": replayed_events, "latency": replay.json()},
        "verify": verify,
        "targets": {"list_p99_ms": TARGET_LIST_P99_MS, "replay_p99_ms": TARGET_REPLAY_P99_MS},
        "meets_targets": list.p99_ms <= TARGET_LIST_P99_MS && replay.p99_ms <= TARGET_REPLAY_P99_MS,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    store.close().await;
    Ok(0)
}

pub(super) fn record_id(n: u64) -> String {
    format!("r{n:07}")
}

pub(super) struct Stats {
    pub(super) p50_ms: f64,
    pub(super) p99_ms: f64,
    pub(super) max_ms: f64,
    pub(super) mean_ms: f64,
}

impl Stats {
    pub(super) fn of(v: &mut [Duration]) -> Stats {
        v.sort_unstable();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let at = |q: f64| {
            let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len().max(1)) - 1;
            v.get(i).copied().map_or(0.0, ms)
        };
        let total: Duration = v.iter().sum();
        Stats {
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            max_ms: v.last().copied().map_or(0.0, ms),
            mean_ms: if v.is_empty() {
                0.0
            } else {
                ms(total) / v.len() as f64
            },
        }
    }

    pub(super) fn json(&self) -> Value {
        let r = |x: f64| (x * 1000.0).round() / 1000.0;
        json!({"p50_ms": r(self.p50_ms), "p99_ms": r(self.p99_ms),
               "max_ms": r(self.max_ms), "mean_ms": r(self.mean_ms)})
    }
}

/// Loads the bench data unless it is already there (`bench mcp` reuses it).
pub(super) async fn load(
    store: &Store,
    policy: &MergePolicy,
    args: &Args,
) -> anyhow::Result<Value> {
    let mut conn = store.pool().acquire().await?;
    let existing = ledger::count_events_of_type(&mut conn, RECORD_TYPE).await?;
    if existing as u64 == args.events {
        eprintln!("Reusing the {existing} bench events already loaded.");
        return Ok(json!({"skipped": true, "existing_events": existing}));
    }
    if existing != 0 {
        return Err(LoadRefused::OtherBenchSize {
            existing,
            wanted: args.events,
        }
        .into());
    }
    if !args.allow_existing_data {
        if let Some(other) = ledger::other_record_type(&mut conn, RECORD_TYPE).await? {
            return Err(LoadRefused::ExistingData {
                events: args.events,
                other,
            }
            .into());
        }
    }
    drop(conn);
    eprintln!(
        "Loading {} events over {} records into {:?} ...",
        args.events,
        args.records,
        store.backend()
    );
    let started = Instant::now();
    // Records are loaded in groups, one transaction per group.
    let per_group = (args.rows_per_insert as u64 * 5 / (args.events / args.records).max(1)).max(1);
    let groups: Vec<(u64, u64)> = (0..args.records)
        .step_by(per_group as usize)
        .map(|s| (s, (s + per_group).min(args.records)))
        .collect();
    let mut done = 0u64;
    let mut stream = futures::stream::iter(groups.into_iter().map(|(from, to)| {
        let store = store.clone();
        let policy = policy.clone();
        let (events, records, seed, rows) =
            (args.events, args.records, args.seed, args.rows_per_insert);
        async move {
            let batch = generate(&policy, from..to, events, records, seed)?;
            write(&store, &batch, rows).await?;
            anyhow::Ok(batch.events.len() as u64)
        }
    }))
    .buffer_unordered(args.parallel.max(1));
    let mut last_report = Instant::now();
    while let Some(n) = stream.next().await {
        done += n?;
        if last_report.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "  {done} events loaded ({:.0}/s)",
                done as f64 / started.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!("Loaded {done} events in {secs:.1} s.");
    Ok(json!({"skipped": false, "seconds": secs, "events_per_second": done as f64 / secs}))
}

/// Rows for a group of records.
struct Batch {
    events: Vec<ledger::EventRow>,
    audit: Vec<ledger::AuditRow>,
    states: Vec<(ledger::RecordKey, StateRow)>,
}

const FIELDS: &[&str] = &[
    "status", "name", "budget", "owner", "tags", "priority", "stage", "amount",
];

/// Generates each record's history: random sources, mostly current base
/// versions with some stale ones (conflicts), folded through the merge rules
/// so sequence numbers, audit details and projections are what the live
/// stage would have written.
fn generate(
    policy: &MergePolicy,
    records: std::ops::Range<u64>,
    total_events: u64,
    total_records: u64,
    seed: u64,
) -> anyhow::Result<Batch> {
    let base_time: DateTime<Utc> = Utc
        .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .context("bench base time")?;
    let per = total_events / total_records;
    let extra = total_events % total_records;
    let mut b = Batch {
        events: Vec::new(),
        audit: Vec::new(),
        states: Vec::new(),
    };
    for r in records {
        let n = per + u64::from(r < extra);
        b.record(policy, r, n, base_time, seed)?;
    }
    Ok(b)
}

/// One generated change to a record.
struct Change {
    source: Source,
    base: i64,
    ts: DateTime<Utc>,
    changes: Map<String, Value>,
}

impl Change {
    /// The `i`th change of a record at `state`: either source, a stale base
    /// one time in five, about a minute after the last, one to three fields.
    fn random(rng: &mut StdRng, state: &RecordState, i: u64, base_time: DateTime<Utc>) -> Self {
        let source = if rng.random_bool(0.5) {
            Source::Suitex
        } else {
            Source::Netsuite
        };
        let base = if state.version > 0 && rng.random_bool(0.2) {
            state.version - 1
        } else {
            state.version
        };
        let micros = i as i64 * 60_000_000 + rng.random_range(-90_000_000..90_000_000i64);
        let ts = base_time + chrono::Duration::microseconds(micros);
        let mut changes = Map::new();
        for _ in 0..rng.random_range(1..=3) {
            let f = FIELDS[rng.random_range(0..FIELDS.len())];
            let v = match rng.random_range(0..4) {
                0 => json!(rng.random_range(0..100_000)),
                1 => json!(format!("value {}", rng.random_range(0..1000))),
                2 => Value::Null,
                _ => json!(["a", rng.random_range(0..10)]),
            };
            changes.insert(f.to_string(), v);
        }
        Self {
            source,
            base,
            ts,
            changes,
        }
    }
}

impl Batch {
    /// Record `r`'s `n` events (its own seeded generator, so a record's
    /// history does not depend on the batch it is in) and its projection.
    fn record(
        &mut self,
        policy: &MergePolicy,
        r: u64,
        n: u64,
        base_time: DateTime<Utc>,
        seed: u64,
    ) -> anyhow::Result<()> {
        let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(r));
        let id = record_id(r);
        let mut state = RecordState::default();
        let mut seq = 0i64;
        for i in 0..n {
            let c = Change::random(&mut rng, &state, i, base_time);
            let result = rules::merge(
                &mut state,
                Incoming {
                    source: c.source,
                    timestamp: c.ts,
                    base_version: c.base,
                    changes: &c.changes,
                },
                policy,
            )?;
            seq += 1;
            self.push_event(r, i, &id, seq, c, &result);
        }
        self.states.push((
            (RECORD_TYPE.to_string(), id),
            StateRow {
                version: state.version,
                last_seq: seq,
                state,
                pending: 0,
            },
        ));
        Ok(())
    }

    /// The `i`th event row of record `r` and its claim audit row (and now
    /// and then a publisher retry's duplicate row).
    fn push_event(&mut self, r: u64, i: u64, id: &str, seq: i64, c: Change, result: &MergeResult) {
        let event_id = uuid::Uuid::now_v7().to_string();
        let raw = RawEvent {
            id: None,
            record_type: RECORD_TYPE.to_string(),
            record_id: id.to_string(),
            source: c.source,
            timestamp: c.ts,
            base_version: c.base,
            changes: Map::new(),
            full_snapshot_ref: None,
        };
        let fp = fingerprint(&raw, &c.changes);
        let applied: Vec<&String> = result.applied.keys().collect();
        let audit = |event_id: Option<String>, outcome: &str, detail: Value, claim: bool| {
            ledger::AuditRow {
                event_id,
                fingerprint: fp.clone(),
                record_type: Some(RECORD_TYPE.to_string()),
                record_id: Some(id.to_string()),
                stage: StageName::Merge.as_str().to_string(),
                outcome: outcome.to_string(),
                detail: Some(detail.to_string()),
                message_id: Some(format!("bench-{r}-{i}")),
                attempt: 1,
                claim,
            }
        };
        self.audit.push(audit(
            Some(event_id.clone()),
            if result.publishes() { "merged" } else { "noop" },
            json!({"sequence_num": seq, "version": result.version, "applied": applied,
                   "conflicts": result.conflicts.len()}),
            true,
        ));
        // Some publisher retries: a duplicate row shares the fingerprint.
        if i % 25 == 7 {
            self.audit.push(audit(None, "duplicate", json!({}), false));
        }
        self.events.push(ledger::EventRow {
            id: event_id,
            record_type: RECORD_TYPE.to_string(),
            record_id: id.to_string(),
            source: c.source.as_str().to_string(),
            timestamp: c.ts,
            base_version: c.base,
            changes: Value::Object(c.changes).to_string(),
            full_snapshot_ref: None,
            processed: true,
            sequence_num: seq,
        });
    }
}

/// Writes a batch in one transaction with large multi-row INSERTs.
async fn write(store: &Store, b: &Batch, rows_per_insert: usize) -> anyhow::Result<()> {
    let d: Dialect = store.dialect();
    let rows = rows_per_insert.clamp(1, 5_000);
    let _guard = store.write_guard().await;
    let mut tx = store.pool().begin().await?;
    ledger::insert_events_chunked(&mut tx, d, &b.events, rows).await?;
    ledger::insert_audit_chunked(&mut tx, &b.audit, rows).await?;
    ledger::upsert_states(&mut tx, d, &b.states).await?;
    tx.commit().await?;
    Ok(())
}
