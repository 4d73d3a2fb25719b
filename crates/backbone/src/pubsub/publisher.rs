//! Publishing, refusing any topic outside our own env (docs/spec.md §2), and resuming
//! an ordering key after a failed publish so one failure never stalls a record.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use google_cloud_pubsub::client::{BasePublisher, Publisher};
use google_cloud_pubsub::error::PublishError;
use google_cloud_pubsub::model::Message;
use google_cloud_pubsub::publisher::PublishFuture;

use super::clients::{self, ClientError, Endpoint};
use crate::internal_events::{emit, PublishFailed, PublishRefused, Published};
use crate::model::message_limits;
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
    /// Pub/Sub does not take this message (over its limits, checked here
    /// before anything is sent, or refused by the broker as
    /// `INVALID_ARGUMENT` when sent on its own). Permanent for the message:
    /// sending it again changes nothing, so it must never be held.
    #[error("Pub/Sub refuses this message for {topic}: {reason}")]
    Unpublishable { topic: String, reason: String },
}

impl PublishFailure {
    pub fn is_unpublishable(&self) -> bool {
        matches!(self, PublishFailure::Unpublishable { .. })
    }
}

/// Whether the broker refused the request as invalid (`INVALID_ARGUMENT`).
fn is_invalid_argument(e: &PublishError) -> bool {
    match e {
        PublishError::Rpc(inner) => inner
            .status()
            .is_some_and(|s| s.code == google_cloud_gax::error::rpc::Code::InvalidArgument),
        _ => false,
    }
}

/// One publisher per topic over a shared connection.
pub struct Publishers {
    topology: Topology,
    base: BasePublisher,
    by_topic: Mutex<HashMap<String, Publisher>>,
    /// One-message batches, to learn whether a message the broker refused
    /// as invalid was itself at fault or only shared a batch with one that was.
    solo_by_topic: Mutex<HashMap<String, Publisher>>,
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
            solo_by_topic: Mutex::new(HashMap::new()),
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

    fn solo_publisher(&self, topic_path: &str) -> Publisher {
        let mut map = self
            .solo_by_topic
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        map.entry(topic_path.to_string())
            .or_insert_with(|| {
                self.base
                    .publisher(topic_path.to_string())
                    .set_message_count_threshold(1_u32)
                    .set_delay_threshold(Duration::ZERO)
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
        // The emulator takes what production refuses: check here, so a
        // message over Pub/Sub's limits never reaches a batch (one invalid
        // message fails its whole batch) and fails the same way everywhere.
        if let Err(over) = message_limits::check(data.len(), &attributes, ordering_key) {
            emit(PublishFailed { topic: label });
            return Err(PublishFailure::Unpublishable {
                topic: path,
                reason: over.to_string(),
            });
        }
        let publisher = self.publisher(&path);
        let send = || async {
            let r = publisher
                .publish(message(data.clone(), attributes.clone(), ordering_key))
                .await;
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
            .when(|e: &PublishError| {
                !matches!(e, PublishError::Shutdown) && !is_invalid_argument(e)
            })
            .notify(|e: &PublishError, after: Duration| {
                tracing::warn!(topic = label, error = %e, retry_in = ?after, "Publish failed; retrying.");
            })
            .await;
        let result = match result {
            Err(e) if is_invalid_argument(&e) => {
                // Its batch was refused: alone, the message says whether
                // it was the one at fault.
                let solo = self.solo_publisher(&path);
                let r = solo.publish(message(data, attributes, ordering_key)).await;
                if r.is_err() && !ordering_key.is_empty() {
                    solo.resume_publish(ordering_key.to_string());
                }
                match r {
                    Err(e) if is_invalid_argument(&e) => {
                        emit(PublishFailed { topic: label });
                        return Err(PublishFailure::Unpublishable {
                            topic: path,
                            reason: format!("the broker refused it as invalid: {e}"),
                        });
                    }
                    other => other,
                }
            }
            other => other,
        };
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

    /// Starts one publish and returns without waiting for the broker: one
    /// attempt, no retry, no resume. A lane sends the outputs of several of
    /// a key's messages this way so they share one request; the client keeps
    /// a key's publishes in order and, after a failure, fails every later
    /// one of that key (`OrderingKeyPaused`) until [`Publishers::resume`],
    /// so nothing can overtake a failed publish. `None` when it was not sent:
    /// the caller takes the one-at-a-time path ([`Publishers::publish`]),
    /// which says why.
    pub fn start(
        &self,
        kind: TopicKind,
        data: Bytes,
        attributes: HashMap<String, String>,
        ordering_key: &str,
    ) -> Option<PublishFuture> {
        let path = self.topology.topic_path(kind);
        self.topology.check_publish_target(&path).ok()?;
        message_limits::check(data.len(), &attributes, ordering_key).ok()?;
        Some(
            self.publisher(&path)
                .publish(message(data, attributes, ordering_key)),
        )
    }

    /// Lets a key publish again after a failure of [`Publishers::start`]
    /// paused it (a no-op when it is not paused).
    pub fn resume(&self, kind: TopicKind, ordering_key: &str) {
        if !ordering_key.is_empty() {
            let path = self.topology.topic_path(kind);
            self.publisher(&path)
                .resume_publish(ordering_key.to_string());
        }
    }

    /// Sends whatever is buffered (shutdown).
    pub async fn flush(&self) {
        let mut pubs: Vec<Publisher> = Vec::new();
        for map in [&self.by_topic, &self.solo_by_topic] {
            pubs.extend(
                map.lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .values()
                    .cloned(),
            );
        }
        for p in pubs {
            p.flush().await;
        }
    }
}

/// A message for the client; an empty key means unordered.
fn message(data: Bytes, attributes: HashMap<String, String>, ordering_key: &str) -> Message {
    let msg = Message::new().set_data(data).set_attributes(attributes);
    if ordering_key.is_empty() {
        msg
    } else {
        msg.set_ordering_key(ordering_key.to_string())
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
