//! The metrics and admin listeners.

use super::InternalEvent;
use crate::metrics::metrics;

/// A listener at its connection cap made room: it closed the oldest
/// connection that never sent a request (`evicted_idle`), or, every open
/// connection being in use, refused the newcomer (`refused`).
pub struct HttpConnectionShed {
    /// `metrics` or `admin`.
    pub listener: &'static str,
    pub action: &'static str,
    /// The cap it is at.
    pub open: usize,
}

impl InternalEvent for HttpConnectionShed {
    fn emit(self) {
        metrics()
            .http_connections_shed
            .with_label_values(&[self.listener, self.action])
            .inc();
        // One line per connection would let a flood of them flood the log.
        tracing::debug!(
            listener = self.listener,
            action = self.action,
            open = self.open,
            "HTTP listener at its connection cap."
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::emit;
    use super::*;

    #[test]
    fn shed_connections_count_per_listener_and_action() {
        let c = || {
            metrics()
                .http_connections_shed
                .with_label_values(&["admin", "refused"])
                .get()
        };
        let before = c();
        emit(HttpConnectionShed {
            listener: "admin",
            action: "refused",
            open: 64,
        });
        assert_eq!(c() - before, 1);
    }
}
