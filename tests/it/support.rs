//! Shared test harness: the real emulator (a fresh project per test, so
//! tests never see each other's messages), a fresh database per test (a temp
//! SQLite file, or a random MariaDB database), and the application booted
//! exactly as `run` boots it.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use backbone::app::Application;
use backbone::config::{self, Settings};
use backbone::pubsub::clients::{self, Endpoint};
use backbone::pubsub::provision::provision;
use backbone::pubsub::publisher::Publishers;
use backbone::runtime::health::Health;
use backbone::store::Store;
use backbone::topology::{TopicKind, Topology};
use bytes::Bytes;
use google_cloud_pubsub::model::{Message, Subscription};
use tokio_util::sync::CancellationToken;

pub fn rand_suffix(n: usize) -> String {
    use rand::Rng;
    const CH: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut r = rand::rng();
    (0..n)
        .map(|_| CH[r.random_range(0..CH.len())] as char)
        .collect()
}

/// `host:port` of the Pub/Sub emulator; panics with instructions if absent.
pub fn emulator_host() -> String {
    let host = std::env::var("PUBSUB_EMULATOR_HOST").unwrap_or_else(|_| "127.0.0.1:8085".into());
    if std::net::TcpStream::connect_timeout(
        &host.parse().expect("PUBSUB_EMULATOR_HOST is host:port"),
        Duration::from_secs(2),
    )
    .is_err()
    {
        panic!(
            "the Pub/Sub emulator is not reachable at {host}: run the tests with scripts/test.sh, \
             which starts it (or start `cloud-pubsub-emulator --port=8085` yourself)"
        );
    }
    host
}

/// A unique, real-looking project id: the emulator keeps projects apart.
/// Hold a [`ScratchProject`] for it so its topics and subscriptions go when
/// the test ends.
pub fn unique_project() -> String {
    format!("it-{}", rand_suffix(10))
}

/// A test's Pub/Sub project, removed whole (every subscription, then every
/// topic) when dropped, whether the test passed or not. The emulator keeps a
/// subscription until it is deleted, with a thread for each (and, for an
/// ordered one, a thread per ordering key it saw): a suite that leaves its
/// projects behind leaves thousands of threads spinning in the emulator.
pub struct ScratchProject {
    pub id: String,
}

impl ScratchProject {
    /// A new project id ([`unique_project`]).
    pub fn new() -> Self {
        Self::adopt(unique_project())
    }

    /// Takes charge of removing `id`.
    pub fn adopt(id: impl Into<String>) -> Self {
        Self { id: id.into() }
    }
}

impl Default for ScratchProject {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for ScratchProject {
    fn drop(&mut self) {
        let id = std::mem::take(&mut self.id);
        // Not emulator_host(): it panics when the emulator is gone, and a
        // panic while unwinding aborts.
        let Ok(host) = std::env::var("PUBSUB_EMULATOR_HOST") else {
            return;
        };
        // Drop cannot await, and the test's runtime may be single-threaded
        // or already gone: a thread with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            let ep = Endpoint::from_emulator_host(Some(&host));
            let removed = rt.block_on(async {
                tokio::time::timeout(
                    Duration::from_secs(20),
                    backbone::pubsub::provision::remove_project(&id, &ep),
                )
                .await
            });
            match removed {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => eprintln!("note: Pub/Sub project {id} was not removed: {e}"),
                Err(_) => eprintln!("note: Pub/Sub project {id} was not removed: timed out"),
            }
        })
        .join();
    }
}

/// Which database a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Mariadb,
}

pub struct TestDb {
    pub url: String,
    /// Keeps the SQLite file alive for the test.
    _dir: Option<tempfile::TempDir>,
    pub name: Option<String>,
}

impl Drop for TestDb {
    /// Drops the MariaDB database, best effort: a test that fails or
    /// panics must not leave its database behind either.
    fn drop(&mut self) {
        let Some(name) = self.name.take() else {
            return;
        };
        // Kept for a post-mortem when asked (a failing fault run).
        if std::env::var("BACKBONE_TEST_KEEP_DB").is_ok_and(|v| v == "1") {
            eprintln!("BACKBONE_TEST_KEEP_DB=1: keeping database {name}");
            return;
        }
        // Drop cannot await, and the test's runtime may be single-threaded
        // or already gone: a thread with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                use sqlx::Connection;
                let drop_db = async {
                    let mut admin = sqlx::MySqlConnection::connect(&mariadb_admin_url()).await?;
                    // A daemon still in a transaction holds metadata locks:
                    // give up rather than hang the test.
                    sqlx::query("SET SESSION lock_wait_timeout = 5")
                        .execute(&mut admin)
                        .await?;
                    sqlx::query(&format!("DROP DATABASE IF EXISTS `{name}`"))
                        .execute(&mut admin)
                        .await?;
                    admin.close().await
                };
                match tokio::time::timeout(Duration::from_secs(15), drop_db).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => eprintln!("note: test database {name} was not dropped: {e}"),
                    Err(_) => eprintln!("note: test database {name} was not dropped: timed out"),
                }
            });
        })
        .join();
    }
}

