//! `Application::build(settings)`: the daemon as `run` starts it and as the
//! tests boot it — store, clients, stages, supervisor, relay, HTTP.

pub mod targets;

use std::sync::Arc;

use anyhow::Context;
use secrecy::ExposeSecret;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::model::raw_event::Source;
use crate::pubsub::clients::{self, Endpoint};
use crate::pubsub::publisher::Publishers;
use crate::runtime::consumer::{ConsumerSpec, Runtime};
use crate::runtime::health::Health;
use crate::runtime::outbox_relay::{self, OutboxCompleter};
use crate::runtime::supervisor::{Supervised, Supervisor};
use crate::snapshots::claim_check::ClaimCheck;
use crate::snapshots::gcs::{GcsSnapshots, ENV_VAR_STORAGE_EMULATOR_HOST};
use crate::snapshots::{local::LocalSnapshots, SnapshotStore};
use crate::stages::deliver;
use crate::stages::deliver::pacing::Pacer;
use crate::stages::deliver::slots::AccountSlots;
use crate::stages::merge::batch::{EngineConfig, MergeEngine};
use crate::stages::merge::MergeStage;
use crate::stages::park::{self, ParkStage};
use crate::stages::retry::schedule::Schedule;
use crate::stages::retry::RetryRouter;
use crate::stages::{Direct, Registry, Router, Stage};
use crate::store::outbox::ConfirmedSet;
use crate::store::Store;
use crate::topology::{ConsumerKind, StageName, TopicKind, Topology};

pub use self::targets::pacing_settings;

pub fn endpoint(s: &Settings) -> Endpoint {
    Endpoint::from_emulator_host(s.pubsub.emulator_host.as_deref())
}

/// The store for `migrate`, `run` and `demo`: the local SQLite file is
/// created when missing (`mode=rwc`).
pub async fn create_store(s: &Settings) -> anyhow::Result<Store> {
    open_store(s, true).await
}

/// The store as it is, for `doctor`: never created, its schema not required.
pub async fn open_existing_store(s: &Settings) -> anyhow::Result<Store> {
    open_store(s, false).await
}

async fn open_store(s: &Settings, create: bool) -> anyhow::Result<Store> {
    let (url, max, timeout) = (
        s.database.url.expose_secret(),
        s.database.max_connections,
        s.database.connect_timeout,
    );
    let store = if create {
        Store::connect(url, max, timeout).await
    } else {
        Store::connect_existing(url, max, timeout).await
    };
    store
        .map(|store| store.with_query_timeout(s.database.query_timeout))
        .with_context(|| format!("connecting to the database {}", s.database.url_masked()))
}

/// The store for commands that read it (`dlq`, `events`, `explain`,
/// `verify`, `archive`, `mcp`): it must exist and hold the schema, so a
/// command run from the wrong folder says so instead of creating an empty
/// database and failing on a missing table.
pub async fn connect_store(s: &Settings) -> anyhow::Result<Store> {
    let store = open_existing_store(s).await?;
    let status = crate::store::schema::inspect(&store)
        .await
        .with_context(|| format!("reading the schema of {}", database_name(s)))?;
    if status.never_migrated {
        store.close().await;
        anyhow::bail!(
            "schema missing in {}: run `event-backbone migrate` first",
            database_name(s)
        );
    }
    Ok(store)
}

/// The database as an operator finds it: an SQLite file's absolute path,
/// else the URL without its password.
pub fn database_name(s: &Settings) -> String {
    match crate::store::sqlite_path(s.database.url.expose_secret()) {
        Some(p) => std::path::absolute(p)
            .unwrap_or_else(|_| p.to_path_buf())
            .display()
            .to_string(),
        None => s.database.url_masked(),
    }
}

