//! Every metric, declared once (docs/spec.md §8). Labels are bounded: subscription,
//! topic, stage, outcome, reason, record_type, rule; never ids or fingerprints.

use std::sync::OnceLock;

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::topology::StageName;

/// Declares every metric once: each entry is a field of [`Metrics`] and the
/// metric behind it (name without the `backbone_` namespace, help, labels,
/// histogram buckets), registered in this order.
macro_rules! metrics_table {
    (@buckets) => { &[] };
    (@buckets $buckets:expr) => { $buckets };
    ($(
        $(#[$doc:meta])*
        $field:ident: $ty:ty = $name:literal, $help:literal
            $(, labels: [$($label:literal),*])?
            $(, buckets: $buckets:expr)?;
    )*) => {
        pub struct Metrics {
            pub registry: Registry,
            $($(#[$doc])* pub $field: $ty,)*
        }

        impl Metrics {
            /// Every metric of the table, registered in `registry`.
            fn declare(registry: Registry) -> Result<Self, prometheus::Error> {
                Ok(Metrics {
                    $($field: register(
                        &registry,
                        <$ty as Declare>::declare(&Spec {
                            name: $name,
                            help: $help,
                            labels: &[$($($label),*)?],
                            buckets: metrics_table!(@buckets $($buckets)?),
                        })?,
                    )?,)*
                    registry,
                })
            }
        }
    };
}

metrics_table! {
    messages_received: IntCounterVec = "messages_received_total",
        "Messages received from a subscription.",
        labels: ["subscription"];
    messages_processed: IntCounterVec = "messages_processed_total",
        "Messages finished, by outcome (merged, pending, noop, duplicate, delivered, superseded, skipped, parked, retried, dead_lettered, nacked).",
        labels: ["subscription", "outcome"];
    processing_duration: HistogramVec = "processing_duration_seconds",
        "Time from receiving a message to acking or nacking it.",
        labels: ["subscription"], buckets: LATENCY_BUCKETS;
    published: IntCounterVec = "published_total", "Messages published.", labels: ["topic"];
    publish_errors: IntCounterVec = "publish_errors_total",
        "Publishes that failed or were refused.",
        labels: ["topic"];
    retry_attempts: IntCounterVec = "retry_attempts_total",
        "Failed executions routed to the retry path.",
        labels: ["stage"];
    dead_letters: IntCounterVec = "dead_letters_total",
        "Messages sent to the dead-letter topic.",
        labels: ["stage", "reason"];
    dead_letters_parked: IntGauge = "dead_letters_parked",
        "Parked dead letters not yet replayed.";
    park_failures: IntCounterVec = "park_failures_total",
        "Dead letters the park stage could not write, by store error class (database outages excluded).",
        labels: ["class"];
    dead_letters_unparked: IntGauge = "dead_letters_unparked",
        "Dead letters that keep failing to park and are held in the dlq subscription.";
    dlq_replayed: IntCounter = "dlq_replayed_total", "Dead letters replayed.";
    merge_conflicts: IntCounterVec = "merge_conflicts_total",
        "Conflicts resolved by the merge stage.",
        labels: ["record_type", "rule"];
    inflight: IntGaugeVec = "inflight_messages",
        "Messages received and not yet acked or nacked.",
        labels: ["subscription"];
    consumer_up: IntGaugeVec = "consumer_up",
        "1 while the consumer has an open stream.",
        labels: ["subscription"];
    consumer_restarts: IntCounterVec = "consumer_restarts_total",
        "Consumer restarts after a failure.",
        labels: ["subscription"];
    /// Streaming pulls this process holds open, per subscription: one per
    /// running consumer, whatever its restarts (a quota on Pub/Sub).
    pubsub_streams_open: IntGaugeVec = "pubsub_streams_open",
        "Streaming pulls this process holds open (one per running consumer).",
        labels: ["subscription"];
    build_info: IntGaugeVec = "build_info", "Build information.", labels: ["version"];
    merge_batch_size: Histogram = "merge_batch_size",
        "Messages per merge transaction.",
        buckets: BATCH_BUCKETS;
    /// Where a stage's time goes, per step (merge: per batch; delivery: per
    /// message): what `bench` reports as the cost of each step.
    stage_step_duration: HistogramVec = "stage_step_duration_seconds",
        "Time spent in each step of a stage (merge: per batch transaction; delivery: per message).",
        labels: ["stage", "step"], buckets: LATENCY_BUCKETS;
    outbox_relayed: IntCounter = "outbox_relayed_total",
        "Merged events published by the outbox relay after a crash or failed publish.";
    db_pool_connections: IntGaugeVec = "db_pool_connections",
        "Database pool connections by state (idle, in_use).",
        labels: ["state"];
    /// Raw events waiting for an earlier version of their record (docs/spec.md §4.1).
    merge_pending: IntGauge = "merge_pending",
        "Raw events stored as pending: their base_version is ahead of their record's version.";
    merge_gaps: IntCounter = "merge_gaps_total",
        "Records whose gap stayed open past merge.gap_timeout (dead-lettered as `gap`).";
    /// Messages held in-process while our own infrastructure does not answer.
    held_messages: IntGaugeVec = "held_messages",
        "Messages held in-process (lease extended) while the database, snapshot store or Pub/Sub does not answer.",
        labels: ["subscription"];
    /// What `/readyz` would answer, refreshed on each probe and each scrape.
    ready: IntGauge = "ready",
        "1 while /readyz answers 200 (database and Pub/Sub answer, nothing held, every consumer streams); evaluated on each probe and scrape.";
    /// Per target (docs/spec.md §4.2): the adaptive concurrency limit, requests in
    /// flight, whether its circuit is open, deliveries held for it.
    target_concurrency_limit: IntGaugeVec = "target_concurrency_limit",
        "The adaptive concurrency limit of a delivery target in this process.",
        labels: ["target"];
    target_inflight: IntGaugeVec = "target_inflight",
        "Requests to a delivery target in flight from this process.",
        labels: ["target"];
    target_circuit_open: IntGaugeVec = "target_circuit_open",
        "1 while a target's circuit is open for this cause (outage: it fails every request; auth: it refuses our credentials; config: it redirects, or a credential cannot be read); its deliveries are held and probed.",
        labels: ["target", "cause"];
    target_held: IntGaugeVec = "target_held",
        "Deliveries held for a target: its circuit is open or a Retry-After pauses it.",
        labels: ["target"];
    target_throttled: IntCounterVec = "target_throttled_total",
        "Answers that asked us to slow down (429, 503 with Retry-After); no attempt consumed.",
        labels: ["target"];
    target_probes: IntCounterVec = "target_probes_total",
        "Probe requests sent to a target whose circuit is open.",
        labels: ["target"];
    target_taken_over: IntCounterVec = "target_taken_over_total",
        "Records an idle replica took over from the store (no live delivery held them: a replica died holding their messages), by what came of it (delivered, nothing to send, left to the broker).",
        labels: ["target", "outcome"];
    /// Per target (docs/spec.md §4.3): the account-wide cap and the slots this
    /// process holds (their sum over replicas never exceeds the cap).
    target_account_slots: IntGaugeVec = "target_account_slots",
        "The account-wide cap on requests in flight to a target across replicas (targets.<t>.account_concurrency).",
        labels: ["target"];
    target_account_slots_held: IntGaugeVec = "target_account_slots_held",
        "Account-wide slots of a target this process holds (one per request in flight).",
        labels: ["target"];
    /// Connections a metrics or admin listener closed or refused at its cap.
    http_connections_shed: IntCounterVec = "http_connections_shed_total",
        "Connections the metrics or admin listener closed at its cap (evicted_idle: the oldest that never sent a request) or refused (every open one in use).",
        labels: ["listener", "action"];
}

/// Sub-millisecond to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Messages per merge transaction.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0];

/// One entry of the table.
struct Spec<'a> {
    name: &'a str,
    help: &'a str,
    labels: &'a [&'a str],
    buckets: &'a [f64],
}

impl Spec<'_> {
    fn opts(&self) -> Opts {
        Opts::new(self.name, self.help).namespace("backbone")
    }

    fn histogram_opts(&self) -> HistogramOpts {
        HistogramOpts::new(self.name, self.help)
            .namespace("backbone")
            .buckets(self.buckets.to_vec())
    }

    /// Labels on a scalar, or buckets on anything but a histogram, are a
    /// slip in the table: refused at startup rather than dropped unread.
    fn refuse(&self, labels: bool, buckets: bool) -> Result<(), prometheus::Error> {
        let slip = if labels && !self.labels.is_empty() {
            "labels"
        } else if buckets && !self.buckets.is_empty() {
            "buckets"
        } else {
            return Ok(());
        };
        Err(prometheus::Error::Msg(format!(
            "metric {} takes no {slip}",
            self.name
        )))
    }
}

