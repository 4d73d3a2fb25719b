//! The runtime: what runs stages against the broker — the consumers, the
//! supervisor that restarts them, the health state readiness reads, and the
//! outbox relay.

pub mod consumer;
pub mod health;
pub mod outbox_relay;
pub mod supervisor;
