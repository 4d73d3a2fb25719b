//! `event-backbone bench merge`: two figures, each with a baseline measured
//! in the same run, printed as JSON. Fail-closed: any error, lost or doubled
//! event makes it exit non-zero.
//!
//! - end to end: raw events through the emulator into the daemon's merge
//!   stage until every merged event is published, against an ack-only
//!   consumer draining the same messages from the same emulator, and
//!   against one that only forwards them to the merged topic (the broker
//!   work the daemon cannot avoid);
//! - stage capacity: the merge engine fed directly (no broker) on MariaDB and
//!   SQLite, against one transaction per message.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use secrecy::SecretString;
use serde_json::json;
use sqlx::Connection;
use tokio_util::sync::CancellationToken;

use crate::app::{self, Application};
use crate::config::Settings;
use crate::model::raw_event::{parse_raw_event, Source};
use crate::pubsub::publisher::Publishers;
use crate::pubsub::{clients, provision};
use crate::stages::merge::batch::{EngineConfig, EventItem, Item, MergeEngine};
use crate::store::{ceiling, Store};
use crate::topology::{ConsumerKind, TopicKind, Topology};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Raw events in the end-to-end run (duplicates come on top).
    #[arg(long, default_value_t = 5_000)]
    pub e2e_events: usize,
    /// Events fed to the stage directly.
    #[arg(long, default_value_t = 20_000)]
    pub stage_events: usize,
    /// Records (ordering keys) the end-to-end run spreads its events over.
    #[arg(long, default_value_t = 500)]
    pub records: usize,
    /// Spreads of records the stage capacity is measured at (50 = a few hot
    /// records).
    #[arg(long, value_delimiter = ',', default_value = "200,500,50")]
    pub stage_records: Vec<usize>,
    /// Share of events published twice.
    #[arg(long, default_value_t = 0.05)]
    pub duplicate_rate: f64,
    /// Share of events built on a stale base version from the other source.
    #[arg(long, default_value_t = 0.10)]
    pub conflict_rate: f64,
    /// MariaDB/MySQL server for the runs (a fresh database is created).
    #[arg(long, default_value = "mysql://root@127.0.0.1:3306/mysql")]
    pub mysql_admin_url: String,
    /// Database for the end-to-end run.
    #[arg(long, value_enum, default_value_t = E2eDb::Mysql)]
    pub e2e_db: E2eDb,
    #[arg(long)]
    pub skip_e2e: bool,
    #[arg(long)]
    pub skip_stage: bool,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// The database behind the end-to-end run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum E2eDb {
    /// A fresh database on `--mysql-admin-url`'s server.
    Mysql,
    /// A temporary SQLite file.
    Sqlite,
}

impl E2eDb {
    pub fn as_str(self) -> &'static str {
        match self {
            E2eDb::Mysql => "mysql",
            E2eDb::Sqlite => "sqlite",
        }
    }
}

/// One generated raw event and whether it is sent twice.
pub(super) struct Gen {
    pub(super) id: uuid::Uuid,
    /// The ordering key.
    pub(super) key: String,
    pub(super) json: String,
    pub(super) duplicate: bool,
}

/// Per-record histories: base versions follow the merged version, some
/// events are stale (conflicts), some are sent twice (duplicates).
pub(super) fn generate(n: usize, records: usize, dup: f64, conflict: f64, seed: u64) -> Vec<Gen> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut version = vec![0i64; records];
    let t0 = Utc
        .with_ymd_and_hms(2026, 3, 13, 0, 0, 0)
        .single()
        .unwrap_or_else(Utc::now);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let r = i % records;
        let stale = version[r] > 0 && rng.random_bool(conflict);
        let base = if stale { version[r] - 1 } else { version[r] };
        let source = if (i / records + usize::from(stale)).is_multiple_of(2) {
            Source::Suitex
        } else {
            Source::Netsuite
        };
        // A stale event touches the field the last event changed.
        let field = if stale {
            format!("f{}", (version[r] - 1) % 8)
        } else {
            format!("f{}", version[r] % 8)
        };
        let ts = t0 + chrono::Duration::microseconds(i as i64 * 1_000 + 123);
        let id = uuid::Uuid::now_v7();
        let json = json!({
            "id": id.to_string(), "source": source.as_str(), "record_type": "bench",
            "record_id": format!("r{r}"), "base_version": base,
            "timestamp": crate::model::fingerprint::format_timestamp(&ts),
            "changes": {field: format!("v{i}"), "n": i},
        })
        .to_string();
        // Later timestamps win, so every event applies something: version grows.
        version[r] += 1;
        out.push(Gen {
            id,
            key: format!("bench:r{r}"),
            json,
            duplicate: rng.random_bool(dup),
        });
    }
    out
}

