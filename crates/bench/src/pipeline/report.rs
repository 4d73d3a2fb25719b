//! What `bench pipeline` prints.

use std::collections::BTreeMap;

use serde::Serialize;

use super::stand_in::Arrival;
use super::usage::MachineCpu;

#[derive(Debug, Serialize)]
pub(super) struct Latency {
    pub(super) p50: f64,
    pub(super) p99: f64,
}

#[derive(Debug, Default, Serialize)]
pub(super) struct TargetReport {
    /// Merged events routed to this target (a burst of a record's goes as
    /// one request: their fields must arrive, P2, not one request each).
    pub(super) expected: usize,
    /// Records with at least one routed merged event: each needs a request.
    pub(super) routed_records: usize,
    /// Requests that arrived.
    pub(super) requests: usize,
    pub(super) missing: usize,
    pub(super) doubled: usize,
    /// A version that first arrived before a replica was SIGKILLed and again
    /// after it: the crash window of at-least-once delivery, reported, not
    /// failed (see `checks::check_target`).
    pub(super) resent_after_kill: usize,
    /// A (record, version) not routed to this target, or under another event id.
    pub(super) unexpected: usize,
    /// A version that arrived after a later or equal one of its record.
    pub(super) out_of_order: usize,
    /// A body without record_type, record_id, version and event_id.
    pub(super) unreadable: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) latency_ms_raw_publish_to_delivered: Option<Latency>,
    /// Requests the stand-in refused with 429 (over its concurrency cap).
    pub(super) refused: usize,
    /// Requests served per second, first to last arrival.
    pub(super) served_per_s: Option<f64>,
    /// What the stand-in allows (concurrency / latency), when limited.
    pub(super) allows_per_s: Option<f64>,
    /// served_per_s / allows_per_s.
    pub(super) share_of_allowed: Option<f64>,
    /// Requests served in each second from the first arrival: where a
    /// drain loses time (the ramp, the steady state, the tail) shows here.
    pub(super) served_each_second: Vec<usize>,
    /// refused / (requests + refused).
    pub(super) refused_share: f64,
    /// The shortest drain the target allows: one request per routed record
    /// at what it serves, and no sooner than the stream ended.
    pub(super) allowed_seconds: Option<f64>,
    /// drain_seconds / allowed_seconds (goal <= 1.2; 1.5 with a replica killed).
    pub(super) drain_vs_allowed: Option<f64>,
}

impl TargetReport {
    /// Fills in how fast the target was served against what it allows.
    pub(super) fn pace(&mut self, arrivals: &[Arrival], refused: usize, allows_per_s: Option<f64>) {
        self.refused = refused;
        self.allows_per_s = allows_per_s;
        let first = arrivals.iter().map(|a| a.at).min();
        let last = arrivals.iter().map(|a| a.at).max();
        if let (Some(f), Some(l)) = (first, last) {
            let secs = l.duration_since(f).as_secs_f64();
            if secs > 0.0 {
                self.served_per_s = Some((arrivals.len() - 1) as f64 / secs);
            }
            self.served_each_second = vec![0; secs as usize + 1];
            for a in arrivals {
                let i = a.at.duration_since(f).as_secs() as usize;
                if let Some(n) = self.served_each_second.get_mut(i) {
                    *n += 1;
                }
            }
        }
        self.share_of_allowed = self.served_per_s.zip(allows_per_s).map(|(s, a)| s / a);
    }

    /// The drain against the shortest one the target allows.
    pub(super) fn against_allowed(&mut self, drain_seconds: f64, stream_seconds: Option<f64>) {
        let sent = self.requests + self.refused;
        self.refused_share = if sent > 0 {
            self.refused as f64 / sent as f64
        } else {
            0.0
        };
        self.allowed_seconds = self
            .allows_per_s
            .map(|a| (self.routed_records as f64 / a).max(stream_seconds.unwrap_or(0.0)));
        self.drain_vs_allowed = self
            .allowed_seconds
            .filter(|a| *a > 0.0)
            .map(|a| drain_seconds / a);
    }

    pub(super) fn failures(&self) -> usize {
        self.missing + self.doubled + self.unexpected + self.out_of_order + self.unreadable
    }
}

#[derive(Debug, Serialize)]
pub(super) struct Baseline {
    /// What it drained: the raw backlog on the merge subscription plus the
    /// merged events on each of the two delivery subscriptions.
    pub(super) raw_messages: usize,
    pub(super) merged_messages_per_delivery_subscription: usize,
    pub(super) messages: usize,
    pub(super) seconds: f64,
    pub(super) messages_per_s: f64,
    /// CPU this process spent draining them (one client, three subscriptions).
    pub(super) cpu_seconds: Option<f64>,
    /// Where the machine's CPU went meanwhile.
    pub(super) machine_cpu: MachineCpu,
    /// Publishing the merged events before the drain (one client, ordering
    /// keys): not in the drain's time, in the pipeline's.
    pub(super) merged_publish_seconds: f64,
    pub(super) merged_publish_cpu: MachineCpu,
}

