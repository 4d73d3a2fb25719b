//! The event store over MCP (Model Context Protocol) for operators'
//! assistants: a record's events, its state at any sequence, why a field
//! holds its value, the catalogue of types and outcomes, the DLQ, the
//! pipeline's status, and (when switched on) DLQ replay and raw-event
//! publishing.
//!
//! Two transports, one server ([`server::McpServer`], built on the
//! official Rust SDK `rmcp`): stdio (`event-backbone mcp`, the operator's
//! own credentials) and streamable HTTP at `/mcp` on the admin listener
//! ([`http::service`], behind the admin bearer token). Each tool is a file
//! of [`tools`]: its types, its description, and its logic (a method of
//! [`Ctx`] reusing `history`, `explain`, `dlq` and the store, or a call into
//! `ops`); `pipeline_status` gathers its answer in [`status`]; `server`
//! routes.

pub mod catalog;
pub mod http;
pub mod server;
pub mod status;
pub mod tools;

use std::sync::Arc;

use tokio::sync::OnceCell;

use crate::config::Settings;
use crate::model::rules::MergePolicy;
use crate::pubsub::clients::Endpoint;
use crate::pubsub::publisher::Publishers;
use crate::runtime::health::Health;
use crate::store::Store;

pub use self::server::McpServer;
use self::tools::ToolError;

/// How the caller reached this server; audit rows and logs name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Stdio,
    Http,
}

impl Transport {
    /// The caller as audit rows record it.
    pub fn caller(self) -> &'static str {
        match self {
            Transport::Stdio => "mcp/stdio",
            Transport::Http => "mcp/http",
        }
    }
}

/// What every tool reads. Cheap to clone.
#[derive(Clone)]
pub struct Ctx {
    pub store: Store,
    /// The configured merge policy: replays fold exactly as the live stage does.
    pub policy: Arc<MergePolicy>,
    pub settings: Arc<Settings>,
    /// The daemon's readiness, when this server runs inside it.
    pub health: Option<Arc<Health>>,
    pub transport: Transport,
    /// Built on the first write when not handed in: a read-only session
    /// never needs Pub/Sub.
    publishers: Arc<OnceCell<Arc<Publishers>>>,
    /// Each target's signed client, for `resync_records`.
    pub sinks: crate::ops::records::Sinks,
}

impl Ctx {
    pub fn new(store: Store, settings: &Settings, transport: Transport) -> Self {
        Self {
            store,
            policy: Arc::new(settings.merge_policy()),
            settings: Arc::new(settings.clone()),
            health: None,
            transport,
            publishers: Arc::new(OnceCell::new()),
            sinks: Default::default(),
        }
    }

    /// The targets' signed clients (`resync_records`).
    pub fn with_sinks(mut self, sinks: crate::ops::records::Sinks) -> Self {
        self.sinks = sinks;
        self
    }

    /// Publishes through the daemon's own publishers.
    pub fn with_publishers(self, p: Arc<Publishers>) -> Self {
        Self {
            publishers: Arc::new(OnceCell::new_with(Some(p))),
            ..self
        }
    }

    pub fn with_health(mut self, h: Arc<Health>) -> Self {
        self.health = Some(h);
        self
    }

    async fn publishers(&self) -> Result<Arc<Publishers>, ToolError> {
        self.publishers
            .get_or_try_init(|| async {
                // Not app::endpoint: app serves admin, which serves this.
                let endpoint =
                    Endpoint::from_emulator_host(self.settings.pubsub.emulator_host.as_deref());
                // One-off emits do not wait to share a batch (the notes'
                // target: emit < 10 ms p99).
                Publishers::with_delay(
                    self.settings.topology(),
                    &endpoint,
                    std::time::Duration::ZERO,
                )
                .await
                .map(Arc::new)
                .map_err(|e| ToolError::Failed(format!("cannot reach Pub/Sub: {e}")))
            })
            .await
            .cloned()
    }
}