/// A metric type the table can declare.
trait Declare: Collector + Clone + 'static {
    fn declare(spec: &Spec) -> Result<Self, prometheus::Error>;
}

impl Declare for IntCounterVec {
    fn declare(spec: &Spec) -> Result<Self, prometheus::Error> {
        spec.refuse(false, true)?;
        IntCounterVec::new(spec.opts(), spec.labels)
    }
}

impl Declare for IntGaugeVec {
    fn declare(spec: &Spec) -> Result<Self, prometheus::Error> {
        spec.refuse(false, true)?;
        IntGaugeVec::new(spec.opts(), spec.labels)
    }
}

impl Declare for IntCounter {
    fn declare(spec: &Spec) -> Result<Self, prometheus::Error> {
        spec.refuse(true, true)?;
        IntCounter::with_opts(spec.opts())
    }
}

impl Declare for IntGauge {
    fn declare(spec: &Spec) -> Result<Self, prometheus::Error> {
        spec.refuse(true, true)?;
        IntGauge::with_opts(spec.opts())
    }
}

impl Declare for HistogramVec {
    fn declare(spec: &Spec) -> Result<Self, prometheus::Error> {
        HistogramVec::new(spec.histogram_opts(), spec.labels)
    }
}

impl Declare for Histogram {
    fn declare(spec: &Spec) -> Result<Self, prometheus::Error> {
        spec.refuse(true, false)?;
        Histogram::with_opts(spec.histogram_opts())
    }
}