/// The daemon's CPU per 1,000 raw messages against the client floor: the
/// ack-only drain's CPU per 1,000 messages × 3 (each raw event is consumed
/// on three subscriptions in the pipeline: raw, and merged twice).
#[derive(Debug, Serialize)]
pub(super) struct Cpu {
    pub(super) daemon_seconds: f64,
    pub(super) daemon_per_1000_events: f64,
    pub(super) client_floor_per_1000_events: Option<f64>,
    pub(super) ratio: Option<f64>,
}

impl Cpu {
    pub(super) fn new(daemon_seconds: f64, raw_messages: usize, b: Option<&Baseline>) -> Self {
        let per = |secs: f64, n: usize| secs / (n.max(1) as f64 / 1000.0);
        let daemon_per_1000_events = per(daemon_seconds, raw_messages);
        let floor = b.and_then(|b| b.cpu_seconds.map(|c| per(c, b.messages) * 3.0));
        Self {
            daemon_seconds,
            daemon_per_1000_events,
            client_floor_per_1000_events: floor,
            ratio: floor.map(|f| daemon_per_1000_events / f),
        }
    }
}

#[derive(Debug, Serialize)]
pub(super) struct StepMean {
    pub(super) step: String,
    pub(super) mean_ms: f64,
    pub(super) count: f64,
}

/// The floors with a replica killed `killed` s after the start, against
/// the `allowed` s the targets allow. What the killed replica had under
/// way at a target waits for its delivery lease (`delivery_lease` s) to
/// run out before a survivor takes it over from the store, so no drain
/// ends sooner (if it had any). Raw messages it held and had not
/// committed are the broker's to hand out again only once their Pub/Sub
/// lease runs out (if it held any).
fn floor_line(killed: f64, delivery_lease: f64, allowed: f64, drain: f64) -> String {
    // The lease the daemon asks for: Pub/Sub's shortest.
    let broker = backbone::runtime::consumer::LEASE_EXTENSION.as_secs_f64();
    let floor = killed + delivery_lease;
    let end = match drain - floor {
        after if after >= 0.0 => format!("{after:.1} s after it"),
        before => format!("{:.1} s before it", -before),
    };
    format!(
        "  the floor: what the killed replica had under way is taken over when its delivery lease runs out, {delivery_lease:.0} s after the kill: {floor:.1} s = {:.2}x of the {allowed:.2} s the targets allow, before any of it is done; the drain ended {end} (raw messages it held come back from the broker {broker:.0} s after the kill: {:.2}x)",
        floor / allowed,
        (killed + broker) / allowed
    )
}

#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) database: String,
    /// Daemons sharing the work (`--replicas`).
    pub(crate) replicas: u16,
    /// `--kill-one-after`: when one of them was SIGKILLed.
    pub(crate) killed_replica_after_seconds: Option<f64>,
    /// `targets.<t>.lease_ttl`: how long a killed replica's deliveries
    /// under way wait before a survivor takes them over.
    pub(crate) delivery_lease_seconds: f64,
    pub(crate) records: usize,
    /// Unique raw events; `raw_messages` adds the duplicates.
    pub(crate) events: usize,
    pub(crate) duplicates: usize,
    pub(crate) raw_messages: usize,
    pub(crate) merged_events: usize,
    pub(crate) backlog_publish_seconds: f64,
    /// Streamed (`--stream-records-per-s`): the stream's length.
    pub(crate) stream_seconds: Option<f64>,
    pub(crate) daemon_ready_seconds: Option<f64>,
    /// Daemon start → the last expected delivery arrived at either target.
    pub(crate) drain_seconds: f64,
    /// raw_messages / drain_seconds.
    pub(crate) drain_events_per_s: f64,
    /// (raw_messages + 2 × merged_events) / drain_seconds: the same messages
    /// the baseline drains.
    pub(crate) pipeline_messages_per_s: f64,
    pub(super) targets: BTreeMap<&'static str, TargetReport>,
    pub(crate) daemon_peak_rss_mib: Option<f64>,
    pub(super) cpu: Option<Cpu>,
    /// Where the machine's CPU went during the drain.
    pub(super) machine_cpu: MachineCpu,
    pub(crate) daemon_retry_attempts: f64,
    pub(crate) daemon_dead_letters: f64,
    /// Mean time per step of each stage, from the daemon's
    /// `backbone_stage_step_duration_seconds` (merge: per batch; delivery:
    /// per message): where the drain's time went.
    pub(super) steps: BTreeMap<String, Vec<StepMean>>,
    pub(super) baseline_ack_only: Option<Baseline>,
    /// pipeline_messages_per_s / baseline messages_per_s (= baseline seconds
    /// / drain seconds: both drain the same messages).
    pub(crate) ratio: Option<f64>,
    /// Lost, doubled, unexpected, reordered or unreadable deliveries, missing
    /// merged events, pending raw events and parked dead letters.
    pub(crate) failures: usize,
    pub(crate) failure_detail: Vec<String>,
}