/// The snapshot store `snapshots.url` names: a GCS bucket (fake-gcs-server
/// when `STORAGE_EMULATOR_HOST` is set) or a local folder.
pub async fn snapshot_store(s: &Settings) -> anyhow::Result<Arc<dyn SnapshotStore>> {
    if s.snapshots.url.starts_with("file://") {
        Ok(Arc::new(
            LocalSnapshots::new(&s.snapshots.url).with_raw_prefix(&s.snapshots.raw_prefix),
        ))
    } else {
        let emulator = std::env::var(ENV_VAR_STORAGE_EMULATOR_HOST).ok();
        let gcs = GcsSnapshots::new(&s.snapshots.url, emulator.as_deref())
            .await
            .with_context(|| format!("opening the snapshot bucket {}", s.snapshots.url))?;
        Ok(Arc::new(gcs.with_raw_prefix(&s.snapshots.raw_prefix)))
    }
}

pub struct Application {
    pub settings: Settings,
    pub topology: Topology,
    pub store: Store,
    pub publishers: Arc<Publishers>,
    pub registry: Registry,
    pub health: Arc<Health>,
    endpoint: Endpoint,
    claim_check: ClaimCheck,
    /// Outbox rows published but not yet deleted (engine and completer share it).
    confirmed: ConfirmedSet,
    /// Each delivery target's pacer, and what ends their waits at shutdown.
    pub pacers: Vec<Arc<Pacer>>,
    /// The delivery stages whose targets' messages this process consumes:
    /// each also takes over what nobody is delivering while it is idle.
    delivers: Vec<Arc<deliver::DeliverStage>>,
    stop_pacing: CancellationToken,
}