/// Points the tests at another MariaDB/MySQL server than root without a
/// password on 127.0.0.1:3306: a `mysql://user:password@host:port` URL (a
/// database in it is ignored; each test makes its own).
pub const ENV_TEST_MYSQL_URL: &str = "BACKBONE_TEST_MYSQL_URL";
const DEFAULT_TEST_MYSQL_URL: &str = "mysql://root@127.0.0.1:3306";

/// The test server's URL, from [`ENV_TEST_MYSQL_URL`] or the default.
fn mariadb_server() -> url::Url {
    let raw = std::env::var(ENV_TEST_MYSQL_URL)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_TEST_MYSQL_URL.to_owned());
    match url::Url::parse(raw.trim()) {
        Ok(u) if u.scheme() == "mysql" && u.host_str().is_some() => u,
        _ => panic!("{ENV_TEST_MYSQL_URL} must be a mysql://user:password@host:port URL"),
    }
}

/// Database `db` on the test server, as the server URL's (admin) user.
pub fn mariadb_url(db: &str) -> String {
    let mut u = mariadb_server();
    u.set_path(&format!("/{db}"));
    u.to_string()
}

/// Database `db` on the test server as another user (a runtime user the
/// test created).
pub fn mariadb_url_as(user: &str, password: &str, db: &str) -> String {
    let mut u = mariadb_server();
    // Cannot fail: the URL has a host (checked in `mariadb_server`).
    let _ = u.set_username(user);
    let _ = u.set_password(Some(password));
    u.set_path(&format!("/{db}"));
    u.to_string()
}

/// Database `db` through a proxy on 127.0.0.1:`port` in front of the test
/// server, as the server URL's user.
pub fn mariadb_url_via(port: u16, db: &str) -> String {
    let mut u = mariadb_server();
    // Cannot fail: the URL has a host (checked in `mariadb_server`).
    let _ = u.set_host(Some("127.0.0.1"));
    let _ = u.set_port(Some(port));
    u.set_path(&format!("/{db}"));
    u.to_string()
}

/// The administrator's connection (database `mysql`).
pub fn mariadb_admin_url() -> String {
    mariadb_url("mysql")
}

/// `host:port` of the test server, for proxies in front of it.
pub fn mariadb_addr() -> String {
    let u = mariadb_server();
    let host = u.host_str().unwrap_or("127.0.0.1");
    format!("{host}:{}", u.port().unwrap_or(3306))
}

/// The server, its password masked, for messages.
fn mariadb_server_shown() -> String {
    backbone::config::mask_url_password(mariadb_server().as_str())
}

/// A fresh database. On a machine without MariaDB the MariaDB variant
/// returns None after printing why (CI sets CI=true and then it must exist).
pub async fn fresh_db(kind: Db) -> Option<TestDb> {
    match kind {
        Db::Sqlite => {
            let dir = tempfile::tempdir().expect("tempdir");
            let url = format!("sqlite://{}/t.db?mode=rwc", dir.path().display());
            Some(TestDb {
                url,
                _dir: Some(dir),
                name: None,
            })
        }
        Db::Mariadb => {
            use sqlx::Connection;
            let conn = sqlx::MySqlConnection::connect(&mariadb_admin_url()).await;
            let mut conn = match conn {
                Ok(c) => c,
                Err(e) => {
                    let server = mariadb_server_shown();
                    if std::env::var("CI").is_ok() {
                        panic!("MariaDB is required in CI but unreachable at {server}: {e}");
                    }
                    eprintln!(
                        "SKIPPED: MariaDB is not reachable at {server} ({e}); this test needs it \
                         (set {ENV_TEST_MYSQL_URL} to use another server)."
                    );
                    return None;
                }
            };
            let name = format!("eb_test_{}", rand_suffix(12));
            sqlx::query(&format!("CREATE DATABASE {name} CHARACTER SET utf8mb4"))
                .execute(&mut conn)
                .await
                .expect("create test database");
            Some(TestDb {
                url: mariadb_url(&name),
                _dir: None,
                name: Some(name),
            })
        }
    }
}

/// Logs of the daemon under test, shown for failing tests (RUST_LOG overrides).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("warn,backbone=info,event_backbone=info")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

pub fn config_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config")
}

