//! `event-backbone archive` as a child process, as an operator (or the
//! chart's CronJob) runs it: its own process, so it can be SIGKILLed in the
//! middle and run again.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use backbone::config::Settings;
use backbone::store::Store;

/// Where the child archives from and to.
pub(super) struct Wiring<'a> {
    pub(super) db_url: &'a str,
    pub(super) snapshots_url: &'a str,
    pub(super) before: &'a str,
}

/// One archive process run, as the bench saw it.
#[derive(Debug, Clone, serde::Serialize)]
pub(super) struct RunSeen {
    pub(super) seconds: f64,
    /// Killed with SIGKILL once this many segments were recorded.
    pub(super) killed_at_segments: Option<i64>,
    /// The run's own report (`archive --json`), when it finished.
    pub(super) report: Option<serde_json::Value>,
}

fn command(settings: &Settings, w: &Wiring<'_>) -> anyhow::Result<tokio::process::Command> {
    let exe = crate::daemon_binary()?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(["archive", "--before", w.before, "--json"])
        .env("BACKBONE_ENV", settings.env.as_str())
        .env("BACKBONE__DATABASE__URL", w.db_url)
        .env("BACKBONE__SNAPSHOTS__URL", w.snapshots_url)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    Ok(cmd)
}

/// Runs `archive` to its end.
pub(super) async fn run_to_end(settings: &Settings, w: &Wiring<'_>) -> anyhow::Result<RunSeen> {
    let t = Instant::now();
    let out = command(settings, w)?
        .output()
        .await
        .context("running `archive`")?;
    if !out.status.success() {
        bail!("`archive` failed ({}): see its log above", out.status);
    }
    let mut report: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("reading the report of `archive --json`")?;
    // The totals, not every segment (the bench sums those from the database).
    if let Some(m) = report.as_object_mut() {
        if let Some(n) = m
            .remove("segments")
            .and_then(|s| s.as_array().map(Vec::len))
        {
            m.insert("segments".into(), n.into());
        }
    }
    Ok(RunSeen {
        seconds: t.elapsed().as_secs_f64(),
        killed_at_segments: None,
        report: Some(report),
    })
}

/// Runs `archive` and SIGKILLs it once `segments` segments are recorded;
/// fails if it ended first (then nothing was tested).
pub(super) async fn run_and_kill(
    settings: &Settings,
    w: &Wiring<'_>,
    store: &Store,
    segments: i64,
) -> anyhow::Result<RunSeen> {
    let t = Instant::now();
    let mut child = command(settings, w)?
        .stdout(Stdio::null())
        .spawn()
        .context("starting `archive`")?;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "`archive` ended ({status}) before {segments} segments were recorded: \
                 nothing was killed (lower --kill-after-segments)"
            );
        }
        let n = crate::sql::bench::count_segments(store).await?;
        if n >= segments {
            // tokio's kill is SIGKILL on Unix: no chance to tidy up.
            child.kill().await.context("killing `archive`")?;
            return Ok(RunSeen {
                seconds: t.elapsed().as_secs_f64(),
                killed_at_segments: Some(n),
                report: None,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