/// Registers `metric` and hands it back for its field.
fn register<M: Declare>(registry: &Registry, metric: M) -> Result<M, prometheus::Error> {
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

impl Metrics {
    fn new() -> Result<Self, prometheus::Error> {
        let m = Metrics::declare(Registry::new())?;
        // process_cpu_seconds_total, process_resident_memory_bytes, open fds…:
        // the dashboard's CPU and memory panels, without a node exporter.
        #[cfg(target_os = "linux")]
        m.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        Ok(m)
    }

    /// Creates every bounded label combination at zero, so each series is
    /// scraped (and `rate()` or absence alerts work) before its first event.
    pub fn prime(&self, subscriptions: &[String]) {
        for s in subscriptions {
            let s = [s.as_str()];
            self.messages_received.with_label_values(&s);
            self.inflight.with_label_values(&s);
            self.consumer_restarts.with_label_values(&s);
            self.processing_duration.with_label_values(&s);
            self.held_messages.with_label_values(&s);
        }
        for topic in ["raw", "merged", "error", "dlq"] {
            self.published.with_label_values(&[topic]);
            self.publish_errors.with_label_values(&[topic]);
        }
        self.publish_errors.with_label_values(&["refused"]);
        for stage in STAGES.map(StageName::as_str) {
            self.retry_attempts.with_label_values(&[stage]);
            for reason in ["invalid", "permanent", "exhausted", "gap", "unpublishable"] {
                self.dead_letters.with_label_values(&[stage, reason]);
            }
        }
        for class in ["contention", "data", "permission", "other"] {
            self.park_failures.with_label_values(&[class]);
        }
        for state in ["idle", "in_use"] {
            self.db_pool_connections.with_label_values(&[state]);
        }
        for listener in ["metrics", "admin"] {
            for action in ["evicted_idle", "refused"] {
                self.http_connections_shed
                    .with_label_values(&[listener, action]);
            }
        }
        for target in ["netsuite", "suitex"] {
            self.target_throttled.with_label_values(&[target]);
            self.target_probes.with_label_values(&[target]);
        }
    }

    /// Text exposition format for `/metrics`.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Stages that run handlers (the `stage` label's values besides `retry`,
/// whose router rejects bad envelopes, and `other`).
const STAGES: [StageName; 4] = [
    StageName::Merge,
    StageName::DeliverNetsuite,
    StageName::DeliverSuitex,
    StageName::Park,
];

/// The `stage` label for a stage name. Names can come from a message's
/// attributes (the retry envelope), so anything unknown is folded into
/// `other` to keep the label bounded.
pub fn stage_label(stage: &str) -> &'static str {
    stage
        .parse::<StageName>()
        .map(StageName::as_str)
        .unwrap_or("other")
}

/// Distinct `record_type` label values a process reports; the values come
/// from publishers (docs/spec.md §3.1 allows any `^[a-z][a-z0-9_]{0,63}$`), so each
/// one past these is counted as `other` and the series stay bounded.
pub const RECORD_TYPE_LABELS_MAX: usize = 64;

/// The label value for publisher-chosen `value`s: the first `max` distinct
/// ones as themselves, later ones as `other`.
pub struct BoundedLabel {
    max: usize,
    seen: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl BoundedLabel {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            seen: std::sync::Mutex::new(std::collections::HashSet::new()),
        }
    }

    pub fn label(&self, value: &str) -> String {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(value) {
            return value.to_string();
        }
        if value != "other" && seen.len() < self.max {
            seen.insert(value.to_string());
            return value.to_string();
        }
        "other".to_string()
    }
}