/// The variables every test boot starts from: local env, the emulator, the
/// test's project and database, metrics on a port the OS picks, a short
/// drain. [`settings`] loads them in-process; [`daemon_command`] hands them
/// to the real binary.
pub fn base_vars(project: &str, db_url: &str) -> Vec<(String, String)> {
    [
        ("BACKBONE_ENV", "local".to_string()),
        ("PUBSUB_EMULATOR_HOST", emulator_host()),
        ("BACKBONE__PUBSUB__PROJECT_ID", project.to_string()),
        ("BACKBONE__DATABASE__URL", db_url.to_string()),
        ("BACKBONE__HTTP__METRICS_ADDR", "127.0.0.1:0".to_string()),
        ("BACKBONE__SHUTDOWN__GRACE", "5s".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Settings for a test: [`base_vars`] and any extra `BACKBONE__…`
/// overrides, loaded and validated as `run` loads them.
pub fn settings(project: &str, db_url: &str, extra: &[(&str, &str)]) -> Settings {
    init_tracing();
    let mut vars: HashMap<String, String> = base_vars(project, db_url).into_iter().collect();
    for (k, v) in extra {
        vars.insert(k.to_string(), v.to_string());
    }
    config::load_from(&config_dir(), &vars).expect("test settings are valid")
}

/// `event-backbone run` (the real binary) with [`base_vars`] plus `extra`;
/// the caller chooses where its output goes.
pub fn daemon_command(project: &str, db_url: &str, extra: &[(&str, &str)]) -> Command {
    let mut cmd = binary("local");
    cmd.arg("run")
        .envs(base_vars(project, db_url))
        .envs(extra.iter().copied());
    cmd
}

/// The `backbone-bench` binary (the bench crate's), beside the daemon:
/// `cargo nextest run --workspace` (scripts/test.sh) builds it there, with
/// the same features as everything else. Run without `--workspace`, it is
/// built here once.
pub fn bench_bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let daemon = PathBuf::from(env!("CARGO_BIN_EXE_event-backbone"));
            let bench = daemon.with_file_name("backbone-bench");
            if !bench.is_file() {
                eprintln!(
                    "no {}: building it (scripts/test.sh runs with --workspace)",
                    bench.display()
                );
                let out = Command::new(env!("CARGO"))
                    .args([
                        "build",
                        "--quiet",
                        "-p",
                        "backbone-bench",
                        "--bin",
                        "backbone-bench",
                    ])
                    .current_dir(env!("CARGO_MANIFEST_DIR"))
                    .status()
                    .expect("run cargo build -p backbone-bench");
                assert!(out.success(), "cargo build -p backbone-bench failed");
            }
            assert!(bench.is_file(), "no {}", bench.display());
            bench
        })
        .clone()
}

/// `backbone-bench` with the daemon this test run built beside it.
pub fn bench_command() -> Command {
    let mut cmd = Command::new(bench_bin());
    cmd.env("EVENT_BACKBONE_BIN", env!("CARGO_BIN_EXE_event-backbone"));
    cmd
}

/// The real binary in env layer `env` (`local`, `production`…), reading
/// this repo's config/, with no stdin.
pub fn binary(env: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_event-backbone"));
    cmd.env("BACKBONE_ENV", env)
        .env("BACKBONE_CONFIG_DIR", config_dir())
        .stdin(Stdio::null());
    cmd
}

/// A one-off command (`explain`, `events`, `verify`…) of the local env
/// layer against `db_url`, logging warnings only; waits for it.
pub fn cli_on(db_url: &str, args: &[&str]) -> Output {
    binary("local")
        .args(args)
        .env("BACKBONE__DATABASE__URL", db_url)
        .env("BACKBONE__LOG__LEVEL", "warn")
        .output()
        .expect("run event-backbone")
}

/// The real binary as a child process, killed and reaped when dropped (a
/// failing test leaves no daemon behind).
pub struct ChildDaemon {
    child: std::process::Child,
}

impl ChildDaemon {
    pub fn spawn(cmd: &mut Command) -> ChildDaemon {
        ChildDaemon {
            child: cmd.spawn().expect("spawn event-backbone"),
        }
    }

    /// Sends `sig` (as `kill` spells it: `-TERM`, `-USR1`, `-KILL`).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {sig}");
    }

    pub fn sigterm(&self) {
        self.signal("-TERM");
    }

    /// Waits up to `within` for the exit; None when it did not exit.
    pub async fn exit_within(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    pub fn wait(mut self) -> std::process::ExitStatus {
        self.child.wait().expect("wait")
    }
}

