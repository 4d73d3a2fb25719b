//! The daemon as a child process, and what its /metrics say.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use std::collections::HashMap;

use super::super::merge;
use super::checks::check_target;
use super::report::StepMean;
use super::stand_in::StandIn;
use super::Scratch;
use backbone::config::Settings;
use backbone::model::raw_event::Source;
use backbone::store::Store;
use backbone::topology::ConsumerKind;

pub(super) struct DaemonWiring<'a> {
    pub(super) project: &'a str,
    pub(super) db_url: &'a str,
    pub(super) netsuite: &'a str,
    pub(super) suitex: &'a str,
    pub(super) metrics: SocketAddr,
    pub(super) admin: SocketAddr,
    pub(super) dir: &'a Path,
    pub(super) log: &'a Path,
    /// NetSuite's refusals read as NetSuite's (`targets.netsuite.errors`).
    pub(super) netsuite_errors: bool,
    /// `targets.netsuite.account_concurrency`.
    pub(super) account_concurrency: Option<usize>,
    /// `targets.<t>.coalesce` for both targets.
    pub(super) coalesce: Option<Duration>,
}

/// Starts this binary's `run` with the bench's own configuration (inherited
/// environment and config dir) pointed at the scratch topology, database and
/// stand-ins, every consumer on.
pub(super) fn spawn_daemon(
    settings: &Settings,
    w: &DaemonWiring<'_>,
) -> anyhow::Result<tokio::process::Child> {
    let exe = crate::daemon_binary()?;
    let out = std::fs::File::create(w.log)?;
    let err = out.try_clone()?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("run")
        .env("BACKBONE_ENV", settings.env.as_str())
        .env(
            "PUBSUB_EMULATOR_HOST",
            settings.pubsub.emulator_host.clone().unwrap_or_default(),
        )
        .env("BACKBONE__PUBSUB__PROJECT_ID", w.project)
        .env("BACKBONE__DATABASE__URL", w.db_url)
        .env(
            "BACKBONE__SNAPSHOTS__URL",
            format!("file://{}", w.dir.join("snapshots").display()),
        )
        .env("BACKBONE__TARGETS__NETSUITE__URL", w.netsuite)
        .env("BACKBONE__TARGETS__SUITEX__URL", w.suitex)
        .env("BACKBONE__HTTP__METRICS_ADDR", w.metrics.to_string())
        .env("BACKBONE__HTTP__ADMIN_ADDR", w.admin.to_string())
        .env("BACKBONE__SHUTDOWN__GRACE", "2s")
        .env("NO_COLOR", "1")
        .env_remove("BACKBONE__HTTP__ADMIN_TOKEN")
        .env_remove("BACKBONE__TARGETS__NETSUITE__TOKEN")
        .env_remove("BACKBONE__TARGETS__SUITEX__TOKEN");
    if w.netsuite_errors {
        cmd.env("BACKBONE__TARGETS__NETSUITE__ERRORS", "netsuite");
    }
    if let Some(cap) = w.account_concurrency {
        cmd.env(
            "BACKBONE__TARGETS__NETSUITE__ACCOUNT_CONCURRENCY",
            cap.to_string(),
        );
    }
    if let Some(c) = w.coalesce {
        let c = humantime::format_duration(c).to_string();
        cmd.env("BACKBONE__TARGETS__NETSUITE__COALESCE", &c)
            .env("BACKBONE__TARGETS__SUITEX__COALESCE", &c);
    }
    for kind in ConsumerKind::all() {
        cmd.env(
            format!(
                "BACKBONE__CONSUMERS__{}__ENABLED",
                kind.as_str().to_uppercase()
            ),
            "true",
        );
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .kill_on_drop(true);
    cmd.spawn().context("starting the daemon (`run`)")
}

/// Reads the daemon's progress from its /metrics.
pub(super) struct Watch {
    pub(super) http: reqwest::Client,
    pub(super) metrics_addr: SocketAddr,
    pub(super) merge_sub: String,
    pub(super) deliver_subs: [String; 2],
}

impl Watch {
    pub(super) async fn scrape(&self) -> Option<String> {
        let r = self
            .http
            .get(format!("http://{}/metrics", self.metrics_addr))
            .send()
            .await
            .ok()?;
        r.text().await.ok()
    }

    async fn ready(&self) -> bool {
        self.http
            .get(format!("http://{}/readyz", self.metrics_addr))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }
}

/// Sum of a counter's samples whose labels include every `(name, value)`.
pub(super) fn counter_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (lbls, value) = match rest.strip_prefix('{') {
                Some(r) => r.split_once('}')?,
                None if rest.starts_with(' ') => ("", rest),
                None => return None,
            };
            let has = |k: &str, v: &str| lbls.split(',').any(|p| p == format!("{k}=\"{v}\""));
            if labels.iter().all(|(k, v)| has(k, v)) {
                value.trim().parse::<f64>().ok()
            } else {
                None
            }
        })
        .sum()
}

