//! The consumer runtime, written once for every stage: pull over streaming
//! pull, run the stage, then act on its outcome — publish what it produced,
//! route failures to the error or dlq topic, ack. Nack only when our own
//! infrastructure is unreachable or we are shutting down (docs/spec.md §2 trap b).
//!
//! `stream` pulls and drains, `lanes` keeps each ordering key in order,
//! `message` takes one message through its stage, `executor` acts on the
//! stage's result, and `hold` keeps a message through an outage. Each file
//! imports only from those after it in this list; what they all share
//! lives here.

mod executor;
mod hold;
mod lanes;
mod message;
mod stream;

pub use self::stream::LEASE_EXTENSION;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use google_cloud_pubsub::model::Message;
use google_cloud_pubsub::subscriber::handler::Handler;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub use self::hold::Holds;
pub use self::stream::run;
use super::health::Health;
use super::outbox_relay::OutboxCompleter;
use crate::pubsub::publisher::Publishers;
use crate::stages::park::ParkStage;
use crate::stages::{Incoming, Router};

/// What the runtime needs besides the stage.
pub struct Runtime {
    pub publishers: Arc<Publishers>,
    pub outbox: OutboxCompleter,
    /// Executions of a stage before a message is dead-lettered as `exhausted`.
    pub max_attempts: u32,
    /// Where held messages show up for `/readyz`.
    pub health: Arc<Health>,
    /// Parks what Pub/Sub will not take (`unpublishable`) straight into
    /// `dead_letters`.
    pub park: Arc<ParkStage>,
}

/// What to tell the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Ack,
    Nack,
}

/// One consumer: a subscription and what handles its messages.
pub struct ConsumerSpec {
    /// Full subscription path.
    pub subscription: String,
    /// Short name for labels and logs (the subscription id).
    pub label: String,
    pub router: Arc<dyn Router>,
    pub max_outstanding: i64,
    /// How many ordering keys are processed at once; each key's messages
    /// run one after the other, in order. 0 = treat every message as
    /// unordered (held retries must not block each other).
    pub lanes: usize,
    /// How many of a key's later messages may run their stage while its
    /// earliest one is settled (`lanes::key_worker`); 1 = one step ahead.
    pub ahead: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("streaming pull on {subscription} failed: {message}")]
    Stream {
        subscription: String,
        message: String,
        /// The subscription does not exist (a configuration problem).
        not_found: bool,
    },
    #[error("streaming pull on {0} ended")]
    Ended(String),
    #[error("a worker lane of {0} stopped unexpectedly")]
    LaneDied(String),
}

impl From<&Message> for Incoming {
    fn from(m: &Message) -> Self {
        Incoming {
            data: m.data.clone(),
            attributes: m.attributes.clone(),
            message_id: m.message_id.clone(),
            publish_time: m.publish_time.as_ref().and_then(|t| {
                DateTime::<Utc>::from_timestamp(t.seconds(), t.nanos().max(0) as u32)
            }),
            ordering_key: m.ordering_key.clone(),
            execution: 1,
            turn: Default::default(),
        }
    }
}

/// What the workers of one consumer share.
struct Ctx {
    rt: Arc<Runtime>,
    router: Arc<dyn Router>,
    label: String,
    stop: CancellationToken,
    /// Messages held for an outage or a retry's backoff; its token is
    /// cancelled at shutdown, so held messages are nacked, not waited for.
    holds: Holds,
    /// Messages waiting behind the one in progress, per ordering key; a key
    /// is present while its worker runs.
    queues: Mutex<HashMap<String, VecDeque<(Message, Handler)>>>,
    /// How many messages wait in `queues`: nothing new is pulled while it
    /// is at `max_outstanding`, so memory does not follow a backlog (the
    /// emulator does not hold its side of the flow control).
    queued: std::sync::atomic::AtomicUsize,
    /// Bounds how many ordering keys are processed at once (`lanes`).
    permits: Arc<Semaphore>,
    /// `ConsumerSpec::ahead`.
    ahead: usize,
}