impl Drop for ChildDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Both targets' URLs and tokens (`ns-token`, `sx-token`).
pub fn target_vars<'a>(ns_url: &'a str, sx_url: &'a str) -> [(&'static str, &'a str); 4] {
    [
        ("BACKBONE__TARGETS__NETSUITE__URL", ns_url),
        ("BACKBONE__TARGETS__NETSUITE__TOKEN", "ns-token"),
        ("BACKBONE__TARGETS__SUITEX__URL", sx_url),
        ("BACKBONE__TARGETS__SUITEX__TOKEN", "sx-token"),
    ]
}

pub fn endpoint() -> Endpoint {
    Endpoint::from_emulator_host(Some(&emulator_host()))
}

// ---------------------------------------------------------------------------
// Booting the daemon: the one place a test gets a fresh database, its
// settings, a provisioned project and a running daemon.

/// How long a booted daemon may take to bind its port and answer `/readyz` 200.
const BOOT: Duration = Duration::from_secs(45);

/// A test's settings on top of [`base_vars`], as `BACKBONE__…` variables (so
/// they go through the same loading and validation as production's). Later
/// values win.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    vars: Vec<(String, String)>,
    admin_token: Option<String>,
    local_snapshots: bool,
    db_proxy_port: Option<u16>,
    runtime_user: bool,
}

impl Overrides {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set(mut self, key: &str, value: impl Into<String>) -> Self {
        self.vars.push((key.to_string(), value.into()));
        self
    }

    pub fn vars(mut self, vars: &[(&str, &str)]) -> Self {
        self.vars
            .extend(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self
    }

    /// Both targets at these URLs ([`target_vars`]), their consumers on.
    pub fn targets(self, ns_url: &str, sx_url: &str) -> Self {
        self.vars(&target_vars(ns_url, sx_url)).vars(&[
            ("BACKBONE__CONSUMERS__NETSUITE__ENABLED", "true"),
            ("BACKBONE__CONSUMERS__SUITEX__ENABLED", "true"),
        ])
    }

    /// The admin API on a free port, behind `token` ([`TestApp::admin_addr`]).
    pub fn admin(mut self, token: &str) -> Self {
        self.admin_token = Some(token.to_string());
        self
    }

    /// Snapshots in a temp folder the app keeps ([`TestApp::snapshots_dir`]);
    /// a later `BACKBONE__SNAPSHOTS__URL` still wins.
    pub fn local_snapshots(mut self) -> Self {
        self.local_snapshots = true;
        self
    }

    /// The daemon reaches MariaDB through a proxy on 127.0.0.1:`port`; the
    /// test's own store connects directly.
    pub fn database_via(mut self, port: u16) -> Self {
        self.db_proxy_port = Some(port);
        self
    }

    /// On MariaDB, the daemon runs as the least-privilege runtime user of
    /// `sql/grants-mysql.sql` (the test migrates as root first and keeps a
    /// root connection for its own reads); SQLite ignores it.
    pub fn runtime_user(mut self) -> Self {
        self.runtime_user = true;
        self
    }
}

/// A running daemon (in-process) plus handles to watch and stop it.
pub struct Running {
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub health: Arc<Health>,
}

impl Running {
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(30), self.task).await;
    }
}

/// One test's deployment: a fresh database (dropped with the app, unless
/// `BACKBONE_TEST_KEEP_DB=1`), its settings, a store for the test's own
/// reads, and the daemons started on it (in-process, as `run` boots them).
pub struct TestApp {
    pub project: String,
    pub settings: Settings,
    pub topology: Topology,
    /// The test's own connection (not the daemon's pool).
    pub store: Store,
    /// The `BACKBONE__…` overrides the settings were loaded with (also
    /// handed to the real binary by [`TestApp::daemon_command`]).
    vars: Vec<(String, String)>,
    admin: Option<(String, String)>,
    daemons: Vec<Running>,
    snapshots: Option<tempfile::TempDir>,
    /// The least-privilege user the daemon runs as ([`Overrides::runtime_user`]).
    runtime_user: Option<String>,
    /// Removes the project's topics and subscriptions (after the daemons
    /// are told to stop).
    pubsub: ScratchProject,
    /// Last: dropped after the daemons are told to stop.
    db: TestDb,
}

impl Drop for TestApp {
    /// A test that fails before [`TestApp::stop`] still stops its daemons
    /// (they would otherwise hold the database being dropped).
    fn drop(&mut self) {
        for d in &self.daemons {
            d.shutdown.cancel();
        }
    }
}

impl TestApp {
    /// A fresh database, settings with `overrides`, a provisioned project,
    /// and the daemon running and ready. None (the test skips) when MariaDB
    /// is asked for and absent outside CI.
    pub async fn spawn(db: Db, overrides: Overrides) -> Option<TestApp> {
        let mut app = Self::prepare(db, overrides).await?;
        app.start().await;
        Some(app)
    }

