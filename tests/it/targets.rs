//! Targets under pressure (docs/spec.md §4.2), end to end: raw → merge → delivery
//! to stand-in targets that behave like the real ones — a NetSuite-like one
//! that allows a few requests in flight and answers 429 over that, a
//! SuiteX-like one behind a token bucket that answers 429 with Retry-After,
//! one that answers 503 to everything for a while (a maintenance window),
//! one that is not there at all, one that always fails one record.
//!
//! Each test prints what the targets saw; the assertions are the spec's:
//! nothing dead-lettered or retried for the target's own limits or
//! outages, a target never sees a version below one it acknowledged, and
//! one request in flight per record across replicas.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use backbone::store::Store;
use backbone::topology::TopicKind;
use bytes::Bytes;
use serde_json::{json, Value};

use crate::support::*;

const WAIT: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------------------
// The stand-in target

/// How a stand-in answers.
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// 429 (no Retry-After) to a request beyond this many in flight.
    pub cap: Option<usize>,
    /// A token bucket of this many requests per second (burst of one
    /// second's worth); 429 with `Retry-After: 1` when empty.
    pub rate: Option<f64>,
    /// How long an accepted request takes.
    pub latency: Duration,
    /// 503 (no Retry-After) to everything: a maintenance window.
    pub down: bool,
    /// 500 to every request for this record id; the rest are served.
    pub fail_record: Option<String>,
    /// 400 to everything: the target refuses every message for good.
    pub reject: bool,
}

#[derive(Debug, Clone)]
pub struct Hit {
    pub record: String,
    /// When the request arrived.
    pub at: Instant,
    pub status: u16,
    pub body: Value,
    /// The request carried `X-Backbone-Resync: true` (`records resync`).
    pub resync: bool,
}

#[derive(Default)]
struct TargetState {
    behaviour: Mutex<Behaviour>,
    inflight: AtomicUsize,
    peak: AtomicUsize,
    /// Requests in flight per record, and how often a second one came.
    per_record: Mutex<HashMap<String, usize>>,
    overlaps: AtomicUsize,
    /// Highest version answered 2xx per record, and requests below it.
    acked: Mutex<HashMap<String, i64>>,
    back_in_time: AtomicUsize,
    hits: Mutex<Vec<Hit>>,
    bucket: Mutex<Option<(f64, Instant)>>,
    /// Requests whose client went away before the answer.
    abandoned: AtomicUsize,
}

/// A request in flight: counted out when answered or when its client goes
/// away (the handler is dropped), so an abandoned request is no overlap.
struct InFlight<'a> {
    s: &'a TargetState,
    record: String,
    answered: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.s.abandoned.fetch_add(1, Ordering::SeqCst);
        }
        if let Some(n) = lock(&self.s.per_record).get_mut(&self.record) {
            *n -= 1;
        }
        self.s.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A stand-in target on 127.0.0.1.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    state: Arc<TargetState>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn answer(
    State(s): State<Arc<TargetState>>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let resync = headers
        .get("x-backbone-resync")
        .is_some_and(|v| v.as_bytes() == b"true");
    let ev: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let record = format!(
        "{}:{}",
        ev["record_type"].as_str().unwrap_or("?"),
        ev["record_id"].as_str().unwrap_or("?")
    );
    let version = ev["version"].as_i64().unwrap_or(-1);
    let at = Instant::now();
    let b = lock(&s.behaviour).clone();
    let now_inflight = s.inflight.fetch_add(1, Ordering::SeqCst) + 1;
    s.peak.fetch_max(now_inflight, Ordering::SeqCst);
    {
        let mut per = lock(&s.per_record);
        let n = per.entry(record.clone()).or_insert(0);
        *n += 1;
        if *n > 1 {
            s.overlaps.fetch_add(1, Ordering::SeqCst);
        }
    }
    let mut inflight = InFlight {
        s: &s,
        record: record.clone(),
        answered: false,
    };
    if lock(&s.acked).get(&record).is_some_and(|a| version < *a) {
        s.back_in_time.fetch_add(1, Ordering::SeqCst);
    }
    let (status, retry_after) = if b.down {
        (503, None)
    } else if b.reject {
        (400, None)
    } else if b.cap.is_some_and(|c| now_inflight > c) {
        (429, None)
    } else if b.rate.is_some_and(|rate| !take_token(&s, rate)) {
        (429, Some(1))
    } else if b.fail_record.as_deref() == ev["record_id"].as_str() {
        (500, None)
    } else {
        tokio::time::sleep(b.latency).await;
        (200, None)
    };
    if status == 200 {
        let mut acked = lock(&s.acked);
        let a = acked.entry(record.clone()).or_insert(version);
        *a = (*a).max(version);
    }
    lock(&s.hits).push(Hit {
        record: record.clone(),
        at,
        status,
        body: ev,
        resync,
    });
    inflight.answered = true;
    drop(inflight);
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    match retry_after {
        Some(secs) => (code, [("retry-after", secs.to_string())], "slow down").into_response(),
        None => (code, "").into_response(),
    }
}

