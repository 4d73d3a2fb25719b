//! The circuit of one target (docs/spec.md §4.2): closed while the target serves
//! requests; open once it fails everything, so deliveries are held instead
//! of spending their attempts; one probe at a time while open.
//!
//! "Fails everything" is `threshold` consecutive failures (5xx, timeouts,
//! resets) with no success in between, over at least two records — one
//! record that always fails is that record's problem, whatever else is
//! going on, and goes through the retry schedule and the DLQ. A refused
//! connection opens the circuit at once: nothing was sent, so it is never
//! about the message; two 503s (the target saying it is unavailable) over
//! two records do too.
//!
//! Credentials and configuration are judged apart (docs/spec.md §4.3): an
//! authentication or misconfiguration answer for two different records in
//! a row, or for credentials nobody had used before (a token just fetched),
//! opens the circuit with that cause. The cause is what the operator sees.
//! Pure: the caller passes the clock (tokio's, so tests can pause it).

use std::time::Duration;

use tokio::time::Instant;

/// The first probe waits this long; each failed one doubles the wait.
const FIRST_PROBE: Duration = Duration::from_secs(1);

/// What kind of failure a request met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The connection was refused: the target is not there.
    Unreachable,
    /// A 503 without `Retry-After`: the target says it is unavailable
    /// (a maintenance window); two over two records open the circuit.
    Unavailable,
    /// A 5xx, a timeout, a reset: maybe the target, maybe the message.
    Failed,
    /// The credentials were refused; `fresh` when nobody had used them before.
    Auth { fresh: bool },
    /// A redirect or a credential that cannot be read: the configuration.
    Config,
}

/// Why the circuit is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// The target fails everything (refused, timeouts, 5xx, 503s).
    Outage,
    /// The target refuses our credentials.
    Auth,
    /// A redirect, or a credential file that cannot be read.
    Config,
    /// An operator paused the target (`targets pause`, docs/spec.md §7.1).
    Paused,
}

impl Cause {
    pub const ALL: [Cause; 4] = [Cause::Outage, Cause::Auth, Cause::Config, Cause::Paused];

    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Outage => "outage",
            Cause::Auth => "auth",
            Cause::Config => "config",
            Cause::Paused => "paused",
        }
    }

    fn of(kind: Failure) -> Self {
        match kind {
            Failure::Auth { .. } => Cause::Auth,
            Failure::Config => Cause::Config,
            _ => Cause::Outage,
        }
    }
}

/// Credential or configuration answers in a row, over two records, that open it.
const REFUSALS_OPEN: u32 = 2;

/// 503s in a failure run (over two records) that open the circuit.
const UNAVAILABLE_OPENS: u32 = 2;

/// What a failure did to the circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Still closed: the failure may be the message's own.
    Counted,
    /// This failure opened the circuit.
    Opened,
    /// The circuit was open already (a probe, or a request sent before).
    Open,
}

#[derive(Debug, Clone)]
struct Open {
    since: Instant,
    next_probe: Instant,
    delay: Duration,
    cause: Cause,
}

#[derive(Debug, Clone)]
pub struct Circuit {
    threshold: u32,
    probe_max: Duration,
    /// Failures since the last success, and whether they span two records.
    failures: u32,
    unavailable: u32,
    first_record: Option<u64>,
    several_records: bool,
    /// Credential/configuration refusals in a row, and their records.
    refusals: u32,
    refused_record: Option<u64>,
    refused_several: bool,
    open: Option<Open>,
}

