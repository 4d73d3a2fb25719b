//! `delivery_state`: per target and record, the last merged event the target
//! acknowledged (2xx) and the last one a request was started for, by
//! position (the producing event's `sequence_num`: ordered like versions,
//! and unique where a conflict-only merged event repeats a version). The
//! delivery stage reads it to never send a target back in time.

/// Where a target stands for one record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryState {
    /// Position of the last acknowledged merged event.
    pub acked: i64,
    /// Its version.
    pub acked_version: i64,
    /// Position of the last merged event a request was started for.
    pub attempted: i64,
}