fn take_token(s: &TargetState, rate: f64) -> bool {
    let mut bucket = lock(&s.bucket);
    let now = Instant::now();
    let (tokens, at) = bucket.get_or_insert((rate, now));
    *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(rate);
    *at = now;
    if *tokens >= 1.0 {
        *tokens -= 1.0;
        true
    } else {
        false
    }
}

impl Target {
    /// Starts listening on `port` (0: any free port).
    pub async fn start(port: u16, behaviour: Behaviour) -> Target {
        let state = Arc::new(TargetState::default());
        *lock(&state.behaviour) = behaviour;
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind the stand-in target");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Target { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}/merged-events", self.addr)
    }

    pub fn set(&self, f: impl FnOnce(&mut Behaviour)) {
        f(&mut lock(&self.state.behaviour));
    }

    pub fn hits(&self) -> Vec<Hit> {
        lock(&self.state.hits).clone()
    }

    pub fn count(&self, status: u16) -> usize {
        lock(&self.state.hits)
            .iter()
            .filter(|h| h.status == status)
            .count()
    }

    pub fn peak(&self) -> usize {
        self.state.peak.load(Ordering::SeqCst)
    }

    pub fn overlaps(&self) -> usize {
        self.state.overlaps.load(Ordering::SeqCst)
    }

    /// Requests whose client went away before they were answered.
    pub fn abandoned(&self) -> usize {
        self.state.abandoned.load(Ordering::SeqCst)
    }

    /// Requests being answered now.
    pub fn inflight(&self) -> usize {
        self.state.inflight.load(Ordering::SeqCst)
    }

    pub fn back_in_time(&self) -> usize {
        self.state.back_in_time.load(Ordering::SeqCst)
    }

    /// The highest version acknowledged per record.
    pub fn acked(&self) -> HashMap<String, i64> {
        lock(&self.state.acked).clone()
    }

    pub fn summary(&self, name: &str) -> String {
        format!(
            "{name}: requests={} ok={} 429={} 500={} 503={} peak_inflight={} same_record_overlaps={} back_in_time={}",
            self.hits().len(),
            self.count(200),
            self.count(429),
            self.count(500),
            self.count(503),
            self.peak(),
            self.overlaps(),
            self.back_in_time()
        )
    }
}

// ---------------------------------------------------------------------------
// Deployment and checks

/// Fast retries, a 2 s target timeout and probes at most 1 s apart.
pub(crate) fn vars() -> Vec<(&'static str, &'static str)> {
    vec![
        ("BACKBONE__TARGETS__NETSUITE__TIMEOUT", "2s"),
        ("BACKBONE__TARGETS__SUITEX__TIMEOUT", "2s"),
        ("BACKBONE__TARGETS__NETSUITE__PROBE_MAX_INTERVAL", "1s"),
        ("BACKBONE__TARGETS__SUITEX__PROBE_MAX_INTERVAL", "1s"),
        ("BACKBONE__RETRY__INITIAL_BACKOFF", "100ms"),
        ("BACKBONE__RETRY__MAX_BACKOFF", "1s"),
    ]
}

pub(crate) async fn deploy(db: Db, ns: &str, sx: &str, extra: &[(&str, &str)]) -> Option<TestApp> {
    let o = Overrides::new()
        .targets(ns, sx)
        .local_snapshots()
        .vars(&vars())
        .vars(extra);
    TestApp::spawn(db, o).await
}

/// `versions` raw events for each of `records` records, from `source`
/// for even records and the other source for odd ones when `mixed`.
pub(crate) async fn publish_flow(
    app: &TestApp,
    records: usize,
    versions: i64,
    mixed: bool,
    pace: Duration,
) {
    let p = publishers(&app.topology).await;
    let event = |r: usize, v: i64| {
        let source = if mixed && r % 2 == 1 {
            "netsuite"
        } else {
            "suitex"
        };
        let ts = format!("2026-03-13T10:{:02}:{:02}.{:06}Z", v % 60, r % 60, r);
        raw_event(
            source,
            "project",
            &format!("p{r:04}"),
            v,
            &ts,
            json!({"name": format!("n{r}-v{}", v + 1), "step": v + 1}),
        )
    };
    for v in 0..versions {
        if pace.is_zero() {
            // A bulk import: each version of every record at once (a record's
            // versions stay in order: one round per version).
            let round: Vec<String> = (0..records).map(|r| event(r, v)).collect();
            futures::future::join_all(round.iter().map(|ev| publish_raw(&p, ev))).await;
            continue;
        }
        for r in 0..records {
            publish_raw(&p, &event(r, v)).await;
            tokio::time::sleep(pace).await;
        }
    }
}

