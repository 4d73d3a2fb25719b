//! `event-backbone doctor`: live checks of everything the daemon needs, with
//! the configured credentials — one line per check naming what it talks to
//! (`host:port`, a file), exit 1 if any fails. Nothing it does leaves a
//! trace in the ledger: the database probes are rolled back, the Pub/Sub
//! probe subscription is deleted, and the probe message is acked unrecorded
//! by the merge stage.
//!
//! Bounded: each check gets [`CHECK_TIMEOUT`], all of them [`TOTAL_TIMEOUT`].
//! Pub/Sub and MySQL are first reached with a plain TCP connection, so a
//! wrong port is "connection refused" at once rather than a client's
//! retries until the time runs out. A check that needs one that failed is
//! reported as skipped, with the reason, and counted in the summary.

mod database;
mod pubsub;
mod report;
mod snapshots;
mod targets;

use std::future::Future;
use std::time::Duration;

use secrecy::ExposeSecret;
use tokio::time::Instant;

use backbone::config::Settings;
use backbone::topology::{ConsumerKind, TopicKind};

pub use self::report::{summary, Check, Status};

/// Longest any single check may take, so doctor never hangs on a dead peer.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// The Pub/Sub round trip creates a subscription, publishes and pulls.
const ROUND_TRIP_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest doctor runs in all; checks left when it is spent are skipped.
const TOTAL_TIMEOUT: Duration = Duration::from_secs(30);

/// The time budget of one doctor run.
#[derive(Debug, Clone, Copy)]
struct Budget {
    deadline: Instant,
}

impl Budget {
    fn new() -> Self {
        Budget {
            deadline: Instant::now() + TOTAL_TIMEOUT,
        }
    }

    /// Runs `fut` for at most `limit` and what is left of the budget;
    /// the error names `at` and the time it waited.
    async fn bounded<T>(
        &self,
        at: &str,
        limit: Duration,
        fut: impl Future<Output = Result<T, String>>,
    ) -> Result<T, String> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "not run: doctor's {} s budget is spent",
                TOTAL_TIMEOUT.as_secs()
            ));
        }
        let limit = limit.min(left);
        tokio::time::timeout(limit, fut).await.unwrap_or_else(|_| {
            Err(format!(
                "{at}: no answer within {:.1} s",
                limit.as_secs_f64()
            ))
        })
    }
}

/// A TCP connection to `addr` (`host:port`): refused is said at once.
async fn tcp(addr: &str) -> Result<String, String> {
    match tokio::net::TcpStream::connect(addr).await {
        Ok(_) => Ok(format!("{addr} accepts connections")),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Err(format!(
            "{addr}: connection refused (nothing listens there; wrong host or port?)"
        )),
        Err(e) => Err(format!("{addr}: {e}")),
    }
}

/// Where Pub/Sub is: the emulator's `host:port`, or Google's endpoint.
fn pubsub_addr(s: &Settings) -> String {
    match &s.pubsub.emulator_host {
        Some(h) => h
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .trim_end_matches('/')
            .to_owned(),
        None => "pubsub.googleapis.com:443".to_owned(),
    }
}

/// Where the database is: MySQL's `host:port`, or the SQLite file's path.
fn database_addr(s: &Settings) -> (String, bool) {
    let url = s.database.url.expose_secret();
    match url::Url::parse(url) {
        Ok(u) if u.scheme() == "mysql" || u.scheme() == "mariadb" => (
            format!(
                "{}:{}",
                u.host_str().unwrap_or("localhost"),
                u.port().unwrap_or(3306)
            ),
            true,
        ),
        _ => (backbone::app::database_name(s), false),
    }
}

/// Every check, in order; a check whose prerequisite failed is skipped.
pub async fn checks(settings: &Settings) -> Vec<Check> {
    let budget = Budget::new();
    let mut out = Vec::new();
    pubsub_checks(settings, &budget, &mut out).await;
    database_checks(settings, &budget, &mut out).await;
    let snap_at = snapshots::address(settings);
    out.push(
        Check::from(
            "snapshots: write and read",
            budget
                .bounded(&snap_at, CHECK_TIMEOUT, snapshots::write_and_read(settings))
                .await,
        )
        .at(snap_at),
    );
    out.extend(targets::checks(settings, CHECK_TIMEOUT).await);
    out
}

