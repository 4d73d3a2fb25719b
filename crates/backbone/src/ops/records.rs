//! `records resync` (docs/spec.md §7.1): sends a record's current merged
//! state — every field whose value came from elsewhere than the target — to
//! a target as ONE request with `X-Backbone-Resync: true`, signed like every
//! delivery, allowed at a version the target already acknowledged (its
//! idempotency key is new each time), and audited (stage `operator`,
//! outcome `resynced` or `resync_failed`, with the actor and the version).
//! The fix for drift `verify` finds, or a target restored from a backup.

use bytes::Bytes;
use chrono::Utc;
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::{Actor, OpsError};
use crate::model::fingerprint::sha256_hex;
use crate::model::raw_event::Source;
use crate::stages::deliver::http_sink::HttpSink;
use crate::store::Store;

/// Each configured target's signed client (built by the app from the
/// targets' settings, handed to the admin API and the console).
pub type Sinks = std::sync::Arc<std::collections::HashMap<Source, HttpSink>>;

pub const RESYNC_HEADER: &str = "X-Backbone-Resync";

/// What one record's resync did.
#[derive(Debug, Clone, Serialize)]
pub struct ResyncReport {
    pub target: String,
    pub record: String,
    pub version: i64,
    /// The fields sent.
    pub fields: Vec<String>,
    pub ok: bool,
    pub status: Option<u16>,
    pub error: Option<String>,
}

/// A resync's target, its signed client and the records.
pub type Resolved<'a> = (Source, &'a HttpSink, Vec<(String, String)>);

/// What a resync names, checked: the target, its signed client among
/// `sinks`, the records parsed. One check for every front door.
pub fn resolve<'a>(
    sinks: &'a Sinks,
    target: &str,
    records: &[String],
) -> Result<Resolved<'a>, OpsError> {
    use std::str::FromStr;
    let source = Source::from_str(target).map_err(|_| {
        OpsError::Invalid(format!("unknown target {target:?} (netsuite or suitex)"))
    })?;
    let sink = sinks.get(&source).ok_or_else(|| {
        OpsError::Invalid(format!("targets.{target}.url is not set on this server"))
    })?;
    if records.is_empty() {
        return Err(OpsError::Invalid(
            "name at least one record (record_type:record_id)".into(),
        ));
    }
    let recs = records
        .iter()
        .map(|r| parse_record(r))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((source, sink, recs))
}

/// `type:id` → (type, id).
pub fn parse_record(s: &str) -> Result<(String, String), OpsError> {
    match s.split_once(':') {
        Some((t, id)) if !t.is_empty() && !id.is_empty() => Ok((t.into(), id.into())),
        _ => Err(OpsError::Invalid(format!(
            "{s:?} is not <record_type>:<record_id>"
        ))),
    }
}

/// The request body: a merged event (docs/spec.md §3.3) carrying the
/// record's whole routed state at its current version, marked `resync`.
fn body(target: Source, rt: &str, rid: &str, version: i64, applied: Map<String, Value>) -> Value {
    let now = crate::model::fingerprint::format_timestamp(&Utc::now());
    let fingerprint =
        sha256_hex(format!("resync\n{target}\n{rt}\n{rid}\n{version}\n{now}").as_bytes());
    let origin = match target {
        Source::Netsuite => Source::Suitex,
        Source::Suitex => Source::Netsuite,
    };
    json!({
        "event_id": uuid::Uuid::new_v4().to_string(), "fingerprint": fingerprint,
        "record_type": rt, "record_id": rid, "origin": origin, "version": version,
        "base_version": version, "timestamp": now, "applied": applied, "conflicts": [],
        "resync": true,
    })
}

/// Resyncs each of `records` to `target` through `sink`, one request each.
pub async fn resync(
    store: &Store,
    sink: &HttpSink,
    target: Source,
    records: &[(String, String)],
    actor: &Actor,
) -> Result<Vec<ResyncReport>, OpsError> {
    let mut out = Vec::new();
    for (rt, rid) in records {
        let state = store
            .current_state(rt, rid)
            .await?
            .ok_or_else(|| OpsError::NotFound(format!("no record {rt}:{rid}")))?;
        let applied: Map<String, Value> = state
            .fields
            .iter()
            .filter(|(_, f)| f.source != target)
            .map(|(k, f)| (k.clone(), f.value.clone()))
            .collect();
        let fields: Vec<String> = applied.keys().cloned().collect();
        let b = body(target, rt, rid, state.version, applied);
        let key = b["fingerprint"].as_str().unwrap_or_default().to_string();
        let bytes =
            Bytes::from(serde_json::to_vec(&b).map_err(|e| OpsError::Invalid(e.to_string()))?);
        let answer = sink
            .post_with(&key, bytes, false, &[(RESYNC_HEADER, "true")])
            .await;
        let (status, error) = match &answer {
            Ok(d) => (Some(d.status), None),
            Err(f) => (
                f.answer.as_ref().and_then(|a| a.status),
                Some(f.error.message.clone()),
            ),
        };
        store
            .audit_resync(
                target.as_str(),
                (rt, rid),
                state.version,
                actor.as_str(),
                status,
                error.as_deref(),
            )
            .await?;
        out.push(ResyncReport {
            target: target.as_str().into(),
            record: format!("{rt}:{rid}"),
            version: state.version,
            fields,
            ok: error.is_none(),
            status,
            error,
        });
    }
    Ok(out)
}
