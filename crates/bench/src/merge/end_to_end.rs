//! End to end: raw events through the emulator into the daemon's merge stage
//! until every merged event is published, against the broker baselines.
//! Everything the run creates is held by [`Resources`] and removed on every
//! path, a failed or timed-out run included.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::baseline::{baseline, publish_in_order, teardown, BaselineRun};
use super::{generate, percentile, Args, E2eDb, Gen};
use crate::sql::scratch;
use backbone::app::{self, Application};
use backbone::config::Settings;
use backbone::pubsub::publisher::Publishers;
use backbone::pubsub::{clients, provision};
use backbone::store::Store;
use backbone::topology::{ConsumerKind, Topology};

/// What the run created and must remove: the daemon, the topologies, the
/// scratch database. Removed by [`Resources::teardown`], which the entry
/// point calls whatever the run returned.
#[derive(Default)]
struct Resources {
    daemon: Option<(
        CancellationToken,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    )>,
    topologies: Vec<Topology>,
    /// (admin url, database name).
    mysql: Option<(String, String)>,
    dir: Option<tempfile::TempDir>,
}

impl Resources {
    /// Stops the daemon first (it holds the database and subscriptions),
    /// then deletes the topologies and drops the database.
    async fn teardown(&mut self, ep: &clients::Endpoint) {
        if let Some((shutdown, daemon)) = self.daemon.take() {
            shutdown.cancel();
            let _ = daemon.await;
        }
        for t in self.topologies.drain(..).rev() {
            teardown(&t, ep, &[]).await;
        }
        if let Some((admin, name)) = self.mysql.take() {
            scratch::drop_mysql(&admin, &name).await;
        }
        self.dir.take();
    }

    /// Deletes one topology now, before the run ends.
    async fn remove(&mut self, t: &Topology, ep: &clients::Endpoint) {
        teardown(t, ep, &[]).await;
        self.topologies.retain(|x| x != t);
    }
}

/// Runs the measurement, tears down, then returns what it measured.
pub(super) async fn end_to_end(
    settings: &Settings,
    args: &Args,
) -> anyhow::Result<serde_json::Value> {
    if settings.pubsub.emulator_host.is_none() {
        bail!("bench needs the Pub/Sub emulator: set PUBSUB_EMULATOR_HOST (scripts/services.sh starts one)");
    }
    let ep = app::endpoint(settings);
    let mut res = Resources::default();
    let outcome = measure(settings, args, &ep, &mut res).await;
    res.teardown(&ep).await;
    outcome
}