pub(crate) async fn scalar(store: &Store, sql: &str) -> i64 {
    count(store, sql).await
}

/// Every record reached `versions` in the store and the target
/// acknowledged it (for the records routed to it).
pub(crate) async fn converged(
    app: &TestApp,
    target: &Target,
    records: &[String],
    versions: i64,
) -> bool {
    // Scaled up by hand (TARGETS_*), a run takes longer than the default.
    let within = WAIT.max(Duration::from_millis(100) * (records.len() as u32 * versions as u32));
    eventually(within, || async {
        let merged = scalar(
            &app.store,
            &format!("SELECT COUNT(*) FROM record_state WHERE version = {versions}"),
        )
        .await;
        let acked = target.acked();
        merged as usize >= records.len()
            && records
                .iter()
                .all(|r| acked.get(r).copied() == Some(versions))
    })
    .await
}

pub(crate) async fn dead_letters(app: &TestApp) -> i64 {
    scalar(&app.store, "SELECT COUNT(*) FROM dead_letters").await
}

/// Failed delivery executions recorded (each one spent an attempt).
pub(crate) async fn spent_attempts(app: &TestApp) -> i64 {
    scalar(
        &app.store,
        "SELECT COUNT(*) FROM event_audit_log WHERE stage LIKE 'deliver.%' \
         AND processing_outcome IN ('transient', 'exhausted', 'permanent')",
    )
    .await
}

pub(crate) async fn gauge(app: &TestApp, name: &str, target: &str) -> Option<f64> {
    let text = reqwest::get(format!("http://{}/metrics", app.metrics_addr()))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    series(&text, name, target)
        .into_iter()
        .map(|(_, v)| v)
        .reduce(f64::max)
}