async fn pubsub_checks(settings: &Settings, budget: &Budget, out: &mut Vec<Check>) {
    let topology = settings.topology();
    let ep = backbone::app::endpoint(settings);
    let addr = pubsub_addr(settings);
    let mut names = vec![
        "pubsub: topics exist".to_owned(),
        format!("pubsub: publish+pull {}", topology.topic_id(TopicKind::Raw)),
    ];
    let kinds: Vec<ConsumerKind> = ConsumerKind::all()
        .into_iter()
        .filter(|k| settings.consumers.get(*k).enabled)
        .collect();
    names.extend(
        kinds
            .iter()
            .map(|k| format!("pubsub: {}", topology.subscription_id(*k))),
    );

    let connect = Check::from(
        "pubsub: connect",
        budget.bounded(&addr, CHECK_TIMEOUT, tcp(&addr)).await,
    )
    .at(&addr);
    let reached = connect.ok();
    out.push(connect);
    if !reached {
        for n in names {
            out.push(Check::skipped(n, "`pubsub: connect` failed").at(&addr));
        }
        return;
    }
    out.push(
        Check::from(
            names[0].clone(),
            budget
                .bounded(&addr, CHECK_TIMEOUT, pubsub::topics(&topology, &ep))
                .await,
        )
        .at(&addr),
    );
    out.push(
        Check::from(
            names[1].clone(),
            budget
                .bounded(
                    &addr,
                    ROUND_TRIP_TIMEOUT,
                    pubsub::raw_round_trip(&topology, &ep),
                )
                .await,
        )
        .at(&addr),
    );
    for (kind, name) in kinds.into_iter().zip(names.into_iter().skip(2)) {
        out.push(
            Check::from(
                name,
                budget
                    .bounded(
                        &addr,
                        CHECK_TIMEOUT,
                        pubsub::subscription(&topology, &ep, kind),
                    )
                    .await,
            )
            .at(&addr),
        );
    }
}

async fn database_checks(settings: &Settings, budget: &Budget, out: &mut Vec<Check>) {
    const DEPENDENT: [&str; 3] = [
        "database: migrations applied",
        "database: write and roll back",
        "database: ledger refuses UPDATE/DELETE",
    ];
    let (at, networked) = database_addr(settings);
    let connect = budget
        .bounded(&at, CHECK_TIMEOUT, async {
            if networked {
                tcp(&at).await?;
            }
            backbone::app::open_existing_store(settings)
                .await
                .map_err(|e| format!("{e:#}"))
        })
        .await;
    let store = match connect {
        Ok(store) => store,
        Err(e) => {
            out.push(Check::from("database: connect", Err(e)).at(&at));
            for n in DEPENDENT {
                out.push(Check::skipped(n, "`database: connect` failed").at(&at));
            }
            return;
        }
    };
    out.push(
        Check::from(
            "database: connect",
            budget
                .bounded(&at, CHECK_TIMEOUT, async {
                    store.ping().await.map_err(|e| e.to_string())?;
                    Ok(format!("{} answers", settings.database.url_masked()))
                })
                .await,
        )
        .at(&at),
    );
    let migrations = database::migrations(&store).await.at(&at);
    let schema_ok = migrations.ok();
    out.push(migrations);
    if schema_ok {
        out.push(
            Check::from(
                DEPENDENT[1],
                budget
                    .bounded(&at, CHECK_TIMEOUT, database::write_and_roll_back(&store))
                    .await,
            )
            .at(&at),
        );
        out.push(
            Check::from(
                DEPENDENT[2],
                budget
                    .bounded(&at, CHECK_TIMEOUT, database::ledger_immutable(&store))
                    .await,
            )
            .at(&at),
        );
    } else {
        for n in &DEPENDENT[1..] {
            out.push(Check::skipped(*n, "`database: migrations applied` failed").at(&at));
        }
    }
    store.close().await;
}

/// The delivery targets' checks alone (reachability, credentials).
pub async fn target_checks(settings: &Settings) -> Vec<Check> {
    targets::checks(settings, CHECK_TIMEOUT).await
}

pub async fn run(settings: Settings) -> anyhow::Result<i32> {
    let started = std::time::Instant::now();
    let checks = checks(&settings).await;
    let code = report::print(&checks);
    println!("Took {:.1} s.", started.elapsed().as_secs_f64());
    Ok(code)
}