fn bench_project() -> String {
    format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// The run in its steps: both broker baselines, the daemon started on a
/// scratch database, the backlog published and drained, then checked.
async fn measure(
    settings: &Settings,
    args: &Args,
    ep: &clients::Endpoint,
    res: &mut Resources,
) -> anyhow::Result<serde_json::Value> {
    let gens = generate(
        args.e2e_events,
        args.records,
        args.duplicate_rate,
        args.conflict_rate,
        args.seed,
    );
    let dups = gens.iter().filter(|g| g.duplicate).count();
    let total_msgs = gens.len() + dups;
    let expected = gens.len();

    let (ack_only, forward) = baselines(settings, ep, &gens, res).await?;
    let (baseline_rate, forward_rate) = (ack_only.rate, forward.rate);
    let daemon = start_daemon(settings, args, ep, res).await?;
    let label = daemon.topo.subscription_id(ConsumerKind::Merge);
    let (before, handled_before) = (
        super::engine_figures(),
        backbone::metrics::processing_figures(&label),
    );
    let (sent_at, timing) = publish_and_drain(&daemon, ep, &gens).await?;
    let secs = timing.drained;
    let (batches, per_batch, steps) = super::engine_means(&before, &super::engine_figures());
    let handled = backbone::metrics::processing_figures(&label);
    let handled_ms =
        (handled.1 - handled_before.1) * 1e3 / (handled.0 - handled_before.0).max(1) as f64;
    let checked = check(&daemon, &sent_at, expected, dups).await?;
    let lat = &checked.latency_ms;
    let rate = total_msgs as f64 / secs;
    Ok(json!({
        "database": args.e2e_db.as_str(),
        "raw_messages": total_msgs,
        "unique_events": expected,
        "duplicates": dups,
        "merged_published": checked.published,
        "seconds": secs,
        "publish_seconds": timing.published,
        "merge_batches": batches,
        "events_per_batch": per_batch,
        "batch_step_ms": steps,
        "receipt_to_ack_ms_mean": handled_ms,
        "messages_per_s": rate,
        "latency_ms_raw_publish_to_stored": {"p50": percentile(lat, 0.5), "p99": percentile(lat, 0.99)},
        "baseline_ack_only_messages_per_s": baseline_rate,
        "baseline_ack_only_publish_seconds": ack_only.published,
        "ratio": rate / baseline_rate,
        "baseline_forward_only_messages_per_s": forward_rate,
        "ratio_to_forward_only": rate / forward_rate,
    }))
}

/// The two broker baselines, each on a fresh topology: ack-only, and
/// forward-only.
async fn baselines(
    settings: &Settings,
    ep: &clients::Endpoint,
    gens: &[Gen],
    res: &mut Resources,
) -> anyhow::Result<(BaselineRun, BaselineRun)> {
    // Baseline: an ack-only consumer draining the same messages.
    let topo = Topology::new(settings.env, bench_project());
    res.topologies.push(topo.clone());
    provision::provision(&topo, ep).await?;
    let ack_only = baseline(&topo, ep, gens, false).await?;
    res.remove(&topo, ep).await;
    // Second baseline: a consumer that only forwards each message to the
    // merged topic (same ordering key) and acks on the publish confirmation
    // — the broker work the daemon cannot avoid, without any of its own.
    let topo = Topology::new(settings.env, bench_project());
    res.topologies.push(topo.clone());
    provision::provision(&topo, ep).await?;
    let forward = baseline(&topo, ep, gens, true).await?;
    Ok((ack_only, forward))
}

/// The daemon (merge consumer only) running in this process.
struct Daemon {
    store: Store,
    topo: Topology,
    /// The process-wide merged-publish counter before the daemon started.
    published_before: u64,
}

async fn start_daemon(
    settings: &Settings,
    args: &Args,
    ep: &clients::Endpoint,
    res: &mut Resources,
) -> anyhow::Result<Daemon> {
    let db_url = if args.e2e_db == E2eDb::Sqlite {
        let dir = tempfile::tempdir()?;
        let url = format!("sqlite://{}/e2e.db?mode=rwc", dir.path().display());
        res.dir = Some(dir);
        url
    } else {
        let (url, name) = scratch::create_mysql(&args.mysql_admin_url).await?;
        res.mysql = Some((args.mysql_admin_url.clone(), name));
        url
    };
    let mut s = settings.clone();
    s.pubsub.project_id = bench_project();
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
    let topo = s.topology();
    res.topologies.push(topo.clone());
    provision::provision(&topo, ep).await?;
    // No tap on the merged topic: the emulator ignores subscription filters,
    // so a tap would receive every merged event and double the emulator's
    // delivery work in this run but not in the baseline's. Completion is read
    // from the database (every event stored, outbox empty = every merged
    // event's publish confirmed); latency is raw publish → stored.
    // The process-wide counter also counts the forward-only baseline's
    // publishes, made earlier in this process: count from here.
    let published_before = backbone::metrics::published_count("merged");
    let app = Application::build(s.clone()).await?;
    let store = app.store.clone();
    let shutdown = CancellationToken::new();
    let daemon = tokio::spawn(app.run(shutdown.clone()));
    res.daemon = Some((shutdown, daemon));
    Ok(Daemon {
        store,
        topo,
        published_before,
    })
}

/// When each event was sent, by id; and the seconds from the first publish
/// until every event was stored and every merged event's publish confirmed.
async fn publish_and_drain(
    d: &Daemon,
    ep: &clients::Endpoint,
    gens: &[Gen],
) -> anyhow::Result<(HashMap<String, DateTime<Utc>>, Timing)> {
    let publishers = Arc::new(Publishers::new(d.topo.clone(), ep).await?);
    let mut sent_at: HashMap<String, DateTime<Utc>> = HashMap::with_capacity(gens.len());
    let expected = gens.len();
    for g in gens {
        sent_at.insert(g.id.to_string(), Utc::now());
    }
    let started = Instant::now();
    publish_in_order(&publishers, gens).await?;
    let published = started.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(600);
    let finished = loop {
        // The in-process publish counter first: polling the database every
        // few milliseconds would load the MariaDB the daemon writes to, a
        // cost the baselines do not pay. The database has the last word.
        let merged = backbone::metrics::published_count("merged") - d.published_before;
        if merged < expected as u64 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        let rows = crate::sql::bench::count_events(&d.store).await?;
        let outbox = d.store.outbox_len().await?;
        if rows >= expected as i64 && outbox == 0 {
            break Instant::now();
        }
        if Instant::now() > deadline {
            bail!("end-to-end bench timed out: {rows} of {expected} events stored, {outbox} merged events unpublished");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let drained = finished.duration_since(started).as_secs_f64();
    Ok((sent_at, Timing { published, drained }))
}

/// Seconds from the first publish until the last publish returned, and
/// until the drain ended.
struct Timing {
    published: f64,
    drained: f64,
}

/// What the drain left, once it is known nothing was lost or doubled.
struct Checked {
    /// Merged events published by the daemon.
    published: u64,
    /// Raw publish → stored per event, sorted.
    latency_ms: Vec<f64>,
}

/// Every unique event stored once, every duplicate audited as one, every
/// merged event published; or an error saying which is off.
async fn check(
    d: &Daemon,
    sent_at: &HashMap<String, DateTime<Utc>>,
    expected: usize,
    dups: usize,
) -> anyhow::Result<Checked> {
    let rows = crate::sql::bench::count_events(&d.store).await?;
    let dup_rows = crate::sql::bench::count_audit_outcome(&d.store, "duplicate").await?;
    let published = backbone::metrics::published_count("merged") - d.published_before;
    let stored = crate::sql::bench::event_stored_times(&d.store).await?;
    let mut lat: Vec<f64> = Vec::with_capacity(stored.len());
    for (id, created) in &stored {
        if let Some(sent) = sent_at.get(id) {
            lat.push((*created - *sent).num_microseconds().unwrap_or(0) as f64 / 1000.0);
        }
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    if rows != expected as i64 || dup_rows != dups as i64 || published < expected as u64 {
        bail!(
            "end-to-end bench lost or doubled events: rows {rows}/{expected}, duplicates {dup_rows}/{dups}, merged published {published}/{expected}"
        );
    }
    Ok(Checked {
        published,
        latency_ms: lat,
    })
}