    /// Everything [`TestApp::spawn`] does but starting a daemon: for tests
    /// that tap topics, build the application by hand or run the real
    /// binary first.
    pub async fn prepare(db: Db, o: Overrides) -> Option<TestApp> {
        let tdb = fresh_db(db).await?;
        let project = unique_project();
        let mut vars = Vec::new();
        let snapshots = o.local_snapshots.then(|| {
            let dir = tempfile::tempdir().expect("tempdir");
            let url = format!("file://{}", dir.path().display());
            vars.push(("BACKBONE__SNAPSHOTS__URL".to_string(), url));
            dir
        });
        let admin = o.admin_token.map(|token| {
            let addr = format!("127.0.0.1:{}", free_port());
            vars.push(("BACKBONE__HTTP__ADMIN_ADDR".to_string(), addr.clone()));
            vars.push(("BACKBONE__HTTP__ADMIN_TOKEN".to_string(), token.clone()));
            (addr, token)
        });
        let mut runtime_user = None;
        if let (true, Some(name)) = (o.runtime_user, tdb.name.as_deref()) {
            let root = Store::connect(&tdb.url, 2, Duration::from_secs(5))
                .await
                .expect("root store");
            root.migrate().await.expect("migrate as root");
            let user = apply_shipped_grants(name).await;
            vars.push((
                "BACKBONE__DATABASE__URL".to_string(),
                mariadb_url_as(&user, "pw", name),
            ));
            vars.push((
                "BACKBONE__DATABASE__MIGRATE_ON_START".to_string(),
                "false".to_string(),
            ));
            runtime_user = Some(user);
        }
        if let Some(port) = o.db_proxy_port {
            let name = tdb.name.as_deref().expect("a proxy stands before MariaDB");
            vars.push((
                "BACKBONE__DATABASE__URL".to_string(),
                mariadb_url_via(port, name),
            ));
        }
        vars.extend(o.vars);
        let borrowed: Vec<(&str, &str)> =
            vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let settings = settings(&project, &tdb.url, &borrowed);
        let store = if o.db_proxy_port.is_some() || runtime_user.is_some() {
            Store::connect(&tdb.url, 2, Duration::from_secs(5))
                .await
                .expect("direct store")
        } else {
            backbone::app::create_store(&settings).await.expect("store")
        };
        Some(TestApp {
            pubsub: ScratchProject::adopt(project.clone()),
            project,
            topology: settings.topology(),
            settings,
            store,
            vars,
            admin,
            daemons: Vec::new(),
            snapshots,
            runtime_user,
            db: tdb,
        })
    }

    /// Provisions the topology, builds the application as `run` does, runs
    /// it, and waits until it answers `/readyz` 200. Called again, it starts
    /// another replica on the same database and project.
    pub async fn start(&mut self) {
        self.start_with(|_| {}).await;
    }

