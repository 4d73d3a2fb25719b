//! The outbox relay.

use super::InternalEvent;
use crate::metrics::metrics;

/// The relay published a merged event left in the outbox (a crash or a
/// failed publish). The relay logs one line per pass, not one per row.
pub struct OutboxRelayed;

impl InternalEvent for OutboxRelayed {
    fn emit(self) {
        metrics().outbox_relayed.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::super::emit;
    use super::*;

    #[test]
    fn relayed_counts_one() {
        let before = metrics().outbox_relayed.get();
        emit(OutboxRelayed);
        assert_eq!(metrics().outbox_relayed.get() - before, 1);
    }
}
