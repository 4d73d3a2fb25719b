//! `event-backbone demo` (docs/spec.md §9): the embedded default end to end. It
//! starts the Pub/Sub emulator if needed, two stand-in targets and the daemon
//! itself (in-process, exactly as `run` boots it), then plays a scripted story
//! and tells what happened to each event, checking every step against the
//! database and the targets.

pub mod emulator;
mod observer;
mod story;
pub mod targets;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use backbone::app::Application;
use backbone::config::{self, Settings};
use backbone::pubsub::clients::Endpoint;
use backbone::pubsub::provision::provision;
use backbone::runtime::health::Health;
use backbone::store::StoreError;
use backbone::topology::{ConsumerKind, Topology};

use self::emulator::Emulator;
use self::observer::MergedObserver;
use self::targets::StandIn;

/// SuiteX answers 503 to this many requests when the story takes it down.
pub const SUITEX_FAILURES: u32 = 2;
/// The claim-check threshold the demo runs with, so a few KiB are "oversized".
pub const CLAIM_CHECK_THRESHOLD: u64 = 4096;
/// The port the metrics endpoint gets when it is free.
pub const DEFAULT_METRICS_PORT: u16 = 9090;
pub const DEFAULT_ADMIN_PORT: u16 = 9091;
/// Grace the in-process daemon gets to drain when the demo ends.
const GRACE: Duration = Duration::from_secs(5);
/// How long the daemon may take until every consumer streams.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("the Pub/Sub emulator is not available: {hint}")]
    EmulatorMissing { hint: String },
    #[error("the Pub/Sub emulator exited while starting ({status}); see {}", .log.display())]
    EmulatorExited { status: String, log: PathBuf },
    #[error("{step} failed: {message}")]
    Setup { step: String, message: String },
    #[error("timed out after {} waiting for {what}", humantime::format_duration(*.after))]
    Timeout { what: String, after: Duration },
    #[error("{0}")]
    Unexpected(String),
    #[error("interrupted")]
    Interrupted,
    #[error("reading the demo database failed: {0}")]
    Store(#[from] StoreError),
}

impl DemoError {
    pub fn setup(step: impl Into<String>, e: impl std::fmt::Display) -> Self {
        DemoError::Setup {
            step: step.into(),
            message: format!("{e:#}"),
        }
    }
}

/// The files of one demo run, all under the data directory.
#[derive(Debug, Clone)]
pub struct RunFiles {
    /// `YYYYMMDD-HHMMSS`: names the files and the Pub/Sub project.
    pub stamp: String,
    pub data_dir: PathBuf,
    /// A fresh SQLite file for this run.
    pub database: PathBuf,
    /// The daemon's log (the story itself goes to stdout).
    pub log: PathBuf,
    pub emulator_log: PathBuf,
    pub snapshots: PathBuf,
}

impl RunFiles {
    /// Creates `data_dir` and picks names no earlier run used.
    pub fn new(data_dir: &Path) -> Result<RunFiles, DemoError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| DemoError::setup(format!("creating {}", data_dir.display()), e))?;
        let base = chrono::Utc::now().format("%Y%m%d-%H%M%S").to_string();
        let mut stamp = base.clone();
        let mut n = 1;
        while data_dir.join(format!("demo-{stamp}.db")).exists() {
            n += 1;
            stamp = format!("{base}-{n}");
        }
        Ok(RunFiles {
            database: data_dir.join(format!("demo-{stamp}.db")),
            log: data_dir.join(format!("demo-{stamp}.log")),
            emulator_log: data_dir.join(format!("demo-{stamp}-pubsub-emulator.log")),
            snapshots: data_dir.join("snapshots"),
            data_dir: data_dir.to_path_buf(),
            stamp,
        })
    }

    pub fn database_url(&self) -> String {
        format!("sqlite://{}?mode=rwc", self.database.display())
    }

    pub fn snapshots_url(&self) -> String {
        format!("file://{}", self.snapshots.display())
    }
}

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub files: RunFiles,
    /// A running emulator (`PUBSUB_EMULATOR_HOST`); None starts one.
    pub emulator_host: Option<String>,
    /// Preferred metrics port; another free one when taken (0: any).
    pub metrics_port: u16,
    pub admin_port: u16,
    /// Print the account to stdout as it happens.
    pub echo: bool,
    /// After the story, keep the daemon up until interrupted.
    pub keep_running: bool,
}

