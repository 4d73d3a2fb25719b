//! Stages: handlers that turn one message into an outcome. Stages never touch
//! the Pub/Sub layer: they say what should be published and the consumer
//! runtime does it, so every stage is testable without a broker.

pub mod deliver;
pub mod lane_turn;
pub mod merge;
pub mod park;
pub mod retry;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;

use crate::topology::TopicKind;

/// How a failure is handled (docs/spec.md §4, §10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The message can never be processed: dlq `invalid`.
    Invalid,
    /// Processing it failed for good (id reused, sink 4xx): dlq `permanent`.
    Permanent,
    /// Might succeed later (base_version ahead, sink 5xx): error topic → retry.
    Transient,
    /// Our own infrastructure is unreachable (DB down): nack, nothing recorded.
    Unavailable,
}

/// A stage failure with its class. `Display` is the operator-facing reason.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct StageError {
    pub class: ErrorClass,
    pub message: String,
    /// A lower bound for the next attempt (e.g. a sink's `Retry-After`).
    pub retry_after: Option<Duration>,
}

impl StageError {
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        Self {
            class,
            message: message.into(),
            retry_after: None,
        }
    }
    pub fn invalid(m: impl Into<String>) -> Self {
        Self::new(ErrorClass::Invalid, m)
    }
    pub fn permanent(m: impl Into<String>) -> Self {
        Self::new(ErrorClass::Permanent, m)
    }
    pub fn transient(m: impl Into<String>) -> Self {
        Self::new(ErrorClass::Transient, m)
    }
    pub fn unavailable(m: impl Into<String>) -> Self {
        Self::new(ErrorClass::Unavailable, m)
    }

    /// The `dead_reason` when this error dead-letters a message at once.
    pub fn dead_reason(&self) -> Option<&'static str> {
        match self.class {
            ErrorClass::Invalid => Some("invalid"),
            ErrorClass::Permanent => Some("permanent"),
            ErrorClass::Transient | ErrorClass::Unavailable => None,
        }
    }
}

/// A store failure as every stage reports it. Data the database refuses
/// fails the same way every time: `invalid` (naming the column when the
/// server's message does), never unavailable, never a retry. `what` names
/// the message kind for the reason (`raw event`, `merged event`, …).
pub fn store_failure(e: &crate::store::StoreError, what: &str) -> StageError {
    use crate::store::StoreErrorClass as C;
    match e.class() {
        C::Data => StageError::invalid(match e.column() {
            Some(col) => format!("invalid {what}: the event store refused column `{col}`: {e}"),
            None => format!("invalid {what}: the event store refused the data: {e}"),
        }),
        C::Unavailable | C::Contention => {
            StageError::unavailable(format!("event store unavailable: {e}"))
        }
        // Missing grants are an operator's fix, not the message's fault:
        // hold it (readiness says why) rather than spend its retries.
        C::Permission => StageError::unavailable(format!(
            "event store refused this user (check sql/grants-mysql.sql): {e}"
        )),
        C::Other => StageError::transient(format!("event store error: {e}")),
    }
}

/// A snapshot failure as every stage reports it (docs/spec.md §10): not readable
/// yet → transient, the store down → unavailable, another env's bucket, a
/// place a reference may not point, wrong content or an object over its
/// size limit → permanent.
pub fn snapshot_failure(e: &crate::snapshots::SnapshotError) -> StageError {
    use crate::snapshots::SnapshotError as E;
    let message = e.to_string();
    match e {
        E::Unavailable { .. } => StageError::transient(message),
        E::Unreachable { .. } => StageError::unavailable(message),
        E::Refused { .. } | E::Corrupt { .. } | E::TooLarge { .. } => {
            StageError::permanent(message)
        }
    }
}