/// The `record_type` label for `record_type` ([`RECORD_TYPE_LABELS_MAX`]).
pub fn record_type_label(record_type: &str) -> String {
    static SEEN: OnceLock<BoundedLabel> = OnceLock::new();
    SEEN.get_or_init(|| BoundedLabel::new(RECORD_TYPE_LABELS_MAX))
        .label(record_type)
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    // Registration only fails on duplicate names, which the declarations above rule out.
    M.get_or_init(|| Metrics::new().expect("metric declarations are valid"))
}

// Readings rather than events: gauges set to what is true now. Counted
// events go through `crate::internal_events`.

/// Parked dead letters not yet replayed (recounted from the database).
pub fn set_dead_letters_parked(n: i64) {
    metrics().dead_letters_parked.set(n);
}

/// Dead letters this process keeps failing to park.
pub fn set_dead_letters_unparked(n: usize) {
    metrics().dead_letters_unparked.set(n as i64);
}

/// Raw events stored as pending (recounted from the database).
pub fn set_merge_pending(n: i64) {
    metrics().merge_pending.set(n);
}

/// The database pool's connections by state.
pub fn set_db_pool_connections(idle: i64, in_use: i64) {
    let g = &metrics().db_pool_connections;
    g.with_label_values(&["idle"]).set(idle);
    g.with_label_values(&["in_use"]).set(in_use);
}

/// What `/readyz` would answer now.
pub fn set_ready(ready: bool) {
    metrics().ready.set(i64::from(ready));
}

/// Whether consumer `subscription` has a working stream.
pub fn set_consumer_up(subscription: &str, up: bool) {
    metrics()
        .consumer_up
        .with_label_values(&[subscription])
        .set(i64::from(up));
}

/// Counts one streaming pull of `subscription` in
/// `backbone_pubsub_streams_open` for as long as it lives, so a path that
/// forgets to close one shows as a count that only grows.
pub struct OpenStream {
    subscription: String,
}

impl OpenStream {
    pub fn new(subscription: &str) -> Self {
        metrics()
            .pubsub_streams_open
            .with_label_values(&[subscription])
            .inc();
        Self {
            subscription: subscription.to_string(),
        }
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        metrics()
            .pubsub_streams_open
            .with_label_values(&[&self.subscription])
            .dec();
    }
}

/// Messages consumer `subscription` holds for an outage.
pub fn set_held_messages(subscription: &str, n: usize) {
    metrics()
        .held_messages
        .with_label_values(&[subscription])
        .set(n as i64);
}

/// A message of `subscription` started processing (in flight until
/// [`inflight_ended`]).
/// Why a target's circuit can be open (docs/spec.md §4.2, §4.3): the `cause` label.
pub const CIRCUIT_CAUSES: &[&str] = &["outage", "auth", "config", "paused"];

/// A target's pacing state (docs/spec.md §4.2); `cause` is why its circuit is open.
pub fn set_target_state(
    target: &str,
    limit: usize,
    inflight: usize,
    cause: Option<&str>,
    held: usize,
) {
    let m = metrics();
    let as_i64 = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    m.target_concurrency_limit
        .with_label_values(&[target])
        .set(as_i64(limit));
    m.target_inflight
        .with_label_values(&[target])
        .set(as_i64(inflight));
    for c in CIRCUIT_CAUSES {
        m.target_circuit_open
            .with_label_values(&[target, c])
            .set(i64::from(cause == Some(*c)));
    }
    m.target_held.with_label_values(&[target]).set(as_i64(held));
}