impl Report {
    /// The text report, a section at a time: the run, each target, the
    /// daemon's resources, its steps, the baseline, the verdict.
    pub(super) fn render(&self) -> String {
        let mut lines = Vec::new();
        self.render_run(&mut lines);
        let goal = if self.killed_replica_after_seconds.is_some() {
            1.5
        } else {
            1.2
        };
        for (name, t) in &self.targets {
            t.render(name, self.drain_seconds, goal, &mut lines);
        }
        self.render_resources(&mut lines);
        self.render_steps(&mut lines);
        self.render_baseline(&mut lines);
        self.render_verdict(&mut lines);
        lines.iter().map(|l| format!("{l}\n")).collect()
    }

    fn render_run(&self, out: &mut Vec<String>) {
        out.push(format!(
            "bench pipeline ({}): {} raw messages ({} events + {} duplicates) over {} records, {} merged events",
            self.database, self.raw_messages, self.events, self.duplicates, self.records, self.merged_events
        ));
        out.push(format!(
            "  backlog published in {:.2} s; daemon (all five consumers) ready after {}",
            self.backlog_publish_seconds,
            self.daemon_ready_seconds
                .map(|s| format!("{s:.2} s"))
                .unwrap_or_else(|| "n/a".into())
        ));
        if self.replicas > 1 {
            out.push(format!(
                "  {} replicas sharing the database and subscriptions; {}",
                self.replicas,
                self.killed_replica_after_seconds
                    .map(|s| format!("one SIGKILLed {s:.1} s after the start"))
                    .unwrap_or_else(|| "none killed".into())
            ));
        }
        out.push(format!(
            "  drain: {:.2} s from daemon start (streamed: the stream's start) to the last delivery = {:.0} events/s (raw messages / drain time)",
            self.drain_seconds, self.drain_events_per_s
        ));
        let allowed = self
            .targets
            .values()
            .filter_map(|t| t.allowed_seconds)
            .max_by(f64::total_cmp);
        if let (Some(k), Some(a)) = (self.killed_replica_after_seconds, allowed) {
            out.push(floor_line(
                k,
                self.delivery_lease_seconds,
                a,
                self.drain_seconds,
            ));
        }
    }

    /// Peak RSS, CPU, retries and dead letters.
    fn render_resources(&self, out: &mut Vec<String>) {
        out.push(format!(
            "  daemon peak RSS (VmHWM of the child process): {}",
            self.daemon_peak_rss_mib
                .map(|m| format!("{m:.1} MiB"))
                .unwrap_or_else(|| "n/a".into())
        ));
        if let Some(c) = &self.cpu {
            let floor = match (c.client_floor_per_1000_events, c.ratio) {
                (Some(f), Some(r)) => format!(
                    "; client floor (ack-only CPU per 1,000 messages x 3) {f:.3} s = {r:.2}x (goal <= 2)"
                ),
                _ => String::new(),
            };
            out.push(format!(
                "  daemon CPU: {:.1} s = {:.3} s per 1,000 raw messages{floor}",
                c.daemon_seconds, c.daemon_per_1000_events
            ));
        }
        out.push(format!(
            "  drain CPU: {}",
            self.machine_cpu.render(self.drain_seconds)
        ));
        out.push(format!(
            "  daemon retries: {}, dead letters: {}",
            self.daemon_retry_attempts, self.daemon_dead_letters
        ));
    }

    fn render_steps(&self, out: &mut Vec<String>) {
        for (stage, steps) in &self.steps {
            let total: f64 = steps.iter().map(|s| s.mean_ms).sum();
            let parts: Vec<String> = steps
                .iter()
                .map(|s| format!("{} {:.2}", s.step, s.mean_ms))
                .collect();
            let n = steps.first().map_or(0.0, |s| s.count);
            out.push(format!(
                "  steps {stage} (ms, mean of {n:.0}; total {total:.2}): {}",
                parts.join(", ")
            ));
        }
    }