/// A message as a stage sees it.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub data: Bytes,
    pub attributes: HashMap<String, String>,
    pub message_id: String,
    pub publish_time: Option<DateTime<Utc>>,
    pub ordering_key: String,
    /// Which execution of the stage this is (1 = first run).
    pub execution: u32,
    /// Passed once the stage's order-sensitive part began (`lane_turn`).
    pub turn: lane_turn::LaneTurn,
}

/// A message a stage wants published after it succeeded.
#[derive(Debug, Clone)]
pub struct Outbound {
    pub topic: TopicKind,
    pub ordering_key: String,
    pub data: Bytes,
    pub attributes: HashMap<String, String>,
    /// The outbox row to forget once the broker confirmed the publish.
    pub outbox_id: Option<String>,
}

/// What a stage decided for a message it processed.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// `merged`, `noop`, `duplicate`, `delivered`, `skipped`, `parked`, …
    pub label: &'static str,
    pub fingerprint: Option<String>,
    pub publish: Vec<Outbound>,
}

impl Outcome {
    pub fn ack(label: &'static str, fingerprint: Option<String>) -> Self {
        Self {
            label,
            fingerprint,
            publish: Vec::new(),
        }
    }
}

/// A failure, with the fingerprint when it could be computed.
#[derive(Debug, Clone)]
pub struct Failure {
    pub error: StageError,
    pub fingerprint: Option<String>,
}

pub type StageResult = Result<Outcome, Failure>;

/// One processing stage. The retry consumer looks stages up by name in the
/// [`Registry`] and re-runs the same handler.
pub trait Stage: Send + Sync + 'static {
    /// The `stage` attribute of error envelopes (`merge`, `deliver.netsuite`, …).
    fn name(&self) -> &'static str;
    fn handle<'a>(&'a self, msg: &'a Incoming) -> BoxFuture<'a, StageResult>;
    /// Whether the consumer should pull new messages for this stage (a
    /// delivery target whose circuit is open takes none; docs/spec.md §4.2).
    fn accepting(&self) -> bool {
        true
    }
}

/// Stages by name.
#[derive(Clone, Default)]
pub struct Registry {
    stages: HashMap<&'static str, Arc<dyn Stage>>,
}

impl Registry {
    pub fn register(&mut self, stage: Arc<dyn Stage>) {
        self.stages.insert(stage.name(), stage);
    }
    pub fn get(&self, name: &str) -> Option<Arc<dyn Stage>> {
        self.stages.get(name).cloned()
    }
    /// The same registry without `name`.
    pub fn without(&self, name: &str) -> Registry {
        let mut stages = self.stages.clone();
        stages.remove(name);
        Registry { stages }
    }
    pub fn names(&self) -> Vec<&'static str> {
        let mut v: Vec<_> = self.stages.keys().copied().collect();
        v.sort_unstable();
        v
    }
}

/// What a consumer should do with a message: run a stage on it (possibly not
/// before some time), or reject it without running anything.
pub enum Route {
    Run {
        stage: Arc<dyn Stage>,
        msg: Incoming,
        /// Hold the message (lease extended, no busy loop) until then.
        not_before: Option<DateTime<Utc>>,
    },
    Reject {
        stage: String,
        msg: Incoming,
        failure: Failure,
    },
}

/// Picks the stage for a message. Most consumers always run one stage; the
/// retry consumer reads the stage and attempt from the error envelope.
pub trait Router: Send + Sync + 'static {
    fn route(&self, msg: Incoming) -> Route;
    /// Whether the consumer should pull new messages now. The retry router
    /// always does: a held target's envelopes wait in its stage without
    /// stopping the other stages' retries (within flow control).
    fn accepting(&self) -> bool {
        true
    }
}

/// A consumer that always runs the same stage.
pub struct Direct(pub Arc<dyn Stage>);

impl Router for Direct {
    fn route(&self, msg: Incoming) -> Route {
        Route::Run {
            stage: self.0.clone(),
            msg,
            not_before: None,
        }
    }
    fn accepting(&self) -> bool {
        self.0.accepting()
    }
}
