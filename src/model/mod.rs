//! Message contracts (SPEC §3): raw events, fingerprints, merged events,
//! error envelopes.

pub mod envelope;
pub mod fingerprint;
#[cfg(test)]
mod fuzz;
pub mod limits;
pub mod merged_event;
pub mod raw_event;