    fn render_baseline(&self, out: &mut Vec<String>) {
        let (Some(b), Some(r)) = (&self.baseline_ack_only, self.ratio) else {
            out.push("  ack-only baseline: skipped".into());
            return;
        };
        out.push(format!(
            "  ack-only baseline: {} messages ({} raw on the merge subscription + {} merged on each delivery subscription) in {:.2} s = {:.0} msg/s",
            b.messages, b.raw_messages, b.merged_messages_per_delivery_subscription, b.seconds, b.messages_per_s
        ));
        out.push(format!(
            "  ack-only CPU: {}",
            b.machine_cpu.render(b.seconds)
        ));
        out.push(format!(
            "  (before it, publishing the {} merged events: {})",
            b.merged_messages_per_delivery_subscription,
            b.merged_publish_cpu.render(b.merged_publish_seconds)
        ));
        out.push(format!(
            "  pipeline: the same {} messages in {:.2} s = {:.0} msg/s",
            b.messages, self.drain_seconds, self.pipeline_messages_per_s
        ));
        out.push(format!(
            "  ratio (pipeline msg/s / ack-only msg/s): {r:.2} (goal >= 0.8)"
        ));
    }

    fn render_verdict(&self, out: &mut Vec<String>) {
        if self.failures == 0 {
            out.push("  every routed field arrived at its merged value, versions in per-record order, none twice (exactly once per request), at both targets".into());
        } else {
            out.push(format!("  FAILED: {} problems", self.failures));
            for d in &self.failure_detail {
                out.push(format!("    {d}"));
            }
        }
    }
}

impl TargetReport {
    /// One target's section: requests, pace against what it allows, problems.
    fn render(&self, name: &str, drain_seconds: f64, goal: f64, out: &mut Vec<String>) {
        let t = self;
        let lat = t
            .latency_ms_raw_publish_to_delivered
            .as_ref()
            .map(|l| format!("p50 {:.0} ms, p99 {:.0} ms", l.p50, l.p99))
            .unwrap_or_else(|| "n/a".into());
        let per_event = if t.expected > 0 {
            format!("{:.2}", t.requests as f64 / t.expected as f64)
        } else {
            "n/a".into()
        };
        out.push(format!(
            "  {name}: {} requests for {} routed merged events ({per_event} requests per routed merged event); raw publish -> delivered {lat}",
            t.requests, t.expected
        ));
        if let Some(served) = t.served_per_s {
            let allowed = match (t.allows_per_s, t.share_of_allowed) {
                (Some(a), Some(r)) => {
                    format!(" of {a:.0} the target allows = {r:.2} (goal >= 0.9)")
                }
                _ => String::new(),
            };
            out.push(format!(
                "    served {served:.0} requests/s{allowed}; {} refused over its cap ({:.1} % of requests sent)",
                t.refused,
                t.refused_share * 100.0
            ));
            let each: Vec<String> = t.served_each_second.iter().map(|n| n.to_string()).collect();
            out.push(format!("    served each second: {}", each.join(" ")));
        }
        if let (Some(a), Some(r)) = (t.allowed_seconds, t.drain_vs_allowed) {
            out.push(format!(
                "    drain vs what it allows: {drain_seconds:.2} s / {a:.2} s ({} routed records at its rate, or the stream's length) = {r:.2}x (goal <= {goal})",
                t.routed_records
            ));
        }
        if t.failures() > 0 {
            out.push(format!(
                "    missing {}, doubled {}, unexpected {}, out of order {}, unreadable {}",
                t.missing, t.doubled, t.unexpected, t.out_of_order, t.unreadable
            ));
        }
        if t.resent_after_kill > 0 {
            out.push(format!(
                "    {} versions sent before the kill were sent again after it (the killed replica's requests, never acknowledged in its books: at least once)",
                t.resent_after_kill
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::floor_line;

    #[test]
    fn the_floor_is_the_kill_plus_the_delivery_lease_against_what_the_targets_allow() {
        let line = floor_line(20.1, 5.0, 20.45, 26.72);
        assert!(line.contains(": 25.1 s = 1.23x of the 20.45 s"), "{line}");
        assert!(line.contains("the drain ended 1.6 s after it"), "{line}");
        // The broker's, for raw messages: Pub/Sub's shortest lease.
        assert!(line.contains("10 s after the kill: 1.47x"), "{line}");
        let early = floor_line(10.0, 10.0, 20.0, 19.5);
        assert!(early.contains("20.0 s = 1.00x"), "{early}");
        assert!(early.contains("ended 0.5 s before it"), "{early}");
    }
}
