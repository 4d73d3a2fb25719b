//! One struct per thing that happens (Vector's `internal_events` pattern):
//! its [`InternalEvent::emit`] writes the log line and updates the metrics
//! that count it, so the two cannot drift apart. Call sites build the event
//! and hand it to [`emit`]; they never touch a counter themselves.
//!
//! Readings that are not events (gauges such as the parked-dead-letter
//! count, the pool's connections, readiness; the step timers) are set
//! through the helpers in [`crate::metrics`].
//!
//! Log lines are written from here, so their `target` is this module's
//! path; level, message and fields are those of the call sites they came
//! from, and the caller's span (message id, subscription…) still applies.

mod consumer;
mod dlq;
mod http;
mod merge;
mod outbox;
mod park;
mod publish;
mod retry;
mod target;

pub use self::consumer::{ConsumerRestarting, MessageProcessed, MessageReceived};
pub use self::dlq::{
    DeadLetterReplayed, DeadLettered, DeadLettersReplayedElsewhere, DeadLettersSuperseded,
};
pub use self::http::HttpConnectionShed;
pub use self::merge::{GapDeadLettered, MergeBatchCommitted, MergeConflictResolved};
pub use self::outbox::OutboxRelayed;
pub use self::park::{DeadLetterHeld, ParkFailed};
pub use self::publish::{PublishFailed, PublishRefused, Published};
pub use self::retry::SentToRetry;
pub use self::target::{
    CircuitClosed, CircuitOpened, RecordTakenOver, TargetProbed, TargetThrottled,
};

/// Something that happened, with what it writes to the log and the metrics.
pub trait InternalEvent {
    fn emit(self);
}

/// Emits `event` (reads like Vector's `emit!(…)`).
pub fn emit(event: impl InternalEvent) {
    event.emit();
}

#[cfg(test)]
pub(crate) mod test_support {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use serde_json::Value;

    /// Collects what a `with_default` subscriber writes.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The JSON log lines `f` writes.
    pub fn logged(f: impl FnOnce()) -> Vec<Value> {
        let buf = Buf::default();
        let w = buf.clone();
        let sub = tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(move || w.clone())
            .finish();
        tracing::subscriber::with_default(sub, f);
        let bytes = buf.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        String::from_utf8(bytes)
            .expect("UTF-8 output")
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is one JSON object"))
            .collect()
    }
}
