//! `pipeline_status`: readiness and per-consumer state (from the daemon
//! this server runs in, or over HTTP from the daemon's `/readyz` when it
//! runs apart, as `event-backbone mcp` on stdio does), held messages,
//! pending gaps, parked dead letters, and each target's state.
//!
//! Target state is gathered in one place, [`target_state`], so what the
//! delivery path learns about a target (limits, circuit, throttling) is
//! added to the answer there.

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Serialize;
use serde_json::Value;

use super::tools::ToolError;
use super::Ctx;
use crate::model::raw_event::Source;
use crate::store::dead_letters::DlqFilter;
use crate::topology::ConsumerKind;

/// Audit rows `target_state` reads back for recent delivery outcomes.
pub const RECENT_WINDOW: i64 = 2000;
/// Records with pending events listed at most.
pub const PENDING_SHOWN: i64 = 20;
/// Dead letters read to group the parked ones by stage and reason.
pub const PARKED_GROUPED: i64 = 1000;
/// How long the daemon's `/readyz` may take to answer.
const READYZ_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Readiness {
    /// What `/readyz` says; null when no daemon could be asked.
    pub ready: Option<bool>,
    /// Where the answer came from: `in-process` (the daemon serving this
    /// MCP endpoint), `http://…/readyz`, or why it is unknown.
    pub source: String,
    /// The database as this server reaches it: `ok` or the error.
    pub database: String,
    /// The daemon's view of Pub/Sub (`ok` or why not); null when unknown.
    pub pubsub: Option<String>,
    /// Consumer → {up, detail}; empty when unknown.
    pub consumers: Value,
    /// Messages held for an outage (docs/spec.md §4.1), per consumer; null when none.
    pub holding: Option<String>,
    /// The daemon's pacing of each target (docs/spec.md §4.2), as `/readyz` lists it;
    /// shown under each target's `live`.
    #[serde(skip)]
    #[schemars(skip)]
    pub targets: Vec<Value>,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct PendingRecordOut {
    pub record_type: String,
    pub record_id: String,
    pub pending: i64,
    /// The record is missing a version below this one.
    pub lowest_base_version: i64,
    pub oldest_received_at: String,
    /// A `gap` dead letter was written (merge.gap_timeout passed).
    pub gap_reported: bool,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct PendingOut {
    /// Pending events in all.
    pub events: i64,
    /// Records waiting for a missing version.
    pub records: i64,
    /// The oldest gaps first (at most 20).
    pub oldest: Vec<PendingRecordOut>,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ParkedOut {
    /// Parked and not replayed.
    pub pending: i64,
    /// "stage/reason" → count, over the oldest 1000 pending rows.
    pub by_stage_and_reason: BTreeMap<String, i64>,
}

/// One delivery target as this server sees it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct TargetState {
    pub target: String,
    /// `targets.<t>.url` is set.
    pub configured: bool,
    /// `consumers.<t>.enabled`.
    pub consumer_enabled: bool,
    /// The consumer's streaming state in the daemon, when known.
    pub consumer_up: Option<bool>,
    /// Outcome → count among the newest 2000 audit rows.
    pub recent_outcomes: BTreeMap<String, i64>,
    pub last_delivered_at: Option<String>,
    /// The newest audit row that was neither delivered, skipped, duplicate
    /// nor superseded.
    pub last_failure_at: Option<String>,
    pub last_failure_outcome: Option<String>,
    /// The daemon's pacing of the target (docs/spec.md §4.2): `concurrency_limit`,
    /// `inflight`, `held`, `circuit_open`, `circuit_open_for_seconds`,
    /// `paused_for_seconds`, `mean_rtt_ms`; empty when no daemon answered.
    pub live: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct PipelineStatusOutput {
    pub env: String,
    pub readiness: Readiness,
    pub pending: PendingOut,
    pub dead_letters: ParkedOut,
    pub targets: Vec<TargetState>,
}

impl Ctx {
    pub async fn pipeline_status(&self) -> Result<PipelineStatusOutput, ToolError> {
        let readiness = self.readiness().await;
        let events = self.store.timed(self.store.pending_count()).await?;
        let (oldest, records) = self
            .store
            .timed(self.store.pending_records(PENDING_SHOWN))
            .await?;
        let parked = self.store.timed(self.store.pending_dead_letters()).await?;
        let rows = self
            .store
            .timed(
                self.store
                    .dead_letter_page(&DlqFilter::default(), None, PARKED_GROUPED),
            )
            .await?;
        let mut by_stage_and_reason = BTreeMap::new();
        for d in &rows {
            *by_stage_and_reason
                .entry(format!("{}/{}", d.stage, d.reason))
                .or_insert(0) += 1;
        }
        let targets = target_state(self, &readiness).await?;
        Ok(PipelineStatusOutput {
            env: self.settings.env.to_string(),
            readiness,
            pending: PendingOut {
                events,
                records,
                oldest: oldest
                    .into_iter()
                    .map(|p| PendingRecordOut {
                        record_type: p.record_type,
                        record_id: p.record_id,
                        pending: p.pending,
                        lowest_base_version: p.lowest_base_version,
                        oldest_received_at: p.oldest_received_at,
                        gap_reported: p.gap_reported,
                    })
                    .collect(),
            },
            dead_letters: ParkedOut {
                pending: parked,
                by_stage_and_reason,
            },
            targets,
        })
    }

    async fn readiness(&self) -> Readiness {
        let database = match tokio::time::timeout(READYZ_TIMEOUT, self.store.ping()).await {
            Ok(Ok(())) => "ok".to_string(),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer within 2s".to_string(),
        };
        if let Some(h) = &self.health {
            let pubsub = match h.broker() {
                Ok(()) => "ok".to_string(),
                Err(e) => e,
            };
            let holding = h.holding();
            let ready = database == "ok" && pubsub == "ok" && holding.is_none() && h.all_up();
            return Readiness {
                ready: Some(ready),
                source: "in-process".into(),
                database,
                pubsub: Some(pubsub),
                consumers: serde_json::to_value(h.snapshot()).unwrap_or(Value::Null),
                holding,
                targets: h
                    .targets()
                    .iter()
                    .filter_map(|t| serde_json::to_value(t).ok())
                    .collect(),
            };
        }
        // Apart from the daemon: ask its /readyz, on the host this server
        // runs on (a port-forward or a sidecar), where http.metrics_addr says.
        let addr = self
            .settings
            .http
            .metrics_addr
            .replace("0.0.0.0", "127.0.0.1");
        let url = format!("http://{addr}/readyz");
        let unknown = |why: String| Readiness {
            ready: None,
            source: why,
            database: database.clone(),
            pubsub: None,
            consumers: Value::Object(Default::default()),
            holding: None,
            targets: Vec::new(),
        };
        let client = match reqwest::Client::builder().timeout(READYZ_TIMEOUT).build() {
            Ok(c) => c,
            Err(e) => return unknown(format!("unknown: no HTTP client ({e})")),
        };
        let body: Value = match client.get(&url).send().await {
            Ok(r) => match r.json().await {
                Ok(b) => b,
                Err(e) => return unknown(format!("unknown: {url} answered no JSON ({e})")),
            },
            Err(e) => {
                return unknown(format!(
                    "unknown: no daemon answered at {url} (http.metrics_addr) ({e}); \
                     the store-derived parts below are still current"
                ))
            }
        };
        Readiness {
            ready: body.get("ready").and_then(Value::as_bool),
            source: url,
            database,
            pubsub: body
                .get("pubsub")
                .and_then(Value::as_str)
                .map(str::to_owned),
            consumers: body.get("consumers").cloned().unwrap_or(Value::Null),
            holding: body
                .get("holding")
                .and_then(Value::as_str)
                .map(str::to_owned),
            targets: body
                .get("targets")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
        }
    }
}

/// Each target's state: its configuration, its consumer, and the delivery
/// outcomes the audit log recorded lately. The one place target state is
/// assembled; live limiter or circuit state goes into `live`.
pub async fn target_state(ctx: &Ctx, readiness: &Readiness) -> Result<Vec<TargetState>, ToolError> {
    let recent = ctx
        .store
        .timed(ctx.store.recent_delivery_outcomes(RECENT_WINDOW))
        .await?;
    let topology = ctx.settings.topology();
    let mut out = Vec::new();
    for (target, kind, cfg) in [
        (
            Source::Netsuite,
            ConsumerKind::Netsuite,
            &ctx.settings.targets.netsuite,
        ),
        (
            Source::Suitex,
            ConsumerKind::Suitex,
            &ctx.settings.targets.suitex,
        ),
    ] {
        let stage = format!("deliver.{}", target.as_str());
        let mut recent_outcomes = BTreeMap::new();
        let (mut last_delivered_at, mut last_failure) = (None::<String>, None::<(String, String)>);
        // Newest first.
        for r in recent.iter().filter(|r| r.stage == stage) {
            *recent_outcomes.entry(r.outcome.clone()).or_insert(0) += 1;
            match r.outcome.as_str() {
                "delivered" => {
                    last_delivered_at.get_or_insert_with(|| r.at.clone());
                }
                "skipped" | "duplicate" | "superseded" => {}
                other => {
                    last_failure.get_or_insert_with(|| (r.at.clone(), other.to_string()));
                }
            }
        }
        let consumer_up = readiness
            .consumers
            .get(topology.subscription_id(kind))
            .and_then(|c| c.get("up"))
            .and_then(Value::as_bool);
        out.push(TargetState {
            target: target.as_str().to_string(),
            configured: cfg.url.is_some(),
            consumer_enabled: ctx.settings.consumers.get(kind).enabled,
            consumer_up,
            recent_outcomes,
            last_delivered_at,
            last_failure_at: last_failure.as_ref().map(|f| f.0.clone()),
            last_failure_outcome: last_failure.map(|f| f.1),
            // Concurrency limit, in flight, held, circuit, Retry-After pause.
            live: readiness
                .targets
                .iter()
                .find(|t| t.get("target").and_then(Value::as_str) == Some(target.as_str()))
                .and_then(Value::as_object)
                .map(|o| {
                    o.iter()
                        .filter(|(k, _)| k.as_str() != "target")
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                })
                .unwrap_or_default(),
        });
    }
    Ok(out)
}
