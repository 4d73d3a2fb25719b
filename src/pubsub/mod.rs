//! The Pub/Sub layer: clients, publishers (env-checked), the consumer runtime
//! and provisioning. Stages never import this module.

pub mod clients;
pub mod consumer;
pub mod provision;
pub mod publisher;
pub mod trace_context;