/// A target's account-wide cap and the slots this process holds (docs/spec.md §4.3).
pub fn set_target_slots(target: &str, cap: usize, held: usize) {
    let m = metrics();
    let as_i64 = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    m.target_account_slots
        .with_label_values(&[target])
        .set(as_i64(cap));
    m.target_account_slots_held
        .with_label_values(&[target])
        .set(as_i64(held));
}

pub fn inflight_started(subscription: &str) {
    metrics().inflight.with_label_values(&[subscription]).inc();
}

/// A message of `subscription` was acked or nacked.
pub fn inflight_ended(subscription: &str) {
    metrics().inflight.with_label_values(&[subscription]).dec();
}

/// Primes every bounded series (see [`Metrics::prime`]).
pub fn prime(subscriptions: &[String]) {
    metrics().prime(subscriptions);
}

/// The `/metrics` text.
pub fn render() -> String {
    metrics().render()
}

// Reads, for `bench` and tests that compare figures before and after.

/// Messages published to topic kind `topic` by this process.
pub fn published_count(topic: &str) -> u64 {
    metrics().published.with_label_values(&[topic]).get()
}

/// What `backbone_consumer_up` reads for `subscription`.
pub fn consumer_up(subscription: &str) -> i64 {
    metrics()
        .consumer_up
        .with_label_values(&[subscription])
        .get()
}

/// (sample count, sample sum) of the merge batch-size histogram, then of
/// each of the merge `steps`.
pub fn merge_figures(steps: &[&str]) -> Vec<(u64, f64)> {
    let m = metrics();
    let mut v = vec![(
        m.merge_batch_size.get_sample_count(),
        m.merge_batch_size.get_sample_sum(),
    )];
    for step in steps {
        let h = m.stage_step_duration.with_label_values(&["merge", step]);
        v.push((h.get_sample_count(), h.get_sample_sum()));
    }
    v
}

/// (sample count, sample sum) of `backbone_processing_duration_seconds` for
/// `subscription`: receipt to ack or nack.
pub fn processing_figures(subscription: &str) -> (u64, f64) {
    let h = metrics()
        .processing_duration
        .with_label_values(&[subscription]);
    (h.get_sample_count(), h.get_sample_sum())
}

/// Times the steps of one unit of a stage's work, for
/// `backbone_stage_step_duration_seconds`; observed only if the unit
/// completes, so a failed batch does not skew the figures.
pub struct StepTimer {
    stage: &'static str,
    last: std::time::Instant,
    steps: Vec<(&'static str, std::time::Duration)>,
}

impl StepTimer {
    pub fn start(stage: &'static str) -> Self {
        Self {
            stage,
            last: std::time::Instant::now(),
            steps: Vec::with_capacity(12),
        }
    }

    /// Ends the step `name` (the time since the previous mark); a step
    /// marked again (a delivery's second attempt) adds to its time, so each
    /// step is observed once per unit.
    pub fn mark(&mut self, name: &'static str) {
        let now = std::time::Instant::now();
        let d = now - self.last;
        self.last = now;
        match self.steps.iter_mut().find(|(n, _)| *n == name) {
            Some((_, total)) => *total += d,
            None => self.steps.push((name, d)),
        }
    }

    pub fn observe(self) {
        let h = &metrics().stage_step_duration;
        for (name, d) in self.steps {
            h.with_label_values(&[self.stage, name])
                .observe(d.as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_declares_and_registers_every_metric() {
        let m = Metrics::new().expect("the table is valid");
        assert_eq!(
            m.build_info
                .with_label_values(&[env!("CARGO_PKG_VERSION")])
                .get(),
            1
        );
        let spec = |labels, buckets| Spec {
            name: "x_total",
            help: "x",
            labels,
            buckets,
        };
        assert!(IntCounter::declare(&spec(&["a"], &[])).is_err());
        assert!(IntCounterVec::declare(&spec(&["a"], &[1.0])).is_err());
        assert!(Histogram::declare(&spec(&[], &[1.0])).is_ok());
    }

    #[test]
    fn label_values_past_the_bound_are_other() {
        let l = BoundedLabel::new(3);
        assert_eq!(l.label("a"), "a");
        assert_eq!(l.label("b"), "b");
        assert_eq!(l.label("other"), "other");
        assert_eq!(l.label("c"), "c");
        assert_eq!(l.label("d"), "other");
        assert_eq!(l.label("a"), "a", "admitted values stay themselves");
    }
}