/// Per stage, the mean of each step of `backbone_stage_step_duration_seconds`,
/// in the order the steps run (the order the exposition lists them is
/// alphabetical).
pub(super) fn step_means(text: &str) -> BTreeMap<String, Vec<StepMean>> {
    // Merge's steps, then a delivery's.
    const DELIVERY_STEPS: [&str; 7] = [
        "turn_wait",
        "state_read",
        "plan",
        "permit_wait",
        "claim",
        "post",
        "audit_and_state_write",
    ];
    const NAME: &str = "backbone_stage_step_duration_seconds";
    let mut out: BTreeMap<String, Vec<StepMean>> = BTreeMap::new();
    for l in text.lines() {
        let Some(lbls) = l
            .strip_prefix(NAME)
            .and_then(|r| r.strip_prefix("_count{"))
            .and_then(|r| r.split_once('}'))
            .map(|(l, _)| l)
        else {
            continue;
        };
        let label = |k: &str| {
            lbls.split(',').find_map(|p| {
                p.strip_prefix(k)
                    .and_then(|v| v.strip_prefix("=\""))
                    .and_then(|v| v.strip_suffix('"'))
            })
        };
        let (Some(stage), Some(step)) = (label("stage"), label("step")) else {
            continue;
        };
        let pick = [("stage", stage), ("step", step)];
        let count = counter_sum(text, &format!("{NAME}_count"), &pick);
        if count > 0.0 {
            let sum = counter_sum(text, &format!("{NAME}_sum"), &pick);
            out.entry(stage.to_string()).or_default().push(StepMean {
                step: step.to_string(),
                mean_ms: sum / count * 1000.0,
                count,
            });
        }
    }
    let rank = |s: &str| {
        merge::MERGE_STEPS
            .iter()
            .chain(DELIVERY_STEPS.iter())
            .position(|o| *o == s)
            .unwrap_or(usize::MAX)
    };
    for steps in out.values_mut() {
        steps.sort_by_key(|s| rank(&s.step));
    }
    out
}

fn processed(text: &str, sub: &str, outcomes: &[&str]) -> f64 {
    outcomes
        .iter()
        .map(|o| {
            counter_sum(
                text,
                "backbone_messages_processed_total",
                &[("subscription", sub), ("outcome", o)],
            )
        })
        .sum()
}

pub(super) struct Drained {
    pub(super) ready: Option<Instant>,
    /// When the scrape showed everything finished (up to 200 ms late).
    pub(super) done: Instant,
    /// When a replica was SIGKILLed (`--kill-one-after`).
    pub(super) killed: Option<Instant>,
}

