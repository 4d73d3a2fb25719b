//! `Application::build(settings)`: the daemon as `run` starts it and as the
//! tests boot it — store, clients, stages, supervisor, relay, HTTP.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::model::raw_event::Source;
use crate::outbox_relay::{self, OutboxCompleter};
use crate::pubsub::clients::{self, Endpoint};
use crate::pubsub::consumer::{ConsumerSpec, Prepare, Runtime};
use crate::pubsub::publisher::Publishers;
use crate::snapshots::{local::LocalSnapshots, SnapshotStore};
use crate::stages::merge::batch::{EngineConfig, MergeEngine};
use crate::stages::merge::rules::{ConflictPolicy, MergePolicy};
use crate::stages::merge::MergeStage;
use crate::stages::{Incoming, Registry, Stage};
use crate::store::Store;
use crate::supervisor::{Health, Supervised, Supervisor};
use crate::topology::{ConsumerKind, TopicKind, Topology};

/// The merge policy from configuration (validated already).
pub fn merge_policy(s: &Settings) -> MergePolicy {
    MergePolicy {
        conflict_policy: match s.merge.conflict_policy {
            crate::config::ConflictPolicy::LastWriterWins => ConflictPolicy::LastWriterWins,
            crate::config::ConflictPolicy::SourcePriority => ConflictPolicy::SourcePriority,
        },
        source_priority: s
            .merge
            .source_priority
            .iter()
            .filter_map(|p| p.parse::<Source>().ok())
            .collect(),
    }
}

pub fn endpoint(s: &Settings) -> Endpoint {
    Endpoint::from_emulator_host(s.pubsub.emulator_host.as_deref())
}

pub async fn connect_store(s: &Settings) -> anyhow::Result<Store> {
    Store::connect(
        s.database.url.expose_secret(),
        s.database.max_connections,
        s.database.connect_timeout,
    )
    .await
    .with_context(|| format!("connecting to the database {}", s.database.url_masked()))
}

pub fn snapshot_store(s: &Settings) -> anyhow::Result<Arc<dyn SnapshotStore>> {
    if s.snapshots.url.starts_with("file://") {
        Ok(Arc::new(LocalSnapshots::new(&s.snapshots.url)))
    } else {
        anyhow::bail!(
            "snapshots.url {} is not supported by this build yet (only file://)",
            s.snapshots.url
        )
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
    engine: MergeEngine,
}

impl Application {
    /// Connects everything (migrating the store) without starting consumers.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let topology = settings.topology();
        let endpoint = endpoint(&settings);
        let store = connect_store(&settings).await?;
        store.migrate().await.context("migrating the event store")?;
        let publishers = Arc::new(
            Publishers::new(topology.clone(), &endpoint)
                .await
                .context("building the Pub/Sub publisher")?,
        );
        let engine = MergeEngine::start(
            store.clone(),
            EngineConfig {
                policy: merge_policy(&settings),
                merged_topic: topology.topic_path(TopicKind::Merged),
                batch_max: settings.merge.batch_max,
                linger: settings.merge.batch_linger,
                workers: if store.backend() == crate::store::Backend::Sqlite {
                    1
                } else {
                    settings.merge.workers
                },
            },
        );
        let mut registry = Registry::default();
        registry.register(Arc::new(MergeStage::new(
            engine.clone(),
            snapshot_store(&settings)?,
        )));
        Ok(Self {
            settings,
            topology,
            store,
            publishers,
            registry,
            health: Arc::new(Health::default()),
            endpoint,
            engine,
        })
    }

    pub fn engine(&self) -> &MergeEngine {
        &self.engine
    }

    /// The stage each consumer runs (those not built yet are skipped).
    fn stage_for(&self, kind: ConsumerKind) -> Option<Arc<dyn Stage>> {
        match kind {
            ConsumerKind::Merge => self.registry.get("merge"),
            _ => None,
        }
    }

    /// Runs until `shutdown` fires, then drains and flushes.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let (completer, completer_task) =
            OutboxCompleter::start(self.store.clone());
        let runtime = Arc::new(Runtime {
            publishers: self.publishers.clone(),
            outbox: completer.clone(),
            max_attempts: self.settings.retry.max_attempts,
        });
        let mut consumers = Vec::new();
        for kind in ConsumerKind::all() {
            let cs = self.settings.consumers.get(kind);
            if !cs.enabled {
                continue;
            }
            let Some(stage) = self.stage_for(kind) else {
                tracing::warn!(consumer = kind.as_str(), "Consumer is enabled but not implemented in this build; skipping it.");
                continue;
            };
            let prepare: Prepare = Arc::new(|m| Incoming::from(m));
            consumers.push(Supervised {
                spec: ConsumerSpec {
                    subscription: self.topology.subscription_path(kind),
                    label: self.topology.subscription_id(kind),
                    stage,
                    max_outstanding: cs.max_outstanding_messages,
                    lanes: cs.lanes,
                },
                prepare,
            });
        }
        let supervisor = Supervisor {
            subscriber: clients::subscriber(&self.endpoint).await?,
            admin: clients::subscription_admin(&self.endpoint).await?,
            runtime,
            health: self.health.clone(),
            grace: self.settings.shutdown.grace,
        };
        let relay = tokio::spawn(outbox_relay::run_relay(
            self.store.clone(),
            self.publishers.clone(),
            completer.clone(),
            Duration::from_secs(30),
            Duration::from_secs(10),
            shutdown.clone(),
        ));
        let http = crate::http::serve(
            &self.settings,
            self.store.clone(),
            self.health.clone(),
            shutdown.clone(),
        )
        .await?;
        tracing::info!(
            env = %self.topology.env,
            project = %self.topology.project_id,
            consumers = consumers.len(),
            "event-backbone is running."
        );
        supervisor.run(consumers, shutdown.clone()).await;
        let _ = relay.await;
        drop(completer);
        self.publishers.flush().await;
        let _ = completer_task.await;
        http.abort();
        self.store.close().await;
        tracing::info!("event-backbone stopped cleanly.");
        Ok(())
    }
}
