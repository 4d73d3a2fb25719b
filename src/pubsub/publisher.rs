//! Publishing, refusing any topic outside our own env (SPEC §2), and resuming
//! an ordering key after a failed publish so one failure never stalls a record.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use google_cloud_pubsub::client::{BasePublisher, Publisher};
use google_cloud_pubsub::error::PublishError;
use google_cloud_pubsub::model::Message;

use super::clients::{self, ClientError, Endpoint};
use crate::internal_events::{emit, PublishFailed, PublishRefused, Published};
use crate::topology::{TopicKind, Topology, TopologyError};

#[derive(Debug, thiserror::Error)]
pub enum PublishFailure {
    /// Nothing was sent: the topic belongs to another env or is not ours.
    #[error(transparent)]
    Refused(#[from] TopologyError),
    #[error("publish to {topic} failed: {source}")]
    Broker {
        topic: String,
        #[source]
        source: PublishError,
    },
}

/// One publisher per topic over a shared connection.
pub struct Publishers {
    topology: Topology,
    base: BasePublisher,
    by_topic: Mutex<HashMap<String, Publisher>>,
    /// How long a publish may wait to share a batch.
    delay: Duration,
}

/// The daemon's batching delay: its publishes come in bursts.
const BATCH_DELAY: Duration = Duration::from_millis(5);

impl Publishers {
    pub async fn new(topology: Topology, ep: &Endpoint) -> Result<Self, ClientError> {
        Self::with_delay(topology, ep, BATCH_DELAY).await
    }

    /// Publishers that wait at most `delay` to batch (zero for one-off
    /// publishes, such as an operator's MCP `emit_event`).
    pub async fn with_delay(
        topology: Topology,
        ep: &Endpoint,
        delay: Duration,
    ) -> Result<Self, ClientError> {
        Ok(Self {
            topology,
            base: clients::base_publisher(ep).await?,
            by_topic: Mutex::new(HashMap::new()),
            delay,
        })
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    fn publisher(&self, topic_path: &str) -> Publisher {
        let mut map = self
            .by_topic
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        map.entry(topic_path.to_string())
            .or_insert_with(|| {
                self.base
                    .publisher(topic_path.to_string())
                    .set_delay_threshold(self.delay)
                    .build()
            })
            .clone()
    }

    pub async fn publish_to(
        &self,
        kind: TopicKind,
        data: Bytes,
        attributes: HashMap<String, String>,
        ordering_key: &str,
    ) -> Result<String, PublishFailure> {
        let path = self.topology.topic_path(kind);
        self.publish(&path, data, attributes, ordering_key).await
    }

    /// Publishes to `topic` (an id or a full path) after checking its env.
    /// Transient broker errors are retried a few times in-process.
    pub async fn publish(
        &self,
        topic: &str,
        data: Bytes,
        attributes: HashMap<String, String>,
        ordering_key: &str,
    ) -> Result<String, PublishFailure> {
        let kind = match self.topology.check_publish_target(topic) {
            Ok(k) => k,
            Err(e) => {
                emit(PublishRefused { topic, error: &e });
                return Err(e.into());
            }
        };
        let path = self.topology.topic_path(kind);
        let label = kind_label(kind);
        let publisher = self.publisher(&path);
        let send = || async {
            let mut msg = Message::new()
                .set_data(data.clone())
                .set_attributes(attributes.clone());
            if !ordering_key.is_empty() {
                msg = msg.set_ordering_key(ordering_key.to_string());
            }
            let r = publisher.publish(msg).await;
            if r.is_err() && !ordering_key.is_empty() {
                // The client paused this key; resume it so the next attempt
                // (and every later message of the record) can go out.
                publisher.resume_publish(ordering_key.to_string());
            }
            r
        };
        let result = send
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(100))
                    .with_max_delay(Duration::from_secs(2))
                    .with_max_times(3),
            )
            .when(|e: &PublishError| !matches!(e, PublishError::Shutdown))
            .notify(|e: &PublishError, after: Duration| {
                tracing::warn!(topic = label, error = %e, retry_in = ?after, "Publish failed; retrying.");
            })
            .await;
        match result {
            Ok(id) => {
                emit(Published { topic: label });
                Ok(id)
            }
            Err(source) => {
                emit(PublishFailed { topic: label });
                Err(PublishFailure::Broker {
                    topic: path,
                    source,
                })
            }
        }
    }

    /// Sends whatever is buffered (shutdown).
    pub async fn flush(&self) {
        let pubs: Vec<Publisher> = self
            .by_topic
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .values()
            .cloned()
            .collect();
        for p in pubs {
            p.flush().await;
        }
    }
}

/// The `topic` label: the kind, not the env-specific name.
pub fn kind_label(kind: TopicKind) -> &'static str {
    match kind {
        TopicKind::Raw => "raw",
        TopicKind::Merged => "merged",
        TopicKind::Error => "error",
        TopicKind::Dlq => "dlq",
    }
}