/// What the demo printed and whether the story went as expected.
pub struct DemoOutcome {
    pub transcript: Vec<String>,
    pub result: Result<(), DemoError>,
}

/// Writes the account: to stdout when echoing, always into the transcript.
pub struct Narrator {
    echo: bool,
    lines: Vec<String>,
}

impl Narrator {
    fn new(echo: bool) -> Self {
        Self {
            echo,
            lines: Vec::new(),
        }
    }

    pub fn line(&mut self, s: impl Into<String>) {
        let s = s.into();
        if self.echo {
            let mut out = std::io::stdout().lock();
            // A closed stdout must not stop the story (or its clean shutdown).
            let _ = writeln!(out, "{s}");
            let _ = out.flush();
        }
        self.lines.push(s);
    }

    /// `Label:      value` in the header and footer.
    pub fn kv(&mut self, label: &str, value: impl AsRef<str>) {
        self.line(format!("  {:<13} {}", format!("{label}:"), value.as_ref()));
    }

    pub fn step(&mut self, n: usize, title: &str) {
        self.line("");
        self.line(format!("{n}. {title}"));
    }

    /// Something the story does.
    pub fn event(&mut self, s: impl AsRef<str>) {
        self.line(format!("   • {}", s.as_ref()));
    }

    /// Something the daemon did, as observed.
    pub fn fact(&mut self, label: &str, s: impl AsRef<str>) {
        self.line(format!("       {label:<14} {}", s.as_ref()));
    }
}

/// Runs `fut` unless the demo is interrupted first.
async fn interruptible<T>(
    interrupt: &CancellationToken,
    fut: impl std::future::Future<Output = Result<T, DemoError>>,
) -> Result<T, DemoError> {
    tokio::select! {
        _ = interrupt.cancelled() => Err(DemoError::Interrupted),
        r = fut => r,
    }
}

/// Runs the whole demo. Never panics on a failed step: the outcome says
/// what went wrong and everything started is stopped again.
pub async fn run(opts: DemoOptions, interrupt: CancellationToken) -> DemoOutcome {
    let mut n = Narrator::new(opts.echo);
    let started = Instant::now();
    n.line("event-backbone demo: the sync engine on the embedded default, end to end.");
    n.line("");
    let result = run_with_emulator(&opts, &interrupt, &mut n).await;
    if let Ok(metrics_addr) = &result {
        if !opts.keep_running {
            story::where_to_look(metrics_addr, &opts.files, false, &mut n);
        }
    }
    let result = result.map(|_| ());
    n.line("");
    match &result {
        Ok(()) => n.line(format!(
            "The story completed as expected in {:.1} s; everything was shut down cleanly.",
            started.elapsed().as_secs_f64()
        )),
        Err(DemoError::Interrupted) => n.line("Interrupted; the demo stopped cleanly."),
        Err(e) => n.line(format!("The demo did not complete as expected: {e}")),
    }
    DemoOutcome {
        transcript: n.lines,
        result,
    }
}

async fn run_with_emulator(
    opts: &DemoOptions,
    interrupt: &CancellationToken,
    n: &mut Narrator,
) -> Result<String, DemoError> {
    let files = &opts.files;
    n.kv(
        "Database",
        format!("{} (SQLite, fresh for this run)", files.database.display()),
    );
    n.kv(
        "Snapshots",
        format!(
            "{} (claim-check threshold {CLAIM_CHECK_THRESHOLD} bytes)",
            files.snapshots.display()
        ),
    );
    let emulator = match &opts.emulator_host {
        Some(host) => {
            n.kv(
                "Pub/Sub",
                format!("the emulator at {host} (PUBSUB_EMULATOR_HOST)"),
            );
            None
        }
        None => {
            let e = interruptible(interrupt, Emulator::start(&files.emulator_log)).await?;
            n.kv(
                "Pub/Sub",
                format!(
                    "started the official emulator on {} (log: {})",
                    e.host,
                    e.log.display()
                ),
            );
            Some(e)
        }
    };
    let host = emulator
        .as_ref()
        .map(|e| e.host.clone())
        .or_else(|| opts.emulator_host.clone())
        .unwrap_or_default();
    let result = run_daemon(opts, &host, interrupt, n).await;
    if let Some(e) = emulator {
        e.stop().await;
        n.line("Stopped the Pub/Sub emulator.");
    }
    result
}

