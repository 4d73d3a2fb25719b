//! Pausing and resuming a delivery target by hand (docs/spec.md §7.1). The
//! pause lives in the database (`target_controls`): every replica reads it
//! within [`super::sweep::CONTROLS_EVERY`] and holds the target's
//! deliveries like an open circuit with cause `paused` — no attempt spent,
//! nothing dead-lettered — and a restart keeps it.

use std::str::FromStr;

use serde::Serialize;

use super::{check_reason, Actor, OpsError};
use crate::model::raw_event::Source;
use crate::runtime::health::Health;
use crate::stages::deliver::pacing::TargetSnapshot;
use crate::store::Store;

/// A target as `targets list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct TargetReport {
    pub target: String,
    pub paused: bool,
    /// Who paused or resumed it last, why and when.
    pub actor: Option<String>,
    pub reason: Option<String>,
    pub changed_at: Option<String>,
    /// This process's view of the target (pacing, circuit and its cause),
    /// when asked inside the daemon.
    pub live: Option<TargetSnapshot>,
}

fn target(name: &str) -> Result<Source, OpsError> {
    Source::from_str(name).map_err(|e| OpsError::Invalid(format!("unknown target: {e}")))
}

/// Both targets, with their stored control and, inside the daemon, their
/// live state.
pub async fn list(store: &Store, live: Option<&Health>) -> Result<Vec<TargetReport>, OpsError> {
    let controls = store.target_controls().await?;
    let snapshots = live.map(Health::targets).unwrap_or_default();
    Ok(Source::ALL
        .into_iter()
        .map(|t| {
            let c = controls.iter().find(|c| c.target == t.as_str());
            TargetReport {
                target: t.as_str().into(),
                paused: c.is_some_and(|c| c.paused),
                actor: c.and_then(|c| c.actor.clone()),
                reason: c.and_then(|c| c.reason.clone()),
                changed_at: c.and_then(|c| c.changed_at.clone()),
                live: snapshots.iter().find(|s| s.target == t.as_str()).cloned(),
            }
        })
        .collect())
}

async fn set(
    store: &Store,
    name: &str,
    paused: bool,
    actor: &Actor,
    reason: Option<&str>,
) -> Result<TargetReport, OpsError> {
    let t = target(name)?;
    let c = store
        .set_target_paused(t.as_str(), paused, actor.as_str(), reason)
        .await?;
    tracing::warn!(
        target = t.as_str(),
        paused,
        actor = actor.as_str(),
        reason,
        "Target control changed by an operator."
    );
    Ok(TargetReport {
        target: c.target,
        paused: c.paused,
        actor: c.actor,
        reason: c.reason,
        changed_at: c.changed_at,
        live: None,
    })
}

/// Holds every delivery to `target` until resumed; `reason` is required.
pub async fn pause(
    store: &Store,
    target: &str,
    actor: &Actor,
    reason: &str,
) -> Result<TargetReport, OpsError> {
    let reason = check_reason(reason)?;
    set(store, target, true, actor, Some(reason)).await
}

pub async fn resume(store: &Store, target: &str, actor: &Actor) -> Result<TargetReport, OpsError> {
    set(store, target, false, actor, None).await
}