    /// [`TestApp::start`], letting the test adjust the built application
    /// (e.g. swap a stage) before it runs.
    pub async fn start_with(&mut self, adjust: impl FnOnce(&mut Application)) {
        self.provision().await;
        let mut app = self.build().await;
        adjust(&mut app);
        let health = app.health.clone();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(app.run(shutdown.clone()));
        self.daemons.push(Running {
            shutdown,
            task,
            health: health.clone(),
        });
        assert!(
            eventually(BOOT, || async { health.metrics_addr().is_some() }).await,
            "the metrics port was never bound"
        );
        let addr = health.metrics_addr().expect("bound above");
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("http client");
        let ready = eventually(BOOT, || async {
            client
                .get(format!("http://{addr}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await;
        assert!(ready, "the daemon never became ready");
    }

    /// The application built from the settings, not running (a test drives
    /// its stages by hand).
    pub async fn build(&self) -> Application {
        Application::build(self.settings.clone())
            .await
            .expect("build application")
    }

    pub async fn provision(&self) {
        provision(&self.topology, &endpoint())
            .await
            .expect("provision");
    }

    /// Migrates as the test (for daemons that may not migrate themselves).
    pub async fn migrate(&self) {
        self.store.migrate().await.expect("migrate");
    }

    /// Stops every daemon, then drops the database.
    pub async fn stop(mut self) {
        for d in std::mem::take(&mut self.daemons) {
            d.stop().await;
        }
        if let Some(user) = self.runtime_user.take() {
            drop_user(&user).await;
        }
    }

    /// The runtime user the daemon runs as, when it is not root.
    pub fn runtime_user(&self) -> Option<&str> {
        self.runtime_user.as_deref()
    }

    fn first(&self) -> &Running {
        self.daemons.first().expect("the daemon was started")
    }

    /// The first daemon's health (consumers, readiness, its metrics port).
    pub fn health(&self) -> Arc<Health> {
        self.first().health.clone()
    }

    /// Where the first daemon serves `/metrics`, `/healthz` and `/readyz`.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.first().health.metrics_addr().expect("bound at start")
    }

    /// The first daemon's task ended (it must not, short of a stop).
    pub fn daemon_exited(&self) -> bool {
        self.first().task.is_finished()
    }

    /// `host:port` of the admin API ([`Overrides::admin`]).
    pub fn admin_addr(&self) -> &str {
        &self.admin.as_ref().expect("Overrides::admin").0
    }

    /// The admin API's bearer token ([`Overrides::admin`]).
    pub fn admin_token(&self) -> &str {
        &self.admin.as_ref().expect("Overrides::admin").1
    }

    /// The folder `file://` snapshots go to ([`Overrides::local_snapshots`]).
    pub fn snapshots_dir(&self) -> &std::path::Path {
        self.snapshots
            .as_ref()
            .expect("Overrides::local_snapshots")
            .path()
    }

    /// The database as the test's administrator reaches it (never the proxy).
    pub fn db_url(&self) -> &str {
        &self.db.url
    }

    /// The MariaDB database's name.
    pub fn db_name(&self) -> &str {
        self.db.name.as_deref().expect("a MariaDB database")
    }

    /// `event-backbone run` (the real binary) with this app's settings:
    /// [`base_vars`] and the overrides, plus `extra`.
    pub fn daemon_command(&self, extra: &[(&str, &str)]) -> Command {
        let mut cmd = daemon_command(&self.project, &self.db.url, &[]);
        cmd.envs(self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(extra.iter().copied());
        cmd
    }
}

/// A publisher for the test's topology.
pub async fn publishers(t: &Topology) -> Arc<Publishers> {
    Arc::new(
        Publishers::new(t.clone(), &endpoint())
            .await
            .expect("publishers"),
    )
}

pub async fn publish_raw(p: &Publishers, json: &str) -> String {
    let key = backbone::model::raw_event::parse_raw_event(json.as_bytes())
        .map(|e| e.ordering_key())
        .unwrap_or_default();
    p.publish_to(
        TopicKind::Raw,
        Bytes::from(json.to_string()),
        HashMap::new(),
        &key,
    )
    .await
    .expect("publish raw")
}

/// A tap: an extra subscription on `topic` that the test reads from. One
/// stream for the tap's whole life (a new stream per read would leave leased
/// messages on the old one until their deadline).
pub struct Tap {
    pub subscription: String,
    rx: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<Message>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn tap(t: &Topology, topic: TopicKind) -> Tap {
    tap_with(t, topic, false).await
}

/// A tap with message ordering on, so messages of one ordering key arrive
/// in the order they were published (to check publication order).
pub async fn tap_ordered(t: &Topology, topic: TopicKind) -> Tap {
    tap_with(t, topic, true).await
}

async fn tap_with(t: &Topology, topic: TopicKind, ordered: bool) -> Tap {
    // The topic must exist first; provisioning is idempotent.
    provision(t, &endpoint()).await.expect("provision");
    let admin = clients::subscription_admin(&endpoint())
        .await
        .expect("admin");
    let name = format!(
        "projects/{}/subscriptions/tap-{}-{}",
        t.project_id,
        topic.as_str(),
        rand_suffix(6)
    );
    admin
        .create_subscription()
        .with_request(
            Subscription::new()
                .set_name(name.clone())
                .set_topic(t.topic_path(topic))
                .set_ack_deadline_seconds(60)
                .set_enable_message_ordering(ordered),
        )
        .send()
        .await
        .expect("create tap subscription");
    let subscriber = clients::subscriber(&endpoint()).await.expect("subscriber");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let sub = name.clone();
    let task = tokio::spawn(async move {
        let mut stream = subscriber.subscribe(sub).build();
        while let Some(Ok((m, h))) = stream.next().await {
            h.ack();
            if tx.send(m).is_err() {
                break;
            }
        }
    });
    Tap {
        subscription: name,
        rx: tokio::sync::Mutex::new(rx),
        task,
    }
}

impl Tap {
    /// Collects messages until `n` arrived or `within` passed.
    pub async fn collect(&self, n: usize, within: Duration) -> Vec<Message> {
        let mut out = Vec::new();
        let mut rx = self.rx.lock().await;
        let deadline = tokio::time::Instant::now() + within;
        while out.len() < n {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(m)) => out.push(m),
                Ok(None) | Err(_) => break,
            }
        }
        out
    }

    /// Collects whatever arrives within `quiet` (to prove absence).
    pub async fn drain(&self, quiet: Duration) -> Vec<Message> {
        self.collect(usize::MAX, quiet).await
    }
}

pub fn json(m: &Message) -> serde_json::Value {
    serde_json::from_slice(&m.data).expect("message data is JSON")
}

/// Polls `f` until it returns true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Counts rows of a query that returns one integer.
pub async fn count(store: &backbone::store::Store, sql: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sql)
        .fetch_one(store.pool())
        .await
        .expect("count query")
}

pub fn raw_event(
    source: &str,
    rtype: &str,
    rid: &str,
    base: i64,
    ts: &str,
    changes: serde_json::Value,
) -> String {
    serde_json::json!({
        "source": source, "record_type": rtype, "record_id": rid,
        "base_version": base, "timestamp": ts, "changes": changes,
    })
    .to_string()
}

/// A port nobody listens on right now (for servers that need a fixed address).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Builds project 42 up to version 7 with `status` last changed by netsuite
/// at v7, t=10:00 (docs/spec.md §5 starting point). Returns the events published.
pub fn history_to_v7() -> Vec<String> {
    let mut evs = vec![raw_event(
        "netsuite",
        "project",
        "42",
        0,
        "2026-03-13T01:00:00Z",
        serde_json::json!({"name": "Old"}),
    )];
    for v in 1..6 {
        evs.push(raw_event(
            "netsuite",
            "project",
            "42",
            v,
            &format!("2026-03-13T0{}:00:00Z", v + 1),
            serde_json::json!({ format!("f{v}"): v }),
        ));
    }
    evs.push(raw_event(
        "netsuite",
        "project",
        "42",
        6,
        "2026-03-13T10:00:00Z",
        serde_json::json!({"status": "closed"}),
    ));
    evs
}

/// Creates a runtime user `sw_…` (password `pw`) in MariaDB with the grants
/// shipped in `sql/grants-mysql.sql`, applied to database `db`; returns the
/// user name.
pub async fn apply_shipped_grants(db: &str) -> String {
    use sqlx::Connection;
    let user = format!("sw_{}", rand_suffix(8));
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/sql/grants-mysql.sql"))
            .expect("grants file");
    // Each user has its own password placeholder (docs/integration.md's sed).
    for placeholder in [
        "'SYNC_WORKER_PASSWORD'",
        "'EVENT_ARCHIVER_PASSWORD'",
        "'EVENT_ARCHIVE_RECORDER_PASSWORD'",
    ] {
        assert!(
            shipped.contains(placeholder),
            "sql/grants-mysql.sql lost its password placeholder {placeholder}"
        );
    }
    let grants = shipped
        .replace("event_backbone.", &format!("{db}."))
        .replace("'sync_worker'", &format!("'{user}'"))
        // The archiver of the same grants file: `{user}_ar`.
        .replace("'event_archiver'", &format!("'{user}_ar'"))
        // And its recorder: `{user}_rc`.
        .replace("'event_archive_recorder'", &format!("'{user}_rc'"))
        .replace("'SYNC_WORKER_PASSWORD'", "'pw'")
        .replace("'EVENT_ARCHIVER_PASSWORD'", "'pw'")
        .replace("'EVENT_ARCHIVE_RECORDER_PASSWORD'", "'pw'");
    let mut admin = sqlx::MySqlConnection::connect(&mariadb_admin_url())
        .await
        .expect("admin connection");
    for stmt in grants
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n")
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        sqlx::raw_sql(stmt)
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("{stmt}: {e}"));
    }
    user
}