/// How the drain's end is recognised.
pub(super) enum Completion<'a> {
    /// The one daemon's metrics: every message finished on every stage;
    /// then confirmed as `Stored` is (a message the broker handed out
    /// twice counts twice, so the counts alone can pass early).
    Metrics { db_url: &'a str, unique: usize },
    /// Several replicas (one maybe killed, its counters gone with it): the
    /// database holds every merged event and nothing pending, and each
    /// stand-in holds every record's merged state (P2 already true).
    Stored { db_url: &'a str, unique: usize },
}

impl Completion<'_> {
    /// Cheap gates first (counts, and whether anything arrived since the
    /// last look); every merged event is read only when they pass, so the
    /// poll does not compete with the daemons for the database.
    async fn done(
        &self,
        stand_ins: [&StandIn; 2],
        store: &mut Option<Store>,
        arrivals_seen: &mut usize,
    ) -> anyhow::Result<bool> {
        let (Completion::Stored { db_url, unique } | Completion::Metrics { db_url, unique }) = self;
        let arrived: usize = stand_ins.iter().map(|s| s.count()).sum();
        if arrived == *arrivals_seen {
            return Ok(false);
        }
        if store.is_none() {
            *store = Some(Store::connect(db_url, 1, Duration::from_secs(10)).await?);
        }
        let Some(store) = store.as_ref() else {
            return Ok(false);
        };
        let stored = crate::sql::bench::count_events(store).await?;
        if stored < *unique as i64 || store.pending_count().await? > 0 {
            return Ok(false);
        }
        let merged = store.merged_all().await?;
        *arrivals_seen = arrived;
        if merged.len() < *unique {
            return Ok(false);
        }
        for (target, s) in Source::ALL.into_iter().zip(stand_ins) {
            let seen = check_target(
                target,
                &merged,
                &s.arrivals(),
                s.unreadable(),
                &HashMap::new(),
                None,
            )?;
            if seen.missing > 0 {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Waits until the merge consumer finished every raw message, every merged
/// event was published, and both delivery consumers finished every merged
/// event (delivered or skipped): then every delivery there is has arrived.
#[allow(clippy::too_many_arguments)]
pub(super) async fn wait_drained(
    watch: &Watch,
    scratch: &mut Scratch,
    raw_messages: usize,
    unique: usize,
    stand_ins: [&StandIn; 2],
    stall_timeout: Duration,
    done_by: Completion<'_>,
    kill_at: Option<Instant>,
) -> anyhow::Result<Drained> {
    let mut ready = None;
    let mut killed = None;
    let mut store = None;
    let mut arrivals_seen = 0;
    let mut progress = (0.0f64, 0usize);
    let mut last_progress = Instant::now();
    let mut polls = 0u64;
    // `Completion::Metrics`: the counts say every message finished.
    let mut counted = false;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        polls += 1;
        if killed.is_none() && kill_at.is_some_and(|at| Instant::now() >= at) {
            killed = kill_one(scratch).await;
        }
        for child in scratch.daemon.iter_mut().chain(scratch.replicas.iter_mut()) {
            if let Some(status) = child.try_wait()? {
                bail!("a daemon exited during the drain ({status})");
            }
        }
        // Reading the database is heavier than a scrape: once a second.
        if polls.is_multiple_of(5)
            && (counted || matches!(done_by, Completion::Stored { .. }))
            && done_by
                .done(stand_ins, &mut store, &mut arrivals_seen)
                .await?
        {
            if let Some(s) = store.take() {
                s.close().await;
            }
            return Ok(Drained {
                ready,
                done: Instant::now(),
                killed,
            });
        }
        if ready.is_none() && watch.ready().await {
            ready = Some(Instant::now());
        }
        let Some(text) = watch.scrape().await else {
            continue;
        };
        let merged_in = processed(&text, &watch.merge_sub, &["merged", "duplicate", "noop"]);
        let published = counter_sum(&text, "backbone_published_total", &[("topic", "merged")]);
        let delivered: Vec<f64> = watch
            .deliver_subs
            .iter()
            .map(|s| {
                processed(
                    &text,
                    s,
                    &["delivered", "skipped", "covered", "superseded", "duplicate"],
                )
            })
            .collect();
        if matches!(done_by, Completion::Metrics { .. })
            && merged_in >= raw_messages as f64
            && published >= unique as f64
            && delivered.iter().all(|d| *d >= published)
        {
            counted = true;
        }
        let all: f64 = processed_total(&text);
        let arrived: usize = stand_ins.iter().map(|s| s.count()).sum();
        if (all, arrived) != progress {
            progress = (all, arrived);
            last_progress = Instant::now();
        } else if last_progress.elapsed() > stall_timeout {
            bail!(
                "no progress for {}: merge finished {merged_in} of {raw_messages} raw messages, \
                 {published} of {unique} merged events published, delivery consumers finished {:?}, \
                 {arrived} requests arrived at the stand-ins",
                humantime::format_duration(stall_timeout),
                delivered
            );
        }
    }
}

/// SIGKILLs the first extra replica (tokio's kill is SIGKILL on Unix: no
/// chance to hand anything back); when it died.
async fn kill_one(scratch: &mut Scratch) -> Option<Instant> {
    if scratch.replicas.is_empty() {
        return None;
    }
    let mut child = scratch.replicas.remove(0);
    let _ = child.start_kill();
    let _ = child.wait().await;
    Some(Instant::now())
}

fn processed_total(text: &str) -> f64 {
    counter_sum(text, "backbone_messages_processed_total", &[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_means_are_per_stage_in_run_order() {
        let text =
            "backbone_stage_step_duration_seconds_sum{stage=\"deliver.suitex\",step=\"post\"} 2\n\
backbone_stage_step_duration_seconds_count{stage=\"deliver.suitex\",step=\"post\"} 4\n\
backbone_stage_step_duration_seconds_sum{stage=\"deliver.suitex\",step=\"state_read\"} 0.4\n\
backbone_stage_step_duration_seconds_count{stage=\"deliver.suitex\",step=\"state_read\"} 4\n\
backbone_stage_step_duration_seconds_sum{stage=\"merge\",step=\"commit\"} 1\n\
backbone_stage_step_duration_seconds_count{stage=\"merge\",step=\"commit\"} 0\n";
        let m = step_means(text);
        let d: Vec<(&str, f64)> = m["deliver.suitex"]
            .iter()
            .map(|s| (s.step.as_str(), s.mean_ms))
            .collect();
        assert_eq!(d, vec![("state_read", 100.0), ("post", 500.0)]);
        // A step never observed is left out, and so is a stage without any.
        assert!(!m.contains_key("merge"));
    }

    #[test]
    fn counter_sum_matches_labels() {
        let text = "# HELP x\n\
            backbone_messages_processed_total{outcome=\"merged\",subscription=\"a\"} 5\n\
            backbone_messages_processed_total{outcome=\"duplicate\",subscription=\"a\"} 2\n\
            backbone_messages_processed_total{outcome=\"merged\",subscription=\"b\"} 7\n\
            backbone_published_total{topic=\"merged\"} 12\n\
            backbone_retry_attempts_total 3\n";
        assert_eq!(processed(text, "a", &["merged", "duplicate"]), 7.0);
        assert_eq!(processed(text, "b", &["merged", "duplicate"]), 7.0);
        assert_eq!(processed_total(text), 14.0);
        assert_eq!(
            counter_sum(text, "backbone_published_total", &[("topic", "merged")]),
            12.0
        );
        assert_eq!(counter_sum(text, "backbone_retry_attempts_total", &[]), 3.0);
    }
}