impl Application {
    /// Connects everything without starting consumers. The schema must be
    /// current (or is migrated first when `database.migrate_on_start`):
    /// no DDL otherwise, so the least-privilege runtime user can boot it.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let topology = settings.topology();
        let endpoint = endpoint(&settings);
        let store = create_store(&settings).await?;
        crate::store::schema::ensure(&store, settings.database.migrate_on_start).await?;
        let publishers = Arc::new(
            Publishers::new(topology.clone(), &endpoint)
                .await
                .context("building the Pub/Sub publisher")?,
        );
        let confirmed = ConfirmedSet::default();
        let engine = MergeEngine::start(
            store.clone(),
            EngineConfig {
                policy: settings.merge_policy(),
                merged_topic: topology.topic_path(TopicKind::Merged),
                batch_max: settings.merge.batch_max,
                linger: settings.merge.batch_linger,
                workers: if store.backend() == crate::store::Backend::Sqlite {
                    1
                } else {
                    settings.merge.workers
                },
                confirmed: confirmed.clone(),
            },
        );
        let snapshots = snapshot_store(&settings).await?;
        let claim_check = ClaimCheck::new(
            snapshots.clone(),
            settings.snapshots.claim_check_threshold_bytes,
        );
        let mut registry = Registry::default();
        let stop_pacing = CancellationToken::new();
        let mut pacers = Vec::new();
        let mut slots_of = Vec::new();
        let mut delivers = Vec::new();
        registry.register(Arc::new(
            MergeStage::new(engine.clone(), snapshots)
                .with_claim_check_threshold(settings.snapshots.claim_check_threshold_bytes),
        ));
        for (target, cfg) in [
            (Source::Netsuite, &settings.targets.netsuite),
            (Source::Suitex, &settings.targets.suitex),
        ] {
            if let Some(delivery) = targets::deliver_settings(target.as_str(), cfg)? {
                let pacer = Pacer::new(target.as_str(), pacing_settings(cfg), stop_pacing.clone());
                pacers.push(pacer.clone());
                let slots = match cfg.account_concurrency {
                    0 => None,
                    cap => Some(
                        AccountSlots::new(target.as_str(), cap, store.clone(), stop_pacing.clone())
                            .await
                            .with_context(|| {
                                format!("preparing the account slots of target {target}")
                            })?,
                    ),
                };
                slots_of.push(slots.clone());
                let stage = deliver::build(
                    target,
                    delivery,
                    store.clone(),
                    claim_check.clone(),
                    pacer,
                    slots,
                );
                // Only where this process consumes the target's messages:
                // a merge-only deployment delivers nothing.
                let consumes = match target {
                    Source::Netsuite => settings.consumers.netsuite.enabled,
                    Source::Suitex => settings.consumers.suitex.enabled,
                };
                if consumes && stage.takes_over() {
                    delivers.push(stage.clone());
                }
                registry.register(stage);
            }
        }
        registry.register(Arc::new(ParkStage::new(store.clone(), topology.clone())));
        let health = Arc::new(Health::default());
        health.set_targets(pacers.clone(), slots_of);
        Ok(Self {
            settings,
            topology,
            store,
            publishers,
            registry,
            health,
            endpoint,
            claim_check,
            confirmed,
            pacers,
            delivers,
            stop_pacing,
        })
    }

    /// How each consumer picks the stage for a message (None: not built).
    fn router_for(&self, kind: ConsumerKind) -> Option<Arc<dyn Router>> {
        let direct =
            |stage: Option<Arc<dyn Stage>>| stage.map(|s| Arc::new(Direct(s)) as Arc<dyn Router>);
        match kind {
            ConsumerKind::Merge | ConsumerKind::Netsuite | ConsumerKind::Suitex => {
                direct(self.registry.get(StageName::of_consumer(kind).as_str()))
            }
            // Park's failures are held, never sent to the error topic, so
            // an envelope naming it is not a retry: rejected, as before park
            // was registered.
            ConsumerKind::Retry => Some(Arc::new(RetryRouter {
                registry: self.registry.without(park::STAGE),
                schedule: self.schedule(),
            })),
            ConsumerKind::Park => direct(self.registry.get(park::STAGE)),
        }
    }

    pub fn schedule(&self) -> Schedule {
        let r = &self.settings.retry;
        Schedule {
            initial: r.initial_backoff,
            multiplier: r.multiplier,
            max: r.max_backoff,
            max_attempts: r.max_attempts,
        }
    }

    /// Runs until `shutdown` fires, then drains and flushes.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let (completer, completer_task) =
            OutboxCompleter::start(self.store.clone(), self.confirmed.clone());
        let runtime = Arc::new(Runtime {
            publishers: self.publishers.clone(),
            outbox: completer.clone(),
            max_attempts: self.settings.retry.max_attempts,
            health: self.health.clone(),
            park: Arc::new(ParkStage::new(self.store.clone(), self.topology.clone())),
        });
        let consumers = self.consumers();
        self.prime_gauges(&consumers).await;
        let supervisor = Supervisor {
            subscriber: clients::subscriber(&self.endpoint).await?,
            admin: clients::subscription_admin(&self.endpoint).await?,
            runtime,
            health: self.health.clone(),
            grace: self.settings.shutdown.grace,
            probe_interval: self.settings.pubsub.probe_interval,
        };
        let background = self.spawn_background(&completer, &shutdown).await;
        let (http, admin) = self.serve_endpoints(&shutdown).await?;
        tracing::info!(
            env = %self.topology.env,
            project = %self.topology.project_id,
            consumers = consumers.len(),
            "event-backbone is running."
        );
        supervisor.run(consumers, shutdown.clone()).await;
        background.join().await;
        drop(completer);
        self.publishers.flush().await;
        let _ = completer_task.await;
        http.abort();
        if let Some(admin) = admin {
            admin.abort();
        }
        self.store.close().await;
        tracing::info!("event-backbone stopped cleanly.");
        Ok(())
    }

    /// One supervised consumer per enabled subscription that has a stage.
    fn consumers(&self) -> Vec<Supervised> {
        let mut consumers = Vec::new();
        for kind in ConsumerKind::all() {
            let cs = self.settings.consumers.get(kind);
            if !cs.enabled {
                continue;
            }
            let Some(router) = self.router_for(kind) else {
                tracing::warn!(
                    consumer = kind.as_str(),
                    "Consumer is enabled but has no stage in this build; skipping it."
                );
                continue;
            };
            consumers.push(Supervised {
                spec: ConsumerSpec {
                    subscription: self.topology.subscription_path(kind),
                    label: self.topology.subscription_id(kind),
                    router,
                    max_outstanding: cs.max_outstanding_messages,
                    // Retries are held for their backoff and the dlq is
                    // unordered: each message runs on its own there.
                    lanes: match kind {
                        ConsumerKind::Retry | ConsumerKind::Park => 0,
                        _ => cs.lanes,
                    },
                    // A record's burst merges in one batch: its events queue
                    // at the merge engine in order, not one batch apart. A
                    // delivery works on the record as a whole: one at a time.
                    ahead: match kind {
                        ConsumerKind::Merge => crate::stages::merge::LANE_AHEAD,
                        _ => 1,
                    },
                },
            });
        }
        consumers
    }

    /// The gauges must show what is parked, and every consumer's series,
    /// from the first scrape on, not only after this process acts.
    async fn prime_gauges(&self, consumers: &[Supervised]) {
        match self.store.pending_dead_letters().await {
            Ok(n) => crate::metrics::set_dead_letters_parked(n),
            Err(e) => {
                tracing::warn!(error = %e, "Could not count parked dead letters at startup.")
            }
        }
        crate::metrics::prime(
            &consumers
                .iter()
                .map(|c| c.spec.label.clone())
                .collect::<Vec<_>>(),
        );
    }

    /// The tasks beside the consumers: the outbox relay, the gap sweeper,
    /// the operator sweep, each target's takeover, and what hands waiting
    /// deliveries back at shutdown.
    async fn spawn_background(
        &self,
        completer: &OutboxCompleter,
        shutdown: &CancellationToken,
    ) -> Background {
        let relay = tokio::spawn(outbox_relay::run_relay(
            self.store.clone(),
            self.publishers.clone(),
            completer.clone(),
            self.claim_check.clone(),
            self.settings.outbox.relay_after,
            self.settings.outbox.relay_interval,
            shutdown.clone(),
        ));
        let sweeper = tokio::spawn(crate::stages::merge::gaps::run_sweeper(
            self.store.clone(),
            self.publishers.clone(),
            self.settings.merge.gap_timeout,
            self.settings.merge.gap_check_interval,
            shutdown.clone(),
        ));
        // A target paused by hand stays paused across a restart: applied
        // before the first message is pulled, then kept current.
        if let Err(e) = crate::ops::sweep::apply_controls(&self.store, &self.pacers).await {
            tracing::warn!(error = %e, "Could not read the targets' pauses at startup.");
        }
        let operator_sweep = tokio::spawn(crate::ops::sweep::run(
            self.store.clone(),
            self.pacers.clone(),
            shutdown.clone(),
        ));
        let takeovers = self
            .delivers
            .iter()
            .map(|d| tokio::spawn(d.clone().take_over(shutdown.clone())))
            .collect();
        // Deliveries waiting for a target are handed back at shutdown.
        let stop_pacing = self.stop_pacing.clone();
        let pacing_stopper = tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                shutdown.cancelled().await;
                stop_pacing.cancel();
            }
        });
        Background {
            relay,
            sweeper,
            operator_sweep,
            takeovers,
            pacing_stopper,
        }
    }

    /// The metrics/health listener and, when configured, the admin one.
    async fn serve_endpoints(
        &self,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<(JoinHandle<()>, Option<JoinHandle<()>>)> {
        let http = crate::http::serve(
            &self.settings,
            self.store.clone(),
            self.health.clone(),
            shutdown.clone(),
        )
        .await?;
        let admin = crate::admin::serve(
            &self.settings,
            crate::admin::AdminState::new(self.store.clone(), &self.settings)
                .with_publishers(self.publishers.clone())
                .with_health(self.health.clone())
                .with_sinks(targets::sinks(&self.settings)?),
            shutdown.clone(),
        )
        .await?;
        Ok((http, admin))
    }
}

/// The tasks [`Application::spawn_background`] started.
struct Background {
    relay: JoinHandle<()>,
    sweeper: JoinHandle<()>,
    operator_sweep: JoinHandle<()>,
    takeovers: Vec<JoinHandle<()>>,
    pacing_stopper: JoinHandle<()>,
}

impl Background {
    /// Once the consumers stopped: the pacing stopper is no longer needed;
    /// the others end on the shutdown token.
    async fn join(self) {
        self.pacing_stopper.abort();
        let _ = self.relay.await;
        let _ = self.sweeper.await;
        let _ = self.operator_sweep.await;
        for t in self.takeovers {
            let _ = t.await;
        }
    }
}