/// `name`'s series for `target`: their labels and values.
fn series(text: &str, name: &str, target: &str) -> Vec<(String, f64)> {
    let want = format!("target=\"{target}\"");
    text.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix('{'))
        .filter_map(|l| {
            let (labels, value) = l.split_once("} ")?;
            if !labels.split(',').any(|p| p == want) {
                return None;
            }
            Some((labels.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// Why a target's circuit is open (`backbone_target_circuit_open{cause}`).
pub async fn circuit_cause(app: &TestApp, target: &str) -> Option<String> {
    let text = reqwest::get(format!("http://{}/metrics", app.metrics_addr()))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    series(&text, "backbone_target_circuit_open", target)
        .into_iter()
        .find(|(_, v)| *v == 1.0)
        .and_then(|(labels, _)| {
            labels
                .split(',')
                .find_map(|p| p.strip_prefix("cause=\""))
                .map(|c| c.trim_end_matches('"').to_string())
        })
}

/// A scale knob for a longer run by hand (the defaults keep CI short).
pub(crate) fn env_or(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub(crate) fn records(n: usize, odd_only: Option<bool>) -> Vec<String> {
    (0..n)
        .filter(|r| odd_only.is_none_or(|odd| (r % 2 == 1) == odd))
        .map(|r| format!("project:p{r:04}"))
        .collect()
}

// ---------------------------------------------------------------------------
// Tests

/// A bulk import against targets with real limits: paced, not refused.
async fn bulk_import(db: Db) {
    let ns = Target::start(
        0,
        Behaviour {
            cap: Some(5),
            latency: Duration::from_millis(40),
            ..Default::default()
        },
    )
    .await;
    let sx = Target::start(
        0,
        Behaviour {
            rate: Some(25.0),
            latency: Duration::from_millis(40),
            ..Default::default()
        },
    )
    .await;
    let Some(app) = deploy(db, &ns.url(), &sx.url(), &[]).await else {
        return;
    };
    let n = env_or("TARGETS_BULK_RECORDS", 200);
    let versions = env_or("TARGETS_BULK_VERSIONS", 2) as i64;
    let t = Instant::now();
    publish_flow(&app, n, versions, true, Duration::ZERO).await;
    // suitex-sourced (even) records go to NetSuite, the others to SuiteX.
    let to_ns = records(n, Some(false));
    let to_sx = records(n, Some(true));
    let ns_done = converged(&app, &ns, &to_ns, versions).await;
    let sx_done = converged(&app, &sx, &to_sx, versions).await;
    let took = t.elapsed();
    let rate = |t: &Target| t.count(200) as f64 / took.as_secs_f64();
    eprintln!(
        "bulk import of {n} records × {versions} versions in {took:?}: netsuite {:.0} ok/s (its capacity: 5 / 40 ms = 125/s), suitex {:.0} ok/s (capacity 25/s)",
        rate(&ns),
        rate(&sx)
    );
    eprintln!("  {}", ns.summary("netsuite (5 in flight, 40 ms)"));
    eprintln!("  {}", sx.summary("suitex (25 req/s, 40 ms)"));
    eprintln!(
        "  limits now: netsuite {:?}, suitex {:?}; throttled_total netsuite {:?}, suitex {:?}",
        gauge(&app, "backbone_target_concurrency_limit", "netsuite").await,
        gauge(&app, "backbone_target_concurrency_limit", "suitex").await,
        gauge(&app, "backbone_target_throttled_total", "netsuite").await,
        gauge(&app, "backbone_target_throttled_total", "suitex").await,
    );
    assert!(
        ns_done && sx_done,
        "every record delivered at its last version"
    );
    assert_eq!(dead_letters(&app).await, 0, "nothing dead-lettered");
    assert_eq!(spent_attempts(&app).await, 0, "a 429 spends no attempt");
    let refused = |t: &Target| t.count(429) as f64 / t.hits().len().max(1) as f64;
    // Unpaced, more than half of these requests were refused.
    assert!(refused(&ns) < 0.15, "{}", ns.summary("netsuite"));
    assert!(refused(&sx) < 0.15, "{}", sx.summary("suitex"));
    assert_eq!(ns.back_in_time() + sx.back_in_time(), 0, "P1");
    app.stop().await;
}

#[tokio::test]
async fn targets_bulk_import_is_paced_to_what_the_targets_accept_mariadb() {
    bulk_import(Db::Mariadb).await;
}

/// Both targets answer 503 to everything for a while: held, not spent.
async fn maintenance_window(db: Db) {
    let down = Behaviour {
        down: true,
        latency: Duration::from_millis(5),
        ..Default::default()
    };
    let ns = Target::start(0, down.clone()).await;
    let sx = Target::start(0, down).await;
    let Some(app) = deploy(db, &ns.url(), &sx.url(), &[]).await else {
        return;
    };
    // 120 events at about 10/s over 40 records by default; the window
    // lasts the whole flow and `TARGETS_WINDOW_SECS` more (3).
    let n = env_or("TARGETS_RECORDS", 40);
    let versions = env_or("TARGETS_VERSIONS", 3) as i64;
    let t = Instant::now();
    publish_flow(&app, n, versions, true, Duration::from_millis(100)).await;
    tokio::time::sleep(Duration::from_secs(env_or("TARGETS_WINDOW_SECS", 3) as u64)).await;
    eprintln!(
        "maintenance window: {} events over {n} records at ~10/s, targets down for {:?}",
        n as i64 * versions,
        t.elapsed()
    );
    let open_ns = gauge(&app, "backbone_target_circuit_open", "netsuite").await;
    let open_sx = gauge(&app, "backbone_target_circuit_open", "suitex").await;
    let held = gauge(&app, "backbone_target_held", "netsuite").await;
    let probes = gauge(&app, "backbone_target_probes_total", "netsuite").await;
    let ready = reqwest::get(format!("http://{}/readyz", app.metrics_addr()))
        .await
        .expect("readyz");
    let ready_status = ready.status();
    let detail: Value = ready.json().await.expect("readyz json");
    eprintln!(
        "during the window: circuit_open netsuite={open_ns:?} suitex={open_sx:?} held={held:?} probes={probes:?}; /readyz {ready_status} targets={}",
        detail["targets"]
    );
    eprintln!("  {}", ns.summary("netsuite"));
    eprintln!("  {}", sx.summary("suitex"));
    assert_eq!(open_ns, Some(1.0), "the circuit opened");
    assert_eq!(open_sx, Some(1.0));
    assert_eq!(
        circuit_cause(&app, "netsuite").await.as_deref(),
        Some("outage"),
        "cause label"
    );
    assert_eq!(
        ready_status, 200,
        "a target outage is not ours: still ready"
    );
    assert!(detail["targets"]
        .as_array()
        .is_some_and(|t| t.iter().any(|t| t["circuit_open"] == true)));
    // The window ends.
    ns.set(|b| b.down = false);
    sx.set(|b| b.down = false);
    let t = Instant::now();
    let ns_done = converged(&app, &ns, &records(n, Some(false)), versions).await;
    let sx_done = converged(&app, &sx, &records(n, Some(true)), versions).await;
    eprintln!("after the window: converged in {:?}", t.elapsed());
    eprintln!("  {}", ns.summary("netsuite"));
    eprintln!("  {}", sx.summary("suitex"));
    assert!(
        ns_done && sx_done,
        "every record reached its last version at its target"
    );
    assert_eq!(dead_letters(&app).await, 0, "nothing dead-lettered");
    // Before the circuit opens, a failure with nothing else going to the
    // target for a second is taken as the message's own: at most the first
    // one per target spends an attempt (it is held on its retry).
    let spent = spent_attempts(&app).await;
    eprintln!("  failed executions recorded: {spent}");
    assert!(spent <= 2, "{spent} attempts spent on the target's outage");
    assert_eq!(
        gauge(&app, "backbone_target_circuit_open", "netsuite").await,
        Some(0.0)
    );
    assert_eq!(ns.back_in_time() + sx.back_in_time(), 0, "P1");
    app.stop().await;
}

#[tokio::test]
async fn targets_maintenance_window_holds_without_dead_letters_sqlite() {
    maintenance_window(Db::Sqlite).await;
}

#[tokio::test]
async fn targets_maintenance_window_holds_without_dead_letters_mariadb() {
    maintenance_window(Db::Mariadb).await;
}

/// Nobody listens at the target's address; it comes up later.
#[tokio::test]
async fn targets_refused_connections_hold_until_the_target_comes_up() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/merged-events");
    let sx = Target::start(0, Behaviour::default()).await;
    let error = std::sync::OnceLock::new();
    let o = Overrides::new()
        .targets(&url, &sx.url())
        .local_snapshots()
        .vars(&vars());
    let Some(mut app) = TestApp::prepare(Db::Sqlite, o).await else {
        return;
    };
    let _ = error.set(tap(&app.topology, TopicKind::Error).await);
    app.start().await;
    publish_flow(&app, 10, 1, false, Duration::ZERO).await;
    let held = eventually(Duration::from_secs(20), || async {
        gauge(&app, "backbone_target_held", "netsuite")
            .await
            .is_some_and(|h| h >= 1.0)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let envelopes = error.get().unwrap().drain(Duration::from_millis(500)).await;
    let probes = gauge(&app, "backbone_target_probes_total", "netsuite").await;
    eprintln!(
        "target down: held={:?} probes={probes:?} error envelopes={}",
        gauge(&app, "backbone_target_held", "netsuite").await,
        envelopes.len()
    );
    assert!(held, "deliveries are held");
    assert!(envelopes.is_empty(), "nothing went to the retry path");
    assert!(probes.is_some_and(|p| p >= 1.0), "the target is probed");
    let ns = Target::start(port, Behaviour::default()).await;
    let done = converged(&app, &ns, &records(10, None), 1).await;
    eprintln!("  {}", ns.summary("netsuite after it came up"));
    assert!(done, "delivered once the target is up");
    assert_eq!(spent_attempts(&app).await, 0);
    app.stop().await;
}

/// A 429 with Retry-After pauses the whole target, not one message.
#[tokio::test]
async fn targets_retry_after_pauses_every_delivery_to_the_target() {
    let ns = Target::start(
        0,
        Behaviour {
            rate: Some(3.0),
            ..Default::default()
        },
    )
    .await;
    let sx = Target::start(0, Behaviour::default()).await;
    let Some(app) = deploy(Db::Sqlite, &ns.url(), &sx.url(), &[]).await else {
        return;
    };
    let t = Instant::now();
    publish_flow(&app, 12, 1, false, Duration::ZERO).await;
    let done = converged(&app, &ns, &records(12, None), 1).await;
    eprintln!("{} in {:?}", ns.summary("netsuite (3 req/s)"), t.elapsed());
    assert!(done);
    assert_eq!(spent_attempts(&app).await, 0, "a 429 spends no attempt");
    // Each `Retry-After: 1` pauses every delivery for a second: after a 429,
    // only requests already on their way arrive within that second.
    let hits = ns.hits();
    for h in hits.iter().filter(|h| h.status == 429) {
        let early: Vec<Duration> = hits
            .iter()
            .filter(|o| o.at > h.at)
            .map(|o| o.at - h.at)
            .filter(|d| *d > Duration::from_millis(50) && *d < Duration::from_millis(950))
            .collect();
        assert!(
            early.is_empty(),
            "requests {early:?} after a 429 that asked for 1 s"
        );
    }
    assert!(ns.count(429) <= 12, "{}", ns.summary("netsuite"));
    app.stop().await;
}

/// One record always fails while the target serves the others: that is the
/// record's problem — the retry schedule and the DLQ, and no circuit.
#[tokio::test]
async fn targets_one_failing_record_is_dead_lettered_while_the_others_flow() {
    let ns = Target::start(
        0,
        Behaviour {
            fail_record: Some("p0000".into()),
            latency: Duration::from_millis(5),
            ..Default::default()
        },
    )
    .await;
    let sx = Target::start(0, Behaviour::default()).await;
    let Some(app) = deploy(Db::Sqlite, &ns.url(), &sx.url(), &[]).await else {
        return;
    };
    let p = publishers(&app.topology).await;
    publish_raw(
        &p,
        &raw_event(
            "suitex",
            "project",
            "p0000",
            0,
            "2026-03-13T10:00:00.000000Z",
            json!({"name": "always refused"}),
        ),
    )
    .await;
    // Other records keep flowing meanwhile.
    let mut i = 1;
    let parked = eventually(WAIT, || {
        i += 1;
        let p = p.clone();
        let app = &app;
        async move {
            let ev = raw_event(
                "suitex",
                "project",
                &format!("p{i:04}"),
                0,
                "2026-03-13T10:00:01.000000Z",
                json!({"name": "fine"}),
            );
            publish_raw(&p, &ev).await;
            scalar(
                &app.store,
                "SELECT COUNT(*) FROM dead_letters WHERE reason = 'exhausted' \
                 AND record_id = 'p0000'",
            )
            .await
                == 1
        }
    })
    .await;
    let failing: Vec<Hit> = ns
        .hits()
        .into_iter()
        .filter(|h| h.record == "project:p0000")
        .collect();
    eprintln!(
        "{}; requests for the failing record: {}",
        ns.summary("netsuite"),
        failing.len()
    );
    assert!(parked, "the failing record is dead-lettered `exhausted`");
    assert_eq!(failing.len(), 5, "five executions, as docs/spec.md §4 says");
    assert_eq!(
        gauge(&app, "backbone_target_circuit_open", "netsuite").await,
        Some(0.0),
        "the circuit stayed closed"
    );
    assert_eq!(
        gauge(&app, "backbone_target_probes_total", "netsuite").await,
        Some(0.0)
    );
    app.stop().await;
}

/// Two replicas on the same subscriptions: one request in flight per record
/// at the target, never back in time (docs/spec.md §4.1 P1 with N replicas).
#[tokio::test]
async fn targets_two_replicas_deliver_one_request_per_record_at_a_time() {
    let ns = Target::start(
        0,
        Behaviour {
            latency: Duration::from_millis(30),
            ..Default::default()
        },
    )
    .await;
    let sx = Target::start(0, Behaviour::default()).await;
    let Some(mut app) = deploy(Db::Mariadb, &ns.url(), &sx.url(), &[]).await else {
        return;
    };
    app.start().await;
    let (n, versions) = (10, 8);
    publish_flow(&app, n, versions, false, Duration::ZERO).await;
    let done = converged(&app, &ns, &records(n, None), versions).await;
    eprintln!("two replicas: {}", ns.summary("netsuite"));
    assert!(done, "every record delivered at its last version");
    assert_eq!(ns.overlaps(), 0, "one request in flight per record");
    assert_eq!(ns.back_in_time(), 0, "P1");
    // P2: the bodies in arrival order fold to the record's merged fields.
    let mut fields: HashMap<String, serde_json::Map<String, Value>> = HashMap::new();
    for h in ns.hits().iter().filter(|h| h.status == 200) {
        let f = fields.entry(h.record.clone()).or_default();
        if let Some(applied) = h.body["applied"].as_object() {
            for (k, v) in applied {
                f.insert(k.clone(), v.clone());
            }
        }
    }
    for r in 0..n {
        let got = &fields[&format!("project:p{r:04}")];
        assert_eq!(got["step"], json!(versions), "{r}: {got:?}");
    }
    app.stop().await;
}

/// Takes the NetSuite lease on `record_id` for `for_` as another replica
/// (holder 42) would once the daemon's had run out.
async fn take_lease_over(app: &TestApp, record_id: &str, for_: Duration) {
    let until = chrono::Utc::now().timestamp_millis() + for_.as_millis() as i64;
    sqlx::query(
        "UPDATE delivery_state SET lease_holder = 42, lease_until = ? \
         WHERE target = 'netsuite' AND record_id = ?",
    )
    .bind(until)
    .bind(record_id)
    .execute(app.store.pool())
    .await
    .expect("take the lease over");
}

/// A request slower than the delivery lease keeps it (docs/spec.md §4.2):
/// the holder renews it while the request is out, so the other replica
/// never sends the record meanwhile, and a dead replica's lease can be
/// seconds long instead of longer than the slowest request.
#[tokio::test]
async fn targets_a_request_slower_than_its_lease_keeps_it_across_replicas() {
    let (ns, sx) = slow_netsuite(Duration::from_secs(6)).await;
    let slow = [
        ("BACKBONE__TARGETS__NETSUITE__TIMEOUT", "20s"),
        ("BACKBONE__TARGETS__NETSUITE__LEASE_TTL", "3s"),
    ];
    let Some(mut app) = deploy(Db::Mariadb, &ns.url(), &sx.url(), &slow).await else {
        return;
    };
    app.start().await;
    publish_flow(&app, 1, 1, false, Duration::ZERO).await;
    assert!(
        eventually(WAIT, || async { ns.inflight() == 1 }).await,
        "the request reached NetSuite"
    );
    // Past the lease's first 3 s: still held, and running out later.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let lease = app
        .store
        .delivery_lease_holder("netsuite", "project", "p0000")
        .await
        .expect("read the lease");
    let now_ms = chrono::Utc::now().timestamp_millis();
    eprintln!("4.5 s into a 6 s request under a 3 s lease: {lease:?}, now {now_ms}");
    let (_, until) = lease.expect("the lease is held while the request is out");
    assert!(until > now_ms, "renewed: runs out at {until}, now {now_ms}");
    let done = converged(&app, &ns, &records(1, None), 1).await;
    eprintln!("{}; abandoned={}", ns.summary("netsuite"), ns.abandoned());
    assert!(done, "delivered");
    assert_eq!(
        ns.hits().len(),
        1,
        "one request: nobody else sent the record"
    );
    assert_eq!((ns.overlaps(), ns.abandoned()), (0, 0));
    app.stop().await;
}

/// A delivery whose lease is no longer its own abandons the request still
/// out before the lease could pass to another replica (P1): here the test
/// takes the lease over by hand mid-request, as a replica would once it
/// ran out. The record is then sent again under a lease of its own,
/// nothing is dead-lettered and no attempt is spent.
#[tokio::test]
async fn targets_a_request_whose_lease_is_taken_over_is_abandoned_and_sent_again() {
    let (ns, sx) = slow_netsuite(Duration::from_secs(6)).await;
    let slow = [
        ("BACKBONE__TARGETS__NETSUITE__TIMEOUT", "20s"),
        ("BACKBONE__TARGETS__NETSUITE__LEASE_TTL", "3s"),
    ];
    let Some(app) = deploy(Db::Sqlite, &ns.url(), &sx.url(), &slow).await else {
        return;
    };
    publish_flow(&app, 1, 1, false, Duration::ZERO).await;
    assert!(
        eventually(WAIT, || async { ns.inflight() == 1 }).await,
        "the request reached NetSuite"
    );
    let taken = Instant::now();
    take_lease_over(&app, "p0000", Duration::from_millis(1500)).await;
    // The next renewal (a second apart) finds it gone.
    let gave_up = eventually(Duration::from_secs(4), || async { ns.abandoned() == 1 }).await;
    let after = taken.elapsed();
    let done = converged(&app, &ns, &records(1, None), 1).await;
    eprintln!(
        "abandoned {:.1} s after the take-over; {}",
        after.as_secs_f64(),
        ns.summary("netsuite")
    );
    assert!(
        gave_up,
        "the request still out was abandoned within the renewal interval"
    );
    assert!(done, "sent again under its own lease and delivered");
    assert_eq!(ns.count(200), 1);
    assert_eq!(ns.overlaps(), 0);
    assert_eq!(dead_letters(&app).await, 0);
    let failed = scalar(
        &app.store,
        "SELECT COUNT(*) FROM event_audit_log WHERE stage = 'deliver.netsuite' \
         AND processing_outcome <> 'delivered'",
    )
    .await;
    assert_eq!(failed, 0, "no attempt spent on it");
    app.stop().await;
}

/// A delivery that waited for its permit longer than a third of its lease
/// checks the lease is still its own before it sends (and renews it): one
/// taken over meanwhile, as a replica would once it ran out, is not sent
/// under; the record goes out only once that lease has passed.
#[tokio::test]
async fn targets_a_lease_taken_over_while_waiting_for_the_permit_is_not_sent_under() {
    let (ns, sx) = slow_netsuite(Duration::from_secs(3)).await;
    let one_at_a_time = [
        ("BACKBONE__TARGETS__NETSUITE__TIMEOUT", "20s"),
        ("BACKBONE__TARGETS__NETSUITE__LEASE_TTL", "3s"),
        ("BACKBONE__TARGETS__NETSUITE__INITIAL_CONCURRENCY", "1"),
        ("BACKBONE__TARGETS__NETSUITE__MAX_CONCURRENCY", "1"),
    ];
    let Some(app) = deploy(Db::Sqlite, &ns.url(), &sx.url(), &one_at_a_time).await else {
        return;
    };
    // p0000 takes the only permit for 3 s; p0001, next in line, claims its
    // lease and waits.
    publish_flow(&app, 1, 1, false, Duration::ZERO).await;
    assert!(eventually(WAIT, || async { ns.inflight() == 1 }).await);
    publish_flow(&app, 2, 1, false, Duration::ZERO).await;
    let claimed = eventually(Duration::from_secs(2), || async {
        app.store
            .delivery_lease_holder("netsuite", "project", "p0001")
            .await
            .ok()
            .flatten()
            .is_some()
    })
    .await;
    assert!(
        claimed,
        "p0001 claimed its lease as next in line, before its permit"
    );
    let taken = Instant::now();
    take_lease_over(&app, "p0001", Duration::from_secs(4)).await;
    let done = converged(&app, &ns, &records(2, None), 1).await;
    let sent_after = ns
        .hits()
        .iter()
        .find(|h| h.record == "project:p0001")
        .map(|h| h.at.duration_since(taken));
    eprintln!(
        "p0001 sent {sent_after:?} after its lease was taken over for 4 s; {}",
        ns.summary("netsuite")
    );
    assert!(done, "both delivered");
    let sent_after = sent_after.expect("p0001 was sent");
    assert!(
        sent_after >= Duration::from_millis(3900),
        "sent under a lease taken over: {sent_after:?} after"
    );
    assert_eq!(ns.hits().len(), 2, "one request per record");
    assert_eq!(ns.overlaps(), 0);
    app.stop().await;
}

/// Replaying many dead letters goes through the same pacing: the target
/// is not flooded.
#[tokio::test]
async fn targets_replay_is_paced_through_the_limiter() {
    // NetSuite first refuses everything for good (400): each delivery is
    // dead-lettered `permanent` and parked.
    let ns = Target::start(
        0,
        Behaviour {
            reject: true,
            ..Default::default()
        },
    )
    .await;
    let sx = Target::start(0, Behaviour::default()).await;
    let Some(app) = deploy(Db::Sqlite, &ns.url(), &sx.url(), &[]).await else {
        return;
    };
    let n = 80;
    publish_flow(&app, n, 1, false, Duration::ZERO).await;
    let parked = eventually(WAIT, || async { dead_letters(&app).await == n as i64 }).await;
    assert!(parked, "{n} dead letters parked");
    // Fixed, but it allows three requests in flight: the replay must not
    // flood it.
    ns.set(|b| {
        b.reject = false;
        b.cap = Some(3);
        b.latency = Duration::from_millis(30);
    });
    let before = ns.hits().len();
    let report = backbone::dlq::replay(
        &app.store,
        &*publishers(&app.topology).await,
        &backbone::store::dead_letters::DlqFilter::default(),
        false,
    )
    .await
    .expect("replay");
    assert_eq!(report.replayed.len(), n);
    let done = converged(&app, &ns, &records(n, None), 1).await;
    let replay_hits = &ns.hits()[before..];
    let throttled = replay_hits.iter().filter(|h| h.status == 429).count();
    eprintln!(
        "replay of {n} dead letters: {} requests, {throttled} answered 429; {}",
        replay_hits.len(),
        ns.summary("netsuite (3 in flight)")
    );
    assert!(done, "every replayed dead letter delivered");
    assert!(
        (throttled as f64) < 0.2 * replay_hits.len() as f64,
        "paced: {throttled} of {} refused",
        replay_hits.len()
    );
    assert_eq!(dead_letters(&app).await, n as i64, "no new dead letter");
    app.stop().await;
}

/// Stand-ins for both targets, NetSuite answering after `latency`.
pub(crate) async fn slow_netsuite(latency: Duration) -> (Target, Target) {
    let ns = Target::start(
        0,
        Behaviour {
            latency,
            ..Default::default()
        },
    )
    .await;
    (ns, Target::start(0, Behaviour::default()).await)
}