/// `127.0.0.1:preferred` when that port is free, else any free port.
fn pick_addr(preferred: u16) -> Result<String, DemoError> {
    let port = if preferred != 0 && std::net::TcpListener::bind(("127.0.0.1", preferred)).is_ok() {
        preferred
    } else {
        emulator::free_port().map_err(|e| DemoError::setup("finding a free port", e))?
    };
    Ok(format!("127.0.0.1:{port}"))
}

struct Wiring<'a> {
    files: &'a RunFiles,
    emulator_host: &'a str,
    project: &'a str,
    netsuite: &'a StandIn,
    suitex: &'a StandIn,
    metrics_addr: &'a str,
    admin_addr: &'a str,
    admin_token: &'a str,
}

/// The embedded `local` settings with the demo's overrides on top, as
/// environment variables would set them.
fn settings(w: &Wiring<'_>) -> Result<Settings, DemoError> {
    let db = w.files.database_url();
    let snaps = w.files.snapshots_url();
    let (ns, sx) = (w.netsuite.url(), w.suitex.url());
    let threshold = CLAIM_CHECK_THRESHOLD.to_string();
    let vars: HashMap<String, String> = [
        ("BACKBONE_ENV", "local"),
        ("PUBSUB_EMULATOR_HOST", w.emulator_host),
        ("BACKBONE__PUBSUB__PROJECT_ID", w.project),
        ("BACKBONE__DATABASE__URL", &db),
        // The demo's SQLite file is its own: the daemon migrates it at start.
        ("BACKBONE__DATABASE__MIGRATE_ON_START", "true"),
        ("BACKBONE__SNAPSHOTS__URL", &snaps),
        (
            "BACKBONE__SNAPSHOTS__CLAIM_CHECK_THRESHOLD_BYTES",
            &threshold,
        ),
        ("BACKBONE__RETRY__INITIAL_BACKOFF", "200ms"),
        ("BACKBONE__RETRY__MAX_BACKOFF", "1s"),
        ("BACKBONE__TARGETS__NETSUITE__URL", &ns),
        ("BACKBONE__TARGETS__NETSUITE__TOKEN", story::NETSUITE_TOKEN),
        ("BACKBONE__TARGETS__NETSUITE__TIMEOUT", "2s"),
        ("BACKBONE__TARGETS__SUITEX__URL", &sx),
        ("BACKBONE__TARGETS__SUITEX__TOKEN", story::SUITEX_TOKEN),
        ("BACKBONE__TARGETS__SUITEX__TIMEOUT", "2s"),
        ("BACKBONE__CONSUMERS__NETSUITE__ENABLED", "true"),
        ("BACKBONE__CONSUMERS__SUITEX__ENABLED", "true"),
        ("BACKBONE__HTTP__METRICS_ADDR", w.metrics_addr),
        ("BACKBONE__HTTP__ADMIN_ADDR", w.admin_addr),
        ("BACKBONE__HTTP__ADMIN_TOKEN", w.admin_token),
        ("BACKBONE__SHUTDOWN__GRACE", "5s"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    config::load_from(Path::new("config"), &vars)
        .map_err(|e| DemoError::setup("building the demo configuration", e))
}

/// The stand-ins, the daemon and the story, in steps: start the targets,
/// configure and provision, start the observer and the daemon, play the
/// story once every consumer streams, then stop everything again.
async fn run_daemon(
    opts: &DemoOptions,
    emulator_host: &str,
    interrupt: &CancellationToken,
    n: &mut Narrator,
) -> Result<String, DemoError> {
    let stop_targets = CancellationToken::new();
    let (netsuite, suitex) = start_targets(&stop_targets, n).await?;
    let w = wire(opts, emulator_host, &netsuite, &suitex, interrupt, n).await?;
    let observer =
        interruptible(interrupt, MergedObserver::start(&w.topology, &w.endpoint)).await?;

    let app = interruptible(interrupt, async {
        Application::build(w.settings.clone())
            .await
            .map_err(|e| DemoError::setup("starting the daemon", e))
    })
    .await;
    let app = match app {
        Ok(a) => a,
        Err(e) => {
            observer.stop().await;
            stop_targets.cancel();
            return Err(e);
        }
    };
    let ctx_parts = (
        app.store.clone(),
        app.publishers.clone(),
        app.health.clone(),
    );
    let daemon_stop = CancellationToken::new();
    let mut daemon = tokio::spawn(app.run(daemon_stop.clone()));

    let result = async {
        let (store, publishers, health) = ctx_parts;
        let enabled = ConsumerKind::all()
            .into_iter()
            .filter(|k| w.settings.consumers.get(*k).enabled)
            .count();
        wait_ready(&health, enabled, &daemon, &opts.files, interrupt).await?;
        narrate_daemon(&w, enabled, &opts.files, n);
        let ctx = story::Ctx {
            store,
            publishers,
            netsuite: &netsuite,
            suitex: &suitex,
            observer: &observer,
            snapshots_url: opts.files.snapshots_url(),
            threshold: CLAIM_CHECK_THRESHOLD,
            max_attempts: w.settings.retry.max_attempts,
            retry: w.settings.retry.clone(),
            topology: w.topology.clone(),
            interrupt,
            metrics_addr: w.metrics_addr.clone(),
        };
        story::play(&ctx, n).await?;
        if opts.keep_running {
            story::where_to_look(&w.metrics_addr, &opts.files, true, n);
            n.line("");
            n.line("The daemon keeps running; press Ctrl-C to stop it.");
            interrupt.cancelled().await;
        }
        Ok(())
    }
    .await;

    n.line("");
    stop_daemon(daemon_stop, &mut daemon, n).await;
    observer.stop().await;
    stop_targets.cancel();
    // An emulator the demo did not start keeps the project, and a thread
    // per subscription and per ordering key, until it is deleted.
    if opts.emulator_host.is_some() {
        remove_project(&w, n).await;
    }
    result.map(|()| w.metrics_addr)
}

/// The NetSuite and SuiteX stand-ins, stopped by `stop`.
async fn start_targets(
    stop: &CancellationToken,
    n: &mut Narrator,
) -> Result<(StandIn, StandIn), DemoError> {
    let start_target = |name, token: &str| {
        let (token, stop) = (token.to_string(), stop.clone());
        async move {
            StandIn::start(name, token, stop)
                .await
                .map_err(|e| DemoError::setup(format!("starting the {name} stand-in"), e))
        }
    };
    let netsuite = start_target("NetSuite", story::NETSUITE_TOKEN).await?;
    let suitex = start_target("SuiteX", story::SUITEX_TOKEN).await?;
    n.kv(
        "Targets",
        format!(
            "NetSuite stand-in {}, SuiteX stand-in {}",
            netsuite.url(),
            suitex.url()
        ),
    );
    Ok((netsuite, suitex))
}

/// The daemon's settings and addresses, its project provisioned.
struct Wired {
    project: String,
    metrics_addr: String,
    admin_addr: String,
    admin_token: String,
    settings: Settings,
    topology: Topology,
    endpoint: Endpoint,
}

/// Picks the project, ports and admin token, builds the settings and
/// provisions the project's topics and subscriptions.
async fn wire(
    opts: &DemoOptions,
    emulator_host: &str,
    netsuite: &StandIn,
    suitex: &StandIn,
    interrupt: &CancellationToken,
    n: &mut Narrator,
) -> Result<Wired, DemoError> {
    let project = format!("demo-{}", opts.files.stamp);
    let metrics_addr = pick_addr(opts.metrics_port)?;
    let admin_addr = pick_addr(opts.admin_port)?;
    let admin_token = format!("demo-{}", uuid::Uuid::new_v4().simple());
    let settings = settings(&Wiring {
        files: &opts.files,
        emulator_host,
        project: &project,
        netsuite,
        suitex,
        metrics_addr: &metrics_addr,
        admin_addr: &admin_addr,
        admin_token: &admin_token,
    })?;
    let topology = settings.topology();
    let endpoint = backbone::app::endpoint(&settings);
    interruptible(interrupt, async {
        provision(&topology, &endpoint)
            .await
            .map_err(|e| DemoError::setup("provisioning topics and subscriptions", e))
    })
    .await?;
    n.kv(
        "Project",
        format!(
            "{project}: provisioned 4 topics (events.{{raw,merged,error,dlq}}.{}) and 5 subscriptions",
            topology.env
        ),
    );
    Ok(Wired {
        project,
        metrics_addr,
        admin_addr,
        admin_token,
        settings,
        topology,
        endpoint,
    })
}

/// Until every enabled consumer streams; an error if the daemon stops,
/// [`READY_TIMEOUT`] passes or the demo is interrupted first.
async fn wait_ready(
    health: &Health,
    enabled: usize,
    daemon: &DaemonTask,
    files: &RunFiles,
    interrupt: &CancellationToken,
) -> Result<(), DemoError> {
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        if health.snapshot().len() >= enabled && health.all_up() {
            return Ok(());
        }
        if daemon.is_finished() {
            return Err(DemoError::Unexpected(format!(
                "the daemon stopped while starting; see {}",
                files.log.display()
            )));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(DemoError::Timeout {
                what: "every consumer of the daemon to stream".into(),
                after: READY_TIMEOUT,
            });
        }
        tokio::select! {
            _ = interrupt.cancelled() => return Err(DemoError::Interrupted),
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

/// Where the running daemon can be looked at.
fn narrate_daemon(w: &Wired, enabled: usize, files: &RunFiles, n: &mut Narrator) {
    let Wired {
        metrics_addr,
        admin_addr,
        admin_token,
        ..
    } = w;
    n.kv(
        "Daemon",
        format!(
            "running in-process with {enabled} consumers; metrics on http://{metrics_addr}/metrics"
        ),
    );
    n.kv(
        "Admin API",
        format!(
            "http://{admin_addr}/admin/records/project/42/events (Authorization: Bearer {admin_token})"
        ),
    );
    n.kv("Daemon log", files.log.display().to_string());
}

/// The in-process daemon's task.
type DaemonTask = tokio::task::JoinHandle<anyhow::Result<()>>;

/// Asks the daemon to drain and stop; aborts it after its grace period.
async fn stop_daemon(stop: CancellationToken, daemon: &mut DaemonTask, n: &mut Narrator) {
    stop.cancel();
    match tokio::time::timeout(GRACE + Duration::from_secs(10), &mut *daemon).await {
        Ok(Ok(Ok(()))) => n.line("The daemon drained and stopped cleanly."),
        Ok(Ok(Err(e))) => n.line(format!("The daemon stopped with an error: {e:#}")),
        Ok(Err(e)) => n.line(format!("The daemon task failed: {e}")),
        Err(_) => {
            daemon.abort();
            n.line("The daemon did not stop within its grace period; it was aborted.");
        }
    }
}

/// Deletes the run's project from an emulator the demo did not start.
async fn remove_project(w: &Wired, n: &mut Narrator) {
    let project = &w.project;
    match backbone::pubsub::provision::remove_project(project, &w.endpoint).await {
        Ok(r) => n.kv(
            "Project",
            format!(
                "{project}: removed its {} subscriptions and {} topics from the emulator",
                r.subscriptions, r.topics
            ),
        ),
        Err(e) => n.kv("Project", format!("{project} was not removed: {e}")),
    }
}
