//! The domain: message contracts (docs/spec.md §3: raw events, fingerprints, merged
//! events, error envelopes) and the merge rules (docs/spec.md §5). Imports nothing
//! else from the crate.

pub mod envelope;
pub mod fingerprint;
#[cfg(test)]
pub(crate) mod fuzz;
pub mod limits;
pub mod merged_event;
pub mod message_limits;
pub mod raw_event;
pub mod rules;
