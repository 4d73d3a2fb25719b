//! event-backbone's library: the sync engine between SuiteX and NetSuite.
//!
//! Data flows one way: the consumer runtime (`runtime`) pulls a message
//! through the broker adapter (`pubsub`), a stage (`stages`) decides what
//! should happen, and the runtime acts on that outcome (ack, publish, route
//! to error/dlq). The binaries (`event-backbone`, `backbone-bench`) build on
//! `app` and the operator services; docs/architecture.md shows the layers.

pub mod admin;
mod admin_ops;
pub mod app;
pub mod config;
mod console;
pub mod dlq;
pub mod explain;
pub mod history;
mod http;
mod internal_events;
pub mod mcp;
pub mod metrics;
pub mod model;
pub mod ops;
pub mod pubsub;
pub mod runtime;
pub mod snapshots;
pub mod stages;
pub mod store;
pub mod telemetry;
pub mod topology;
