//! Stage capacity: the merge engine fed directly (no broker) on MariaDB and
//! SQLite, against one transaction per message and the database ceiling.

use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::json;

use super::{generate, Args};
use crate::sql::{ceiling, scratch};
use backbone::config::Settings;
use backbone::model::raw_event::parse_raw_event;
use backbone::stages::merge::batch::{EngineConfig, EventItem, Item, MergeEngine};
use backbone::store::Store;

/// Steps of a merge batch, as timed by the engine (`stage_step_duration`).
pub(crate) const MERGE_STEPS: &[&str] = &[
    "read_view",
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
pub(crate) fn engine_figures() -> Vec<(u64, f64)> {
    backbone::metrics::merge_figures(MERGE_STEPS)
}

/// Between two [`engine_figures`] readings: the batches, their mean
/// events, and each step's mean milliseconds per batch.
pub(crate) fn engine_means(
    before: &[(u64, f64)],
    after: &[(u64, f64)],
) -> (u64, f64, serde_json::Map<String, serde_json::Value>) {
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
    (batches, per_tx, steps)
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
                let (url, name) = scratch::create_mysql(&args.mysql_admin_url).await?;
                (url, Some(name), None)
            }
            _ => {
                let dir = tempfile::tempdir()?;
                let url = format!("sqlite://{}/bench.db?mode=rwc", dir.path().display());
                (url, None, Some(dir))
            }
        };
        let connected = async {
            let store = Store::connect(&url, 16, Duration::from_secs(10)).await?;
            store.migrate().await?;
            Ok::<_, backbone::store::StoreError>(store)
        };
        match connected.await {
            Ok(store) => Ok(Self {
                store,
                mysql_db,
                _dir: dir,
            }),
            // The database was created: drop it, or it outlives the bench.
            Err(e) => {
                if let Some(name) = mysql_db {
                    scratch::drop_mysql(&args.mysql_admin_url, &name).await;
                }
                Err(e.into())
            }
        }
    }

    async fn discard(self, args: &Args) {
        self.store.close().await;
        if let Some(name) = self.mysql_db {
            scratch::drop_mysql(&args.mysql_admin_url, &name).await;
        }
    }
}

pub(super) async fn stage_capacity(
    settings: &Settings,
    args: &Args,
) -> anyhow::Result<serde_json::Value> {
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
    let workers = if store.backend() == backbone::store::Backend::Sqlite {
        1
    } else {
        settings.merge.workers
    };
    // Baseline: one transaction per message, on a slice of the events.
    let base_n = (args.stage_events / 10).max(500);
    let baseline = feed(
        store,
        settings,
        args.conflict_rate,
        records,
        base_n,
        1,
        args.seed + 1,
    )
    .await?;
    ceiling::clear_outbox(store).await?;
    let before = engine_figures();
    let batched = feed(
        store,
        settings,
        args.conflict_rate,
        records,
        args.stage_events,
        settings.merge.batch_max,
        args.seed,
    )
    .await?;
    let after = engine_figures();
    let (_, per_tx, steps) = engine_means(&before, &after);
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
pub(crate) struct Fed {
    pub(crate) rate: f64,
    pub(crate) prefix: String,
}

/// Feeds `n` events through a merge engine (one task per record, so each
/// record's events stay in order) and checks every one was persisted once.
/// The outbox keeps the run's rows (nothing publishes them).
pub(crate) async fn feed(
    store: &Store,
    settings: &Settings,
    conflict_rate: f64,
    records: usize,
    n: usize,
    batch_max: usize,
    seed: u64,
) -> anyhow::Result<Fed> {
    let confirmed = backbone::store::outbox::ConfirmedSet::default();
    let engine = MergeEngine::start(
        store.clone(),
        EngineConfig {
            policy: settings.merge_policy(),
            merged_topic: "projects/bench-proj/topics/events.merged.local".into(),
            batch_max,
            linger: settings.merge.batch_linger,
            workers: if store.backend() == backbone::store::Backend::Sqlite {
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
        backbone::runtime::outbox_relay::OutboxCompleter::start(store.clone(), confirmed);
    // Distinct record ids per run so runs don't see each other's state.
    let prefix = uuid::Uuid::new_v4().simple().to_string();
    let mut per_record: Vec<Vec<Item>> = (0..records).map(|_| Vec::new()).collect();
    for (i, g) in generate(n, records, 0.0, conflict_rate, seed)
        .into_iter()
        .enumerate()
    {
        let mut ev = parse_raw_event(g.json.as_bytes()).map_err(|e| anyhow::anyhow!("{e}"))?;
        ev.record_id = format!("{prefix}-{}", ev.record_id);
        let changes = ev.changes.clone();
        let fp = backbone::model::fingerprint::fingerprint(&ev, &changes);
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
                    Ok(backbone::stages::merge::batch::Decision::Merged { publish, .. }) => {
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
