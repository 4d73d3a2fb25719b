//! The Pub/Sub adapter: clients, publishers (env-checked), provisioning and
//! the trace context of message attributes. Stages never import this module;
//! it imports neither stages nor the runtime.

pub mod clients;
pub mod provision;
pub mod publisher;
pub mod trace_context;