pub(super) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

pub(super) async fn fresh_mysql(admin_url: &str) -> anyhow::Result<(String, String)> {
    let mut conn = sqlx::MySqlConnection::connect(admin_url)
        .await
        .with_context(|| format!("connecting to {admin_url}"))?;
    let name = format!("eb_bench_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name} CHARACTER SET utf8mb4"))
        .execute(&mut conn)
        .await?;
    let base = admin_url
        .rsplit_once('/')
        .map(|(b, _)| b)
        .unwrap_or(admin_url);
    Ok((format!("{base}/{name}"), name))
}

pub(super) async fn drop_mysql(admin_url: &str, name: &str) {
    if let Ok(mut conn) = sqlx::MySqlConnection::connect(admin_url).await {
        let _ = sqlx::query(&format!("DROP DATABASE {name}"))
            .execute(&mut conn)
            .await;
    }
}

pub async fn run(settings: Settings, args: Args) -> anyhow::Result<i32> {
    let mut report = serde_json::Map::new();
    if !args.skip_stage {
        report.insert(
            "stage_capacity".into(),
            stage_capacity(&settings, &args).await?,
        );
    }
    if !args.skip_e2e {
        report.insert("end_to_end".into(), end_to_end(&settings, &args).await?);
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(0)
}

// ---------------------------------------------------------------- stage

/// Steps of a merge batch, as timed by the engine (`stage_step_duration`).
pub(super) const MERGE_STEPS: &[&str] = &[
    "read_claims",
    "read_ids",
    "lock_states",
    "outbox_read",
    "pending_read",
    "decide",
    "write_events",
    "write_audit",
    "write_state",
    "write_outbox",
    "write_merged",
    "write_pending",
    "commit",
];

/// (sample count, sample sum) of the merge batch-size histogram and of each
/// merge step: the engine's own figures, read before and after a run.
fn engine_figures() -> Vec<(u64, f64)> {
    let m = crate::metrics::metrics();
    let mut v = vec![(
        m.merge_batch_size.get_sample_count(),
        m.merge_batch_size.get_sample_sum(),
    )];
    for step in MERGE_STEPS {
        let h = m.stage_step_duration.with_label_values(&["merge", step]);
        v.push((h.get_sample_count(), h.get_sample_sum()));
    }
    v
}

/// A scratch store of the bench's own, migrated; dropped by `discard`.
struct Scratch {
    store: Store,
    mysql_db: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl Scratch {
    async fn new(backend: &str, args: &Args) -> anyhow::Result<Self> {
        let (url, mysql_db, dir) = match backend {
            "mysql" => {
                let (url, name) = fresh_mysql(&args.mysql_admin_url).await?;
                (url, Some(name), None)
            }
            _ => {
                let dir = tempfile::tempdir()?;
                let url = format!("sqlite://{}/bench.db?mode=rwc", dir.path().display());
                (url, None, Some(dir))
            }
        };
        let store = Store::connect(&url, 16, Duration::from_secs(10)).await?;
        store.migrate().await?;
        Ok(Self {
            store,
            mysql_db,
            _dir: dir,
        })
    }

    async fn discard(self, args: &Args) {
        self.store.close().await;
        if let Some(name) = self.mysql_db {
            drop_mysql(&args.mysql_admin_url, &name).await;
        }
    }
}

async fn stage_capacity(settings: &Settings, args: &Args) -> anyhow::Result<serde_json::Value> {
    let mut out = serde_json::Map::new();
    for backend in ["mysql", "sqlite"] {
        let mut per_spread = serde_json::Map::new();
        for &records in &args.stage_records {
            let scratch = Scratch::new(backend, args).await?;
            let r = stage_run(settings, args, backend, records, &scratch).await;
            scratch.discard(args).await;
            per_spread.insert(format!("{records}_records"), r?);
        }
        out.insert(backend.into(), serde_json::Value::Object(per_spread));
    }
    Ok(serde_json::Value::Object(out))
}

/// The stage at one spread of records on one backend: one transaction per
/// message (baseline), the batching engine, and the database ceiling for
/// the rows the engine wrote (with and without the `merged_events` rows).
async fn stage_run(
    settings: &Settings,
    args: &Args,
    backend: &str,
    records: usize,
    scratch: &Scratch,
) -> anyhow::Result<serde_json::Value> {
    let store = &scratch.store;
    let workers = if store.backend() == crate::store::Backend::Sqlite {
        1
    } else {
        settings.merge.workers
    };
    // Baseline: one transaction per message, on a slice of the events.
    let base_n = (args.stage_events / 10).max(500);
    let baseline = feed(store, settings, args, records, base_n, 1, args.seed + 1).await?;
    ceiling::clear_outbox(store).await?;
    let before = engine_figures();
    let batched = feed(
        store,
        settings,
        args,
        records,
        args.stage_events,
        settings.merge.batch_max,
        args.seed,
    )
    .await?;
    let after = engine_figures();
    let batches = after[0].0 - before[0].0;
    let per_tx = (after[0].1 - before[0].1) / batches.max(1) as f64;
    let mut steps = serde_json::Map::new();
    for (i, step) in MERGE_STEPS.iter().enumerate() {
        let (n, sum) = (
            after[i + 1].0 - before[i + 1].0,
            after[i + 1].1 - before[i + 1].1,
        );
        if n > 0 {
            steps.insert(
                (*step).into(),
                json!(((sum / n as f64) * 1e5).round() / 100.0),
            );
        }
    }
    // The ceiling: the same rows, plain inserts, same transaction sizes.
    let rows = ceiling::read_run(store, &batched.prefix).await?;
    ceiling::clear_outbox(store).await?;
    if rows.events.len() != args.stage_events {
        bail!(
            "ceiling: read back {} of {} events",
            rows.events.len(),
            args.stage_events
        );
    }
    let per_tx_rows = per_tx.round().max(1.0) as usize;
    // Best of two runs each, alternating: a single run of a few seconds
    // moves with whatever else the machine does.
    let mut ceilings = [0f64; 2];
    for _ in 0..2 {
        for (i, with_merged) in [true, false].into_iter().enumerate() {
            let mut rows = rows.clone();
            if !with_merged {
                rows.merged.clear();
            }
            let target = Scratch::new(backend, args).await?;
            let took = ceiling::write_run(&target.store, rows, per_tx_rows, workers).await;
            target.discard(args).await;
            ceilings[i] = ceilings[i].max(args.stage_events as f64 / took?.as_secs_f64());
        }
    }
    let (ceiling_rate, without_merged) = (ceilings[0], ceilings[1]);
    Ok(json!({
        "events": args.stage_events,
        "records": records,
        "events_per_s": batched.rate,
        "events_per_transaction": (per_tx * 10.0).round() / 10.0,
        "baseline_one_tx_per_message": {"events": base_n, "events_per_s": baseline.rate},
        "ratio": batched.rate / baseline.rate,
        "database_ceiling": {
            "events_per_s": ceiling_rate,
            "writers": workers,
            "without_merged_events_rows_events_per_s": without_merged,
            "merged_events_write_cost": 1.0 - ceiling_rate / without_merged,
        },
        "ratio_to_ceiling": batched.rate / ceiling_rate,
        "mean_ms_per_batch_by_step": steps,
    }))
}

/// What a feed run measured; `prefix` starts the record ids it used.
struct Fed {
    rate: f64,
    prefix: String,
}

/// Feeds `n` events through a merge engine (one task per record, so each
/// record's events stay in order) and checks every one was persisted once.
/// The outbox keeps the run's rows (nothing publishes them).
async fn feed(
    store: &Store,
    settings: &Settings,
    args: &Args,
    records: usize,
    n: usize,
    batch_max: usize,
    seed: u64,
) -> anyhow::Result<Fed> {
    let confirmed = crate::store::outbox::ConfirmedSet::default();
    let engine = MergeEngine::start(
        store.clone(),
        EngineConfig {
            policy: settings.merge_policy(),
            merged_topic: "projects/bench-proj/topics/events.merged.local".into(),
            batch_max,
            linger: settings.merge.batch_linger,
            workers: if store.backend() == crate::store::Backend::Sqlite {
                1
            } else {
                settings.merge.workers
            },
            confirmed: confirmed.clone(),
        },
    );
    // As in the daemon, published outbox rows are deleted in batches (here
    // each merged event counts as published once decided), so the stage's
    // outbox read sees what it sees in production, not every row of the run.
    let (completer, completer_task) =
        crate::outbox_relay::OutboxCompleter::start(store.clone(), confirmed);
    // Distinct record ids per run so runs don't see each other's state.
    let prefix = uuid::Uuid::new_v4().simple().to_string();
    let mut per_record: Vec<Vec<Item>> = (0..records).map(|_| Vec::new()).collect();
    for (i, g) in generate(n, records, 0.0, args.conflict_rate, seed)
        .into_iter()
        .enumerate()
    {
        let mut ev = parse_raw_event(g.json.as_bytes()).map_err(|e| anyhow::anyhow!("{e}"))?;
        ev.record_id = format!("{prefix}-{}", ev.record_id);
        let changes = ev.changes.clone();
        let fp = crate::model::fingerprint::fingerprint(&ev, &changes);
        per_record[i % records].push(Item::Event(Box::new(EventItem {
            event: ev,
            changes,
            fingerprint: fp,
            message_id: format!("bench-{i}"),
            execution: 1,
            data: bytes::Bytes::from(g.json.clone()),
            attributes: Default::default(),
        })));
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for items in per_record {
        let engine = engine.clone();
        let completer = completer.clone();
        tasks.push(tokio::spawn(async move {
            let mut merged = 0usize;
            for item in items {
                match engine.submit(item).await {
                    Ok(crate::stages::merge::batch::Decision::Merged { publish, .. }) => {
                        for row in publish {
                            completer.done(row.event_id);
                        }
                        merged += 1
                    }
                    Ok(other) => anyhow::bail!("unexpected decision {other:?}"),
                    Err(e) => anyhow::bail!("merge failed: {e}"),
                }
            }
            Ok(merged)
        }));
    }
    let mut merged = 0;
    for t in tasks {
        merged += t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    drop(engine);
    drop(completer);
    let _ = completer_task.await;
    let rows = ceiling::events_with_prefix(store, &prefix).await?;
    if merged != n || rows != n as i64 {
        bail!("stage bench lost or doubled events: fed {n}, merged {merged}, rows {rows}");
    }
    Ok(Fed {
        rate: n as f64 / secs,
        prefix,
    })
}

// ---------------------------------------------------------------- end to end

async fn end_to_end(settings: &Settings, args: &Args) -> anyhow::Result<serde_json::Value> {
    if settings.pubsub.emulator_host.is_none() {
        bail!("bench needs the Pub/Sub emulator: set PUBSUB_EMULATOR_HOST (scripts/services.sh starts one)");
    }
    let ep = app::endpoint(settings);
    let gens = generate(
        args.e2e_events,
        args.records,
        args.duplicate_rate,
        args.conflict_rate,
        args.seed,
    );
    let dups = gens.iter().filter(|g| g.duplicate).count();
    let total_msgs = gens.len() + dups;

    // Baseline: an ack-only consumer draining the same messages.
    let topo = Topology::new(
        settings.env,
        format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
    );
    provision::provision(&topo, &ep).await?;
    let baseline_rate = baseline(&topo, &ep, &gens, false).await?;
    teardown(&topo, &ep, &[]).await;
    // Second baseline: a consumer that only forwards each message to the
    // merged topic (same ordering key) and acks on the publish confirmation
    // — the broker work the daemon cannot avoid, without any of its own.
    let topo = Topology::new(
        settings.env,
        format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
    );
    provision::provision(&topo, &ep).await?;
    let forward_rate = baseline(&topo, &ep, &gens, true).await?;

    // The daemon.
    let (db_url, cleanup, _dir) = if args.e2e_db == E2eDb::Sqlite {
        let dir = tempfile::tempdir()?;
        (
            format!("sqlite://{}/e2e.db?mode=rwc", dir.path().display()),
            None,
            Some(dir),
        )
    } else {
        let (url, name) = fresh_mysql(&args.mysql_admin_url).await?;
        (url, Some(name), None)
    };
    let mut s = settings.clone();
    s.pubsub.project_id = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    s.database.url = SecretString::from(db_url.clone());
    // A scratch database of the bench's own: the daemon migrates it.
    s.database.migrate_on_start = true;
    s.http.metrics_addr = "127.0.0.1:0".into();
    s.http.admin_token = None;
    for kind in [
        ConsumerKind::Netsuite,
        ConsumerKind::Suitex,
        ConsumerKind::Retry,
        ConsumerKind::Park,
    ] {
        match kind {
            ConsumerKind::Netsuite => s.consumers.netsuite.enabled = false,
            ConsumerKind::Suitex => s.consumers.suitex.enabled = false,
            ConsumerKind::Retry => s.consumers.retry.enabled = false,
            ConsumerKind::Park => s.consumers.park.enabled = false,
            ConsumerKind::Merge => {}
        }
    }
    let t = s.topology();
    provision::provision(&t, &ep).await?;
    // No tap on the merged topic: the emulator ignores subscription filters,
    // so a tap would receive every merged event and double the emulator's
    // delivery work in this run but not in the baseline's. Completion is read
    // from the database (every event stored, outbox empty = every merged
    // event's publish confirmed); latency is raw publish → stored.
    // The process-wide counter also counts the forward-only baseline's
    // publishes, made earlier in this process: count from here.
    let published_before = crate::metrics::metrics()
        .published
        .with_label_values(&["merged"])
        .get();
    let app = Application::build(s.clone()).await?;
    let store = app.store.clone();
    let shutdown = CancellationToken::new();
    let daemon = tokio::spawn(app.run(shutdown.clone()));

    let publishers = Arc::new(Publishers::new(t.clone(), &ep).await?);
    let mut sent_at: HashMap<String, DateTime<Utc>> = HashMap::with_capacity(gens.len());
    let expected = gens.len();
    for g in &gens {
        sent_at.insert(g.id.to_string(), Utc::now());
    }
    let started = Instant::now();
    publish_in_order(&publishers, &gens).await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    let finished = loop {
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events")
            .fetch_one(store.pool())
            .await?;
        let outbox = store.outbox_len().await?;
        if rows >= expected as i64 && outbox == 0 {
            break Instant::now();
        }
        if Instant::now() > deadline {
            bail!("end-to-end bench timed out: {rows} of {expected} events stored, {outbox} merged events unpublished");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let secs = finished.duration_since(started).as_secs_f64();
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events")
        .fetch_one(store.pool())
        .await?;
    let dup_rows: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM event_audit_log WHERE processing_outcome = 'duplicate'",
    )
    .fetch_one(store.pool())
    .await?;
    let published = crate::metrics::metrics()
        .published
        .with_label_values(&["merged"])
        .get()
        - published_before;
    let stored = sqlx::query(&format!(
        "SELECT id, {} AS created FROM events",
        store.dialect().ts("created_at")
    ))
    .fetch_all(store.pool())
    .await?;
    let mut lat: Vec<f64> = Vec::with_capacity(stored.len());
    for row in &stored {
        let id = crate::store::get_text(row, "id")?;
        let created = crate::store::parse_ts(&crate::store::get_text(row, "created")?)?;
        if let Some(sent) = sent_at.get(&id) {
            lat.push((created - *sent).num_microseconds().unwrap_or(0) as f64 / 1000.0);
        }
    }
    shutdown.cancel();
    let _ = daemon.await;
    teardown(&t, &ep, &[]).await;
    teardown(&topo, &ep, &[]).await;
    if let Some(name) = cleanup {
        drop_mysql(&args.mysql_admin_url, &name).await;
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    if rows != expected as i64 || dup_rows != dups as i64 || published < expected as u64 {
        bail!(
            "end-to-end bench lost or doubled events: rows {rows}/{expected}, duplicates {dup_rows}/{dups}, merged published {published}/{expected}"
        );
    }
    let rate = total_msgs as f64 / secs;
    Ok(json!({
        "database": args.e2e_db.as_str(),
        "raw_messages": total_msgs,
        "unique_events": expected,
        "duplicates": dups,
        "merged_published": published,
        "seconds": secs,
        "messages_per_s": rate,
        "latency_ms_raw_publish_to_stored": {"p50": percentile(&lat, 0.5), "p99": percentile(&lat, 0.99)},
        "baseline_ack_only_messages_per_s": baseline_rate,
        "ratio": rate / baseline_rate,
        "baseline_forward_only_messages_per_s": forward_rate,
        "ratio_to_forward_only": rate / forward_rate,
    }))
}

/// Deletes a bench topology's subscriptions and topics: the emulator keeps
/// every undelivered copy, and leftovers slow later runs down.
pub(super) async fn teardown(t: &Topology, ep: &clients::Endpoint, extra_subs: &[String]) {
    if let Ok(admin) = clients::subscription_admin(ep).await {
        let subs = ConsumerKind::all()
            .into_iter()
            .map(|k| t.subscription_path(k));
        for sub in subs.chain(extra_subs.iter().cloned()) {
            let _ = admin
                .delete_subscription()
                .set_subscription(sub)
                .send()
                .await;
        }
    }
    if let Ok(admin) = clients::topic_admin(ep).await {
        for kind in TopicKind::all() {
            let _ = admin
                .delete_topic()
                .set_topic(t.topic_path(kind))
                .send()
                .await;
        }
    }
}

/// Publishes every generated message (duplicates twice), each record's in
/// order on its own task (ordering keys keep per-publisher order only), the
/// records concurrently. The baseline gets the same keys, so both runs go
/// through the emulator's ordered delivery.
async fn publish_in_order(publishers: &Arc<Publishers>, gens: &[Gen]) -> anyhow::Result<()> {
    let mut by_record: HashMap<String, Vec<Bytes>> = HashMap::new();
    for g in gens {
        let copies = if g.duplicate { 2 } else { 1 };
        for _ in 0..copies {
            by_record
                .entry(g.key.clone())
                .or_default()
                .push(Bytes::from(g.json.clone()));
        }
    }
    let mut tasks = Vec::new();
    for (key, msgs) in by_record {
        let p = publishers.clone();
        tasks.push(tokio::spawn(async move {
            for data in msgs {
                p.publish_to(TopicKind::Raw, data, HashMap::new(), &key)
                    .await?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// Publishes the same messages to the raw topic of a throwaway topology and
/// times a consumer draining them: ack-only, or (`forward`) publishing each
/// to the merged topic with its ordering key and acking on confirmation.
async fn baseline(
    t: &Topology,
    ep: &clients::Endpoint,
    gens: &[Gen],
    forward: bool,
) -> anyhow::Result<f64> {
    let publishers = Arc::new(Publishers::new(t.clone(), ep).await?);
    let total: usize = gens.iter().map(|g| if g.duplicate { 2 } else { 1 }).sum();
    let subscriber = clients::subscriber(ep).await?;
    let sub = t.subscription_path(ConsumerKind::Merge);
    let fwd = publishers.clone();
    let consumer = tokio::spawn(async move {
        let mut stream = subscriber
            .subscribe(sub)
            .set_max_outstanding_messages(1000i64)
            .build();
        let mut n = 0usize;
        let mut pending = tokio::task::JoinSet::new();
        while n < total {
            match tokio::time::timeout(Duration::from_secs(60), stream.next()).await {
                Ok(Some(Ok((m, h)))) => {
                    if forward {
                        let p = fwd.clone();
                        pending.spawn(async move {
                            let ok = p
                                .publish_to(
                                    TopicKind::Merged,
                                    m.data,
                                    HashMap::new(),
                                    &m.ordering_key,
                                )
                                .await
                                .is_ok();
                            h.ack();
                            ok
                        });
                    } else {
                        h.ack();
                    }
                    n += 1;
                }
                _ => break,
            }
        }
        let mut forwarded = 0usize;
        while let Some(r) = pending.join_next().await {
            forwarded += usize::from(matches!(r, Ok(true)));
        }
        (n, forwarded, Instant::now())
    });
    let started = Instant::now();
    publish_in_order(&publishers, gens).await?;
    let (n, forwarded, finished) = consumer.await?;
    if n != total || (forward && forwarded != total) {
        bail!("baseline consumer drained {n} of {total} messages ({forwarded} forwarded)");
    }
    Ok(total as f64 / finished.duration_since(started).as_secs_f64())
}