/// Drops a user made by [`apply_shipped_grants`].
pub async fn drop_user(user: &str) {
    use sqlx::Connection;
    let mut admin = sqlx::MySqlConnection::connect(&mariadb_admin_url())
        .await
        .expect("admin connection");
    sqlx::query(&format!("DROP USER '{user}'@'%'"))
        .execute(&mut admin)
        .await
        .expect("drop user");
    for suffix in ["_ar", "_rc"] {
        let _ = sqlx::query(&format!("DROP USER IF EXISTS '{user}{suffix}'@'%'"))
            .execute(&mut admin)
            .await;
    }
}

/// A transient merge fault a test can clear: raw events whose changes live
/// in a snapshot file that does not exist until [`MissingSnapshots::provide`]
/// (docs/spec.md §10: a missing snapshot is transient). Point the daemon at it with
/// [`MissingSnapshots::setting`].
pub struct MissingSnapshots {
    dir: tempfile::TempDir,
}

impl MissingSnapshots {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// `file://…` of the folder (`snapshots.url`).
    pub fn url(&self) -> String {
        format!("file://{}", self.dir.path().display())
    }

    /// The `BACKBONE__SNAPSHOTS__URL` override.
    pub fn setting(&self) -> (&'static str, String) {
        ("BACKBONE__SNAPSHOTS__URL", self.url())
    }