impl Circuit {
    pub fn new(threshold: u32, probe_max: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            probe_max,
            failures: 0,
            unavailable: 0,
            first_record: None,
            several_records: false,
            refusals: 0,
            refused_record: None,
            refused_several: false,
            open: None,
        }
    }

    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// Why it is open; `None` while closed.
    pub fn cause(&self) -> Option<Cause> {
        self.open.as_ref().map(|o| o.cause)
    }

    /// When the open circuit's next probe may go.
    pub fn next_probe(&self) -> Option<Instant> {
        self.open.as_ref().map(|o| o.next_probe)
    }

    /// How long the circuit has been open.
    pub fn open_for(&self, now: Instant) -> Option<Duration> {
        self.open
            .as_ref()
            .map(|o| now.saturating_duration_since(o.since))
    }

    /// The target answered (2xx, or a 4xx: it is up and judging). Returns
    /// how long the circuit had been open when this closed it.
    pub fn success(&mut self, now: Instant) -> Option<Duration> {
        self.failures = 0;
        self.unavailable = 0;
        self.first_record = None;
        self.several_records = false;
        self.refusals = 0;
        self.refused_record = None;
        self.refused_several = false;
        self.open
            .take()
            .map(|o| now.saturating_duration_since(o.since))
    }

    /// The probe failed with `kind`: the next one waits twice as long, up
    /// to the cap, and the cause becomes what this probe met.
    pub fn probe_failed(&mut self, now: Instant, kind: Failure) {
        if let Some(open) = &mut self.open {
            open.delay = (open.delay * 2).min(self.probe_max);
            open.next_probe = now + open.delay;
            open.cause = Cause::of(kind);
        }
    }

    fn open_now(&mut self, now: Instant, cause: Cause) -> AfterFailure {
        let delay = FIRST_PROBE.min(self.probe_max);
        self.open = Some(Open {
            since: now,
            next_probe: now + delay,
            delay,
            cause,
        });
        AfterFailure::Opened
    }

    /// A request for `record` (any stable hash of it) failed.
    pub fn failure(&mut self, now: Instant, record: u64, kind: Failure) -> AfterFailure {
        if self.open.is_some() {
            // A request sent before the circuit opened.
            return AfterFailure::Open;
        }
        if let Failure::Auth { .. } | Failure::Config = kind {
            return self.refused(now, record, kind);
        }
        self.failures = self.failures.saturating_add(1);
        match self.first_record {
            None => self.first_record = Some(record),
            Some(r) if r != record => self.several_records = true,
            Some(_) => {}
        }
        if kind == Failure::Unavailable {
            self.unavailable = self.unavailable.saturating_add(1);
        }
        let everything = self.several_records
            && (self.failures >= self.threshold || self.unavailable >= UNAVAILABLE_OPENS);
        if kind == Failure::Unreachable || everything {
            self.open_now(now, Cause::Outage)
        } else {
            AfterFailure::Counted
        }
    }

    /// A credential or configuration answer: the message's own while other
    /// records pass, the target's once two records in a row get it or the
    /// credentials were new.
    fn refused(&mut self, now: Instant, record: u64, kind: Failure) -> AfterFailure {
        self.refusals = self.refusals.saturating_add(1);
        match self.refused_record {
            None => self.refused_record = Some(record),
            Some(r) if r != record => self.refused_several = true,
            Some(_) => {}
        }
        let fresh = matches!(kind, Failure::Auth { fresh: true });
        if fresh || (self.refused_several && self.refusals >= REFUSALS_OPEN) {
            self.open_now(now, Cause::of(kind))
        } else {
            AfterFailure::Counted
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn consecutive_failures_over_several_records_open_it() {
        let mut c = Circuit::new(5, 30 * S);
        let t = Instant::now();
        for r in 0..4 {
            assert_eq!(c.failure(t, r, Failure::Failed), AfterFailure::Counted);
        }
        assert_eq!(c.failure(t, 4, Failure::Failed), AfterFailure::Opened);
        assert!(c.is_open());
        assert_eq!(c.next_probe(), Some(t + S));
    }

    #[test]
    fn one_record_that_always_fails_never_opens_it() {
        let mut c = Circuit::new(5, 30 * S);
        let t = Instant::now();
        for _ in 0..50 {
            assert_eq!(c.failure(t, 7, Failure::Failed), AfterFailure::Counted);
        }
        assert!(!c.is_open());
    }

    #[test]
    fn a_success_in_between_resets_the_count() {
        let mut c = Circuit::new(3, 30 * S);
        let t = Instant::now();
        for round in 0..10 {
            c.failure(t, round, Failure::Failed);
            c.failure(t, round + 100, Failure::Failed);
            assert_eq!(c.success(t), None, "was never open");
        }
        assert!(!c.is_open());
    }

    #[test]
    fn two_503s_over_two_records_open_it() {
        let mut c = Circuit::new(5, 30 * S);
        let t = Instant::now();
        assert_eq!(c.failure(t, 1, Failure::Unavailable), AfterFailure::Counted);
        assert_eq!(
            c.failure(t, 1, Failure::Unavailable),
            AfterFailure::Counted,
            "one record"
        );
        assert_eq!(c.failure(t, 2, Failure::Unavailable), AfterFailure::Opened);
    }

    #[test]
    fn a_refused_connection_opens_it_at_once() {
        let mut c = Circuit::new(5, 30 * S);
        let t = Instant::now();
        assert_eq!(c.failure(t, 1, Failure::Unreachable), AfterFailure::Opened);
    }

    #[test]
    fn failed_probes_back_off_up_to_the_cap_and_a_success_closes_it() {
        let mut c = Circuit::new(1, 8 * S);
        let mut t = Instant::now();
        let opened = t;
        c.failure(t, 1, Failure::Unreachable);
        let mut waits = Vec::new();
        for _ in 0..5 {
            t = c.next_probe().unwrap();
            assert_eq!(c.failure(t, 2, Failure::Failed), AfterFailure::Open);
            assert_eq!(
                c.next_probe(),
                Some(t),
                "a straggler does not delay the probe"
            );
            c.probe_failed(t, Failure::Failed);
            waits.push(c.next_probe().unwrap() - t);
        }
        assert_eq!(waits, vec![2 * S, 4 * S, 8 * S, 8 * S, 8 * S]);
        t += S;
        assert_eq!(c.success(t), Some(t - opened));
        assert!(!c.is_open());
        assert_eq!(c.open_for(t), None);
    }

    #[test]
    fn refused_credentials_for_two_records_in_a_row_open_it_with_their_cause() {
        let auth = Failure::Auth { fresh: false };
        let mut c = Circuit::new(5, 30 * S);
        let t = Instant::now();
        assert_eq!(
            c.failure(t, 1, auth),
            AfterFailure::Counted,
            "one record: maybe its own"
        );
        assert_eq!(
            c.failure(t, 1, auth),
            AfterFailure::Counted,
            "still one record"
        );
        assert_eq!(c.failure(t, 2, auth), AfterFailure::Opened);
        assert_eq!(c.cause(), Some(Cause::Auth));
        // A probe meeting a 5xx now: the cause follows what the target says.
        c.probe_failed(t, Failure::Failed);
        assert_eq!(c.cause(), Some(Cause::Outage));
        c.probe_failed(t, Failure::Config);
        assert_eq!(c.cause(), Some(Cause::Config));

        let mut c = Circuit::new(5, 30 * S);
        c.failure(t, 1, auth);
        assert_eq!(c.success(t), None);
        assert_eq!(
            c.failure(t, 2, auth),
            AfterFailure::Counted,
            "a success in between"
        );
        assert_eq!(c.failure(t, 3, Failure::Config), AfterFailure::Opened);
        assert_eq!(c.cause(), Some(Cause::Config));
    }

    #[test]
    fn refused_fresh_credentials_open_it_at_once() {
        let mut c = Circuit::new(5, 30 * S);
        let t = Instant::now();
        assert_eq!(
            c.failure(t, 1, Failure::Auth { fresh: true }),
            AfterFailure::Opened
        );
        assert_eq!(c.cause(), Some(Cause::Auth));
    }

    #[test]
    fn refusals_do_not_count_as_an_outage_nor_the_reverse() {
        let mut c = Circuit::new(3, 30 * S);
        let t = Instant::now();
        c.failure(t, 1, Failure::Failed);
        c.failure(t, 2, Failure::Auth { fresh: false });
        c.failure(t, 3, Failure::Failed);
        assert!(!c.is_open(), "two outage failures, one refusal");
        assert_eq!(c.failure(t, 4, Failure::Failed), AfterFailure::Opened);
        assert_eq!(c.cause(), Some(Cause::Outage));
    }
}