    /// A raw event whose changes are in snapshot `name` (missing for now).
    pub fn event(&self, source: &str, rtype: &str, rid: &str, base: i64, name: &str) -> String {
        serde_json::json!({
            "source": source, "record_type": rtype, "record_id": rid,
            "base_version": base, "timestamp": "2026-03-13T10:00:00Z", "changes": {},
            "full_snapshot_ref": format!("{}/raw/{name}.json", self.url()),
        })
        .to_string()
    }

    /// Clears the fault for `name`.
    pub fn provide(&self, name: &str, changes: serde_json::Value) {
        // Under `raw/`, where raw events' snapshots must be (issue 31).
        let raw = self.dir.path().join("raw");
        std::fs::create_dir_all(&raw).expect("raw folder");
        std::fs::write(raw.join(format!("{name}.json")), changes.to_string())
            .expect("write snapshot");
    }
}
// ---------------------------------------------------------------------------
// A TCP proxy the test controls, standing between the daemon and MariaDB or
// the Pub/Sub emulator.

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forwards both ways.
    Pass,
    /// Every open connection is dropped and new ones are closed at once
    /// (connection reset / refused, as a restarting server or failover).
    Refuse,
    /// New connections are accepted and open ones stay open, but nothing is
    /// forwarded either way: a hung network. Forwarding resumes on restore,
    /// as when a partition heals.
    Blackhole,
}

pub struct Proxy {
    pub port: u16,
    mode: tokio::sync::watch::Sender<ProxyMode>,
    /// Cancelled (and replaced) on every refuse: drops the open connections.
    generation: Arc<std::sync::Mutex<CancellationToken>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.generation.lock().expect("lock").cancel();
    }
}

impl Proxy {
    pub async fn start(upstream: impl Into<String>) -> Proxy {
        let upstream: Arc<str> = upstream.into().into();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let (mode, _) = tokio::sync::watch::channel(ProxyMode::Pass);
        let generation = Arc::new(std::sync::Mutex::new(CancellationToken::new()));
        let (mode2, gen2) = (mode.clone(), generation.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if *mode2.borrow() == ProxyMode::Refuse {
                    drop(client);
                    continue;
                }
                let cut = gen2.lock().expect("lock").clone();
                let (upstream, rx) = (upstream.clone(), mode2.subscribe());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = cut.cancelled() => {}
                        _ = proxy_connection(client, &upstream, rx) => {}
                    }
                });
            }
        });
        Proxy {
            port,
            mode,
            generation,
            task,
        }
    }

    pub fn mode(&self) -> ProxyMode {
        *self.mode.borrow()
    }

    /// Resets every open connection and refuses new ones until restored.
    pub fn refuse(&self) {
        self.mode.send_replace(ProxyMode::Refuse);
        let mut g = self.generation.lock().expect("lock");
        g.cancel();
        *g = CancellationToken::new();
    }

    /// Hangs every connection (open and new) until restored.
    pub fn blackhole(&self) {
        self.mode.send_replace(ProxyMode::Blackhole);
    }

    /// Same as [`Proxy::refuse`].
    pub fn cut(&self) {
        self.refuse();
    }

    pub fn restore(&self) {
        self.mode.send_replace(ProxyMode::Pass);
    }
}

/// Waits until the proxy forwards; false when the proxy is gone.
async fn proxy_passes(mode: &mut tokio::sync::watch::Receiver<ProxyMode>) -> bool {
    mode.wait_for(|m| *m == ProxyMode::Pass).await.is_ok()
}

async fn proxy_connection(
    client: tokio::net::TcpStream,
    upstream: &str,
    mut mode: tokio::sync::watch::Receiver<ProxyMode>,
) {
    // Accepted while blackholed: the upstream is not even dialled until the
    // network "heals" (the client sees a connection that never answers).
    if !proxy_passes(&mut mode).await {
        return;
    }
    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
        return;
    };
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = proxy_pump(cr, sw, mode.clone());
    let down = proxy_pump(sr, cw, mode);
    tokio::join!(up, down);
}

/// Copies one direction, pausing (neither reading nor writing) while the
/// proxy is not in `Pass`, so the peer's writes back up as on a dead link.
async fn proxy_pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: tokio::sync::watch::Receiver<ProxyMode>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if !proxy_passes(&mut mode).await {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Bytes read just as the link went down are held, not forwarded.
        if !proxy_passes(&mut mode).await {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
