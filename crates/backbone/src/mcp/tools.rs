//! The tools' inputs, outputs and logic, as plain async methods of
//! [`Ctx`]: the rmcp server ([`super::server`]) only wraps them, and the
//! bench calls them in-process. Each input and output derives its JSON
//! Schema; each failure is a [`ToolError`] a model can act on.

use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::catalog::{self, Term};
use super::Ctx;
use crate::dlq;
use crate::explain::{self, ExplainError};
use crate::history::{self, HistoryError};
use crate::model::fingerprint::{fingerprint, fingerprint_bytes};
use crate::model::raw_event::{self, parse_raw_event, Source};
use crate::store::dead_letters::{DeadLetter, DlqFilter};
use crate::store::ledger::AuditRow;
use crate::store::mcp::EventFilter;
use crate::store::StoreError;
use crate::topology::TopicKind;

/// Events per `query_events` page when the caller does not say.
pub const DEFAULT_LIMIT: u32 = 100;
/// Upper bound on a page.
pub const MAX_LIMIT: u32 = 1000;
/// Dead letters per listing when the caller does not say, and at most.
pub const DEFAULT_DLQ_LIMIT: u32 = 100;
pub const MAX_DLQ_LIMIT: u32 = 1000;
/// Records whose merged state `list_event_types` reads per type for field names.
pub const FIELD_SAMPLE: i64 = 500;
/// The audit stage of writes made through MCP.
pub const AUDIT_STAGE: &str = "mcp";

/// A failure the caller can act on; shown to the model as the tool's error text.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The record, field or dead letter does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// An argument is wrong; the message names it and what is allowed.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// The tool is switched off in this server's configuration.
    #[error("disabled: {0}")]
    Disabled(String),
    /// The stored history cannot be folded, or the broker refused.
    #[error("failed: {0}")]
    Failed(String),
    /// The database did not answer; try again.
    #[error("unavailable: the event store did not answer ({0}); try again")]
    Unavailable(String),
}

impl From<StoreError> for ToolError {
    fn from(e: StoreError) -> Self {
        tracing::warn!(error = %e, "An MCP tool's database read failed.");
        ToolError::Unavailable(e.to_string())
    }
}

impl From<HistoryError> for ToolError {
    fn from(e: HistoryError) -> Self {
        match e {
            HistoryError::Store(s) => s.into(),
            HistoryError::BadLimit(_) => ToolError::Invalid(e.to_string()),
            // Archived (docs/spec.md §6.1): the message names the segment and `archive restore`.
            HistoryError::Replay { .. } | HistoryError::Archived { .. } => {
                ToolError::Failed(e.to_string())
            }
        }
    }
}

impl From<ExplainError> for ToolError {
    fn from(e: ExplainError) -> Self {
        match e {
            ExplainError::UnknownRecord { .. } | ExplainError::UnknownField { .. } => {
                ToolError::NotFound(e.to_string())
            }
            ExplainError::Replay(h) => h.into(),
            ExplainError::Store(s) => s.into(),
        }
    }
}

// ---------------------------------------------------------------------------
// shared argument shapes

/// A record, as every record tool names it.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct RecordRef {
    /// The record's type, e.g. `project` (`^[a-z][a-z0-9_]{0,63}$`).
    pub record_type: String,
    /// The record's id, e.g. `42`.
    pub record_id: String,
}

impl RecordRef {
    /// A bad type or id is named, not turned into an empty answer.
    fn check(&self) -> Result<(), ToolError> {
        raw_event::check_record_type(&self.record_type).map_err(|e| {
            ToolError::Invalid(format!(
                "record_type {:?}: {} (see list_event_types for the types stored)",
                self.record_type, e.reason
            ))
        })?;
        raw_event::check_record_id(&self.record_id).map_err(|e| {
            ToolError::Invalid(format!("record_id {:?}: {}", self.record_id, e.reason))
        })
    }

    fn key(&self) -> String {
        format!("{}/{}", self.record_type, self.record_id)
    }
}

/// An event source (and delivery target).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SourceArg {
    Suitex,
    Netsuite,
}

impl SourceArg {
    fn source(self) -> Source {
        match self {
            SourceArg::Suitex => Source::Suitex,
            SourceArg::Netsuite => Source::Netsuite,
        }
    }
}

fn parse_time(name: &str, v: &Option<String>) -> Result<Option<DateTime<Utc>>, ToolError> {
    v.as_deref()
        .map(|s| {
            DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| {
                    ToolError::Invalid(format!(
                        "{name} {s:?} is not an RFC 3339 timestamp ({e}); e.g. 2026-03-13T20:00:00Z"
                    ))
                })
        })
        .transpose()
}

// ---------------------------------------------------------------------------
// query_events

#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct QueryEventsInput {
    #[serde(flatten)]
    pub record: RecordRef,
    /// Only events from this source.
    #[serde(default)]
    pub source: Option<SourceArg>,
    /// Only events with an audit row of this outcome at any stage, e.g.
    /// `merged`, `duplicate`, `delivered` (list_event_types lists them all).
    #[serde(default)]
    pub outcome: Option<String>,
    /// Only events whose timestamp is at or after this instant (RFC 3339).
    #[serde(default)]
    pub since: Option<String>,
    /// Only events whose timestamp is before this instant (RFC 3339).
    #[serde(default)]
    pub until: Option<String>,
    /// Only events whose changes contain this text (field names or values;
    /// case-insensitive).
    #[serde(default)]
    pub keyword: Option<String>,
    /// Events per page, 1-1000 (default 100).
    #[serde(default)]
    pub limit: Option<u32>,
    /// Events to skip, newest first (default 0).
    #[serde(default)]
    pub offset: Option<u32>,
}

/// One audit-log row about an event.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct AuditOut {
    pub stage: String,
    pub outcome: String,
    /// Failed executions before this one (0 for a first run).
    pub attempt: i64,
    /// RFC 3339, microseconds.
    pub at: String,
    /// What the stage recorded (error text, target answer, conflicts…).
    pub detail: Option<Value>,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct EventOut {
    pub event_id: String,
    /// Position in the record's history (1-based).
    pub sequence_num: i64,
    pub source: String,
    /// The event's own timestamp (RFC 3339, microseconds).
    pub timestamp: String,
    pub base_version: i64,
    /// Field → new value (`null` clears it).
    pub changes: Value,
    pub full_snapshot_ref: Option<String>,
    /// docs/spec.md §3.2 fingerprint.
    pub fingerprint: Option<String>,
    /// When the daemon stored it.
    pub stored_at: String,
    pub audit: Vec<AuditOut>,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct QueryEventsOutput {
    pub record_type: String,
    pub record_id: String,
    /// Events matching the filters, in all pages.
    pub total_count: i64,
    /// More matching events follow: call again with `offset + limit`.
    pub has_more: bool,
    pub offset: u32,
    pub limit: u32,
    /// Newest first.
    pub events: Vec<EventOut>,
}

impl Ctx {
    pub async fn query_events(&self, i: QueryEventsInput) -> Result<QueryEventsOutput, ToolError> {
        i.record.check()?;
        let limit = i.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(ToolError::Invalid(format!(
                "limit must be between 1 and {MAX_LIMIT}, got {limit}"
            )));
        }
        let offset = i.offset.unwrap_or(0);
        if let Some(o) = &i.outcome {
            if !catalog::is_outcome(o) {
                return Err(ToolError::Invalid(format!(
                    "outcome {o:?} is not one the daemon writes; use one of: {}",
                    catalog::names(catalog::OUTCOMES)
                )));
            }
        }
        let (since, until) = (
            parse_time("since", &i.since)?,
            parse_time("until", &i.until)?,
        );
        let source = i.source.map(|s| s.source());
        let filter = EventFilter {
            source: source.map(|s| s.as_str()),
            outcome: i.outcome.as_deref(),
            since: since.as_ref(),
            until: until.as_ref(),
            keyword: i.keyword.as_deref().filter(|k| !k.is_empty()),
            limit: i64::from(limit),
            offset: i64::from(offset),
        };
        let record = (i.record.record_type.as_str(), i.record.record_id.as_str());
        let (events, total) = self
            .store
            .timed(self.store.filtered_events(record, &filter))
            .await?;
        if total == 0 {
            let any = EventFilter {
                limit: 1,
                ..Default::default()
            };
            let (_, all) = self
                .store
                .timed(self.store.filtered_events(record, &any))
                .await?;
            if all == 0 {
                return Err(ToolError::NotFound(format!(
                    "{} has no events (check record_type and record_id; list_event_types shows the types stored)",
                    i.record.key()
                )));
            }
        }
        let mut reader = self.store.history_reader().await?;
        let entries = history::attach_audit(&mut reader, record, events).await?;
        drop(reader);
        let events: Vec<EventOut> = entries
            .into_iter()
            .map(|e| EventOut {
                event_id: e.event.id,
                sequence_num: e.event.sequence_num,
                source: e.event.source,
                timestamp: e.event.timestamp,
                base_version: e.event.base_version,
                changes: e.event.changes,
                full_snapshot_ref: e.event.full_snapshot_ref,
                fingerprint: e.fingerprint,
                stored_at: e.event.created_at,
                audit: e
                    .audit
                    .into_iter()
                    .map(|a| AuditOut {
                        stage: a.stage,
                        outcome: a.outcome,
                        attempt: a.attempt,
                        at: a.created_at,
                        detail: a.detail,
                    })
                    .collect(),
            })
            .collect();
        Ok(QueryEventsOutput {
            record_type: i.record.record_type,
            record_id: i.record.record_id,
            total_count: total,
            has_more: i64::from(offset) + (events.len() as i64) < total,
            offset,
            limit,
            events,
        })
    }
}

// ---------------------------------------------------------------------------
// replay_events

#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct ReplayEventsInput {
    #[serde(flatten)]
    pub record: RecordRef,
    /// Stop after this sequence number (1 or more); the whole history when absent.
    #[serde(default)]
    pub to_sequence_num: Option<i64>,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ReplayEventsOutput {
    pub record_type: String,
    pub record_id: String,
    /// The bound asked for; null means the latest event.
    pub to_sequence_num: Option<i64>,
    /// Sequence number of the last event folded.
    pub last_sequence_num: i64,
    /// The record's merged version at that point.
    pub version: i64,
    pub events_replayed: usize,
    /// Reading plus folding, in milliseconds.
    pub duration_ms: f64,
    /// Field → value at that point.
    pub state: Value,
    /// Field → {value, version, source, timestamp} of its last change.
    pub fields: Value,
}

impl Ctx {
    pub async fn replay_events(
        &self,
        i: ReplayEventsInput,
    ) -> Result<ReplayEventsOutput, ToolError> {
        i.record.check()?;
        if i.to_sequence_num.is_some_and(|s| s < 1) {
            return Err(ToolError::Invalid(
                "to_sequence_num must be 1 or more".into(),
            ));
        }
        let r = history::replay(
            &self.store,
            &self.policy,
            &i.record.record_type,
            &i.record.record_id,
            i.to_sequence_num,
        )
        .await?;
        if r.events_replayed == 0 {
            return Err(ToolError::NotFound(format!(
                "{} has no events (check record_type and record_id; list_event_types shows the types stored)",
                i.record.key()
            )));
        }
        let v = r.view();
        Ok(ReplayEventsOutput {
            record_type: r.record_type.clone(),
            record_id: r.record_id.clone(),
            to_sequence_num: r.to_seq,
            last_sequence_num: r.last_seq,
            version: r.state.version,
            events_replayed: r.events_replayed,
            duration_ms: v.elapsed_ms,
            state: Value::Object(v.state),
            fields: serde_json::to_value(v.fields).unwrap_or(Value::Null),
        })
    }
}

// ---------------------------------------------------------------------------
// explain_field

#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct ExplainFieldInput {
    #[serde(flatten)]
    pub record: RecordRef,
    /// Only this field; every field of the record when absent.
    #[serde(default)]
    pub field: Option<String>,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ExplainFieldOutput {
    pub record_type: String,
    pub record_id: String,
    pub version: i64,
    pub last_seq: i64,
    /// Events in the record's history.
    pub events: usize,
    /// Events waiting for an earlier version (not part of any value yet).
    pub pending: i64,
    /// The merge policy the history was replayed with.
    pub policy: Value,
    /// Field → {value, set_by (the event that set it), conflicts (winner,
    /// loser, rule, why), delivery per target (status, delivered, last_attempt)}.
    pub fields: Value,
    /// Disagreements between the replay and what is stored (empty when none).
    pub warnings: Vec<String>,
}

impl Ctx {
    pub async fn explain_field(
        &self,
        i: ExplainFieldInput,
    ) -> Result<ExplainFieldOutput, ToolError> {
        i.record.check()?;
        let x = explain::explain_record(
            &self.store,
            &self.policy,
            &i.record.record_type,
            &i.record.record_id,
            i.field.as_deref(),
        )
        .await?;
        Ok(ExplainFieldOutput {
            record_type: x.record_type,
            record_id: x.record_id,
            version: x.version,
            last_seq: x.last_seq,
            events: x.events,
            pending: x.pending,
            policy: serde_json::to_value(&x.policy).unwrap_or(Value::Null),
            fields: serde_json::to_value(&x.fields).unwrap_or(Value::Null),
            warnings: x.warnings,
        })
    }
}

// ---------------------------------------------------------------------------
// list_event_types

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct FieldSeen {
    pub name: String,
    /// How many of the sampled records have it.
    pub records: i64,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct RecordTypeOut {
    pub record_type: String,
    /// Records with a merged state.
    pub records: i64,
    /// Events stored, all sources.
    pub events: i64,
    /// Events per source.
    pub sources: BTreeMap<String, i64>,
    /// Fields in the merged state of the sampled records.
    pub fields: Vec<FieldSeen>,
    /// Records read for `fields` (at most 500).
    pub sampled_records: i64,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ListEventTypesOutput {
    pub record_types: Vec<RecordTypeOut>,
    /// The sources (and delivery targets) the daemon knows.
    pub sources: Vec<String>,
    /// Audit outcomes the daemon writes (query_events' `outcome` filter).
    pub outcomes: Vec<Term>,
    /// Dead-letter reasons (list_dead_letters' `reason` filter).
    pub dead_letter_reasons: Vec<Term>,
    /// Stages a dead letter can be parked for (list_dead_letters' `stage` filter).
    pub dead_letter_stages: Vec<String>,
}

impl Ctx {
    pub async fn list_event_types(&self) -> Result<ListEventTypesOutput, ToolError> {
        let (counts, records) = self.store.timed(self.store.type_catalogue()).await?;
        let mut types: BTreeMap<String, RecordTypeOut> = BTreeMap::new();
        for c in counts {
            let t = types
                .entry(c.record_type.clone())
                .or_insert_with(|| RecordTypeOut {
                    record_type: c.record_type.clone(),
                    records: records.get(&c.record_type).copied().unwrap_or(0),
                    events: 0,
                    sources: BTreeMap::new(),
                    fields: Vec::new(),
                    sampled_records: 0,
                });
            t.events += c.events;
            *t.sources.entry(c.source).or_insert(0) += c.events;
        }
        for t in types.values_mut() {
            let (fields, sampled) = self
                .store
                .timed(self.store.fields_of_type(&t.record_type, FIELD_SAMPLE))
                .await?;
            t.fields = fields
                .into_iter()
                .map(|(name, records)| FieldSeen { name, records })
                .collect();
            t.sampled_records = sampled;
        }
        Ok(ListEventTypesOutput {
            record_types: types.into_values().collect(),
            sources: [Source::Netsuite, Source::Suitex]
                .iter()
                .map(|s| s.as_str().to_string())
                .collect(),
            outcomes: catalog::OUTCOMES.to_vec(),
            dead_letter_reasons: catalog::DEAD_REASONS.to_vec(),
            dead_letter_stages: catalog::DEAD_LETTER_STAGES
                .iter()
                .map(|s| s.to_string())
                .collect(),
        })
    }
}

// ---------------------------------------------------------------------------
// dead letters

/// The stages a dead letter is parked for.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
pub enum StageArg {
    #[serde(rename = "merge")]
    Merge,
    #[serde(rename = "deliver.netsuite")]
    DeliverNetsuite,
    #[serde(rename = "deliver.suitex")]
    DeliverSuitex,
    /// An error envelope the retry router could not route.
    #[serde(rename = "retry")]
    Retry,
    /// A broker dead letter from a subscription the park stage does not know.
    #[serde(rename = "unknown")]
    Unknown,
}

impl StageArg {
    fn as_str(self) -> &'static str {
        match self {
            StageArg::Merge => "merge",
            StageArg::DeliverNetsuite => "deliver.netsuite",
            StageArg::DeliverSuitex => "deliver.suitex",
            StageArg::Retry => "retry",
            StageArg::Unknown => "unknown",
        }
    }
}

/// Why a message was dead-lettered.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReasonArg {
    Invalid,
    Permanent,
    Exhausted,
    Gap,
}

impl ReasonArg {
    fn as_str(self) -> &'static str {
        match self {
            ReasonArg::Invalid => "invalid",
            ReasonArg::Permanent => "permanent",
            ReasonArg::Exhausted => "exhausted",
            ReasonArg::Gap => "gap",
        }
    }
}

/// Which dead letters (the filters of `dlq list`).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
pub struct DlqFilters {
    /// Only these row ids.
    #[serde(default)]
    pub ids: Vec<i64>,
    #[serde(default)]
    pub stage: Option<StageArg>,
    #[serde(default)]
    pub record_type: Option<String>,
    #[serde(default)]
    pub record_id: Option<String>,
    #[serde(default)]
    pub reason: Option<ReasonArg>,
}

impl DlqFilters {
    fn filter(&self, include_replayed: bool) -> Result<DlqFilter, ToolError> {
        if let Some(t) = &self.record_type {
            raw_event::check_record_type(t)
                .map_err(|e| ToolError::Invalid(format!("record_type {t:?}: {}", e.reason)))?;
        }
        Ok(DlqFilter {
            ids: self.ids.clone(),
            stage: self.stage.map(|s| s.as_str().to_owned()),
            record_type: self.record_type.clone(),
            record_id: self.record_id.clone(),
            reason: self.reason.map(|r| r.as_str().to_owned()),
            include_replayed,
            ..Default::default()
        })
    }
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct ListDeadLettersInput {
    #[serde(flatten)]
    pub filters: DlqFilters,
    /// Include rows already replayed (default: pending ones only).
    #[serde(default)]
    pub include_replayed: bool,
    /// Rows at most, 1-1000 (default 100), oldest first.
    #[serde(default)]
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct DeadLetterOut {
    pub id: i64,
    pub stage: String,
    pub reason: String,
    pub attempts: i32,
    pub record_type: Option<String>,
    pub record_id: Option<String>,
    pub fingerprint: Option<String>,
    pub last_error: Option<String>,
    pub parked_at: String,
    pub replay_count: i32,
    /// Null while pending.
    pub replayed_at: Option<String>,
    pub source_subscription: Option<String>,
}

impl From<&DeadLetter> for DeadLetterOut {
    fn from(d: &DeadLetter) -> Self {
        DeadLetterOut {
            id: d.id,
            stage: d.stage.clone(),
            reason: d.reason.clone(),
            attempts: d.attempts,
            record_type: d.record_type.clone(),
            record_id: d.record_id.clone(),
            fingerprint: d.fingerprint.clone(),
            last_error: d.last_error.clone(),
            parked_at: d.parked_at.clone(),
            replay_count: d.replay_count,
            replayed_at: d.replayed_at.clone(),
            source_subscription: d.source_subscription.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ListDeadLettersOutput {
    /// Parked and not replayed, whatever the filters.
    pub pending_total: i64,
    pub count: usize,
    pub dead_letters: Vec<DeadLetterOut>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct ShowDeadLetterInput {
    /// The row id (list_dead_letters' `id`).
    pub id: i64,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ShowDeadLetterOutput {
    #[serde(flatten)]
    pub summary: DeadLetterOut,
    /// Every error recorded, oldest first.
    pub errors: Vec<String>,
    pub attributes: BTreeMap<String, String>,
    pub ordering_key: Option<String>,
    pub dlq_message_id: String,
    pub origin_message_id: Option<String>,
    /// The message data as text (null when it is not UTF-8: see data_hex).
    pub data: Option<String>,
    /// The data parsed, when it is JSON.
    pub data_json: Option<Value>,
    pub data_hex: Option<String>,
}

impl Ctx {
    pub async fn list_dead_letters(
        &self,
        i: ListDeadLettersInput,
    ) -> Result<ListDeadLettersOutput, ToolError> {
        let limit = i.limit.unwrap_or(DEFAULT_DLQ_LIMIT);
        if !(1..=MAX_DLQ_LIMIT).contains(&limit) {
            return Err(ToolError::Invalid(format!(
                "limit must be between 1 and {MAX_DLQ_LIMIT}, got {limit}"
            )));
        }
        let f = i.filters.filter(i.include_replayed)?;
        let rows = self
            .store
            .timed(self.store.dead_letter_page(&f, None, i64::from(limit)))
            .await?;
        let pending_total = self.store.timed(self.store.pending_dead_letters()).await?;
        let dead_letters: Vec<DeadLetterOut> = rows.iter().map(DeadLetterOut::from).collect();
        Ok(ListDeadLettersOutput {
            pending_total,
            count: dead_letters.len(),
            dead_letters,
        })
    }

    pub async fn show_dead_letter(
        &self,
        i: ShowDeadLetterInput,
    ) -> Result<ShowDeadLetterOutput, ToolError> {
        let Some(d) = self.store.timed(self.store.dead_letter(i.id)).await? else {
            return Err(ToolError::NotFound(format!(
                "no dead letter with id {} (list_dead_letters shows the ids)",
                i.id
            )));
        };
        let text = std::str::from_utf8(&d.data).ok().map(str::to_owned);
        Ok(ShowDeadLetterOutput {
            summary: DeadLetterOut::from(&d),
            errors: d.errors.clone(),
            attributes: d.attributes.clone().into_iter().collect(),
            ordering_key: d.ordering_key.clone(),
            dlq_message_id: d.dlq_message_id.clone(),
            origin_message_id: d.origin_message_id.clone(),
            data_json: text.as_deref().and_then(|t| serde_json::from_str(t).ok()),
            data_hex: text.is_none().then(|| hex::encode(&d.data)),
            data: text,
        })
    }
}

// ---------------------------------------------------------------------------
// replay_dead_letters (write)

#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct ReplayDeadLettersInput {
    #[serde(flatten)]
    pub filters: DlqFilters,
    /// Republish for real. Without it (the default) nothing is published:
    /// the answer lists what would be replayed.
    #[serde(default)]
    pub confirm: bool,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ReplayFailure {
    pub id: i64,
    pub error: String,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ReplayDeadLettersOutput {
    /// True when nothing was published (no `confirm: true`).
    pub dry_run: bool,
    /// Rows republished to the error topic (attempt=0, replay=true), or, in
    /// a dry run, the rows that would be.
    pub replayed: Vec<i64>,
    /// Rows another replay had claimed.
    pub skipped: Vec<i64>,
    /// Rows whose publish failed (left pending).
    pub failed: Vec<ReplayFailure>,
    /// In words, what happened and what to do next.
    pub message: String,
}

impl Ctx {
    /// The rows a replay with `f` covers (at most [`dlq::MAX_BATCH`]), page
    /// by page and without their data.
    async fn dead_letter_heads(
        &self,
        f: &crate::store::dead_letters::DlqFilter,
    ) -> Result<Vec<crate::store::dead_letters::DeadLetter>, ToolError> {
        let mut rows = Vec::new();
        let mut after = None;
        while (rows.len() as i64) < dlq::MAX_BATCH {
            let limit = dlq::PAGE.min(dlq::MAX_BATCH - rows.len() as i64);
            let page = self
                .store
                .timed(self.store.dead_letter_page(f, after, limit))
                .await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            rows.extend(page.into_iter().map(|mut d| {
                // Only what the audit rows need.
                d.attributes.clear();
                d.errors.clear();
                d
            }));
        }
        Ok(rows)
    }

    pub async fn replay_dead_letters(
        &self,
        i: ReplayDeadLettersInput,
    ) -> Result<ReplayDeadLettersOutput, ToolError> {
        if !self.settings.mcp.allow_replay {
            return Err(ToolError::Disabled(
                "replay_dead_letters is off on this server (set mcp.allow_replay = true)".into(),
            ));
        }
        let f = i.filters.filter(false)?;
        if !i.confirm {
            let ids: Vec<i64> = self
                .dead_letter_heads(&f)
                .await?
                .into_iter()
                .map(|d| d.id)
                .collect();
            return Ok(ReplayDeadLettersOutput {
                dry_run: true,
                message: format!(
                    "dry run: nothing was published. {} dead letter(s) would be replayed; \
                     call replay_dead_letters again with the same filters and confirm: true to replay them.",
                    ids.len()
                ),
                replayed: ids,
                skipped: Vec::new(),
                failed: Vec::new(),
            });
        }
        let publishers = self.publishers().await?;
        let rows_before = self.dead_letter_heads(&f).await?;
        let report =
            dlq::replay_by(&self.store, &publishers, &f, false, self.transport.caller()).await?;
        publishers.flush().await;
        let caller = self.transport.caller();
        tracing::info!(
            caller,
            replayed = ?report.replayed,
            failed = report.failed.len(),
            "Dead letters were replayed through MCP."
        );
        for dl in rows_before
            .iter()
            .filter(|d| report.replayed.contains(&d.id))
        {
            // A message that never parsed has no fingerprint: its bytes'
            // (the park stage records one, so this read is rare).
            let fp = match &dl.fingerprint {
                Some(fp) => fp.clone(),
                None => match self.store.timed(self.store.dead_letter(dl.id)).await {
                    Ok(Some(full)) => fingerprint_bytes(&full.data),
                    _ => String::new(),
                },
            };
            let row = AuditRow {
                event_id: None,
                fingerprint: fp,
                record_type: dl.record_type.clone(),
                record_id: dl.record_id.clone(),
                stage: AUDIT_STAGE.into(),
                outcome: "dlq_replayed".into(),
                detail: Some(
                    json!({"caller": caller, "dead_letter_id": dl.id, "stage": dl.stage})
                        .to_string(),
                ),
                message_id: None,
                attempt: 0,
                claim: false,
            };
            if let Err(e) = self.store.record_audit(row).await {
                tracing::warn!(error = %e, id = dl.id, "The audit row of an MCP replay could not be written.");
            }
        }
        Ok(ReplayDeadLettersOutput {
            dry_run: false,
            message: format!(
                "replayed {} dead letter(s) to the error topic; {} skipped (claimed by another replay), {} failed. \
                 A replayed message that fails again is parked again (its replay_count grows).",
                report.replayed.len(),
                report.skipped.len(),
                report.failed.len()
            ),
            replayed: report.replayed,
            skipped: report.skipped,
            failed: report
                .failed
                .into_iter()
                .map(|(id, error)| ReplayFailure { id, error })
                .collect(),
        })
    }
}

// ---------------------------------------------------------------------------
// emit_event (write)

#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct EmitEventInput {
    /// The raw event of docs/spec.md §3.1: {"record_type", "record_id", "source"
    /// ("suitex" | "netsuite"), "timestamp" (RFC 3339), "base_version"
    /// (the merged version the source last saw), "changes" (field → value),
    /// optional "id" (UUID) and "full_snapshot_ref"}.
    pub event: Value,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct EmitEventOutput {
    /// The broker's message id.
    pub message_id: String,
    pub topic: String,
    /// `{record_type}:{record_id}`.
    pub ordering_key: String,
    /// docs/spec.md §3.2 fingerprint of the event (over the changes as given).
    pub fingerprint: String,
    /// query_events on this record shows it once merged.
    pub record_type: String,
    pub record_id: String,
}

impl Ctx {
    pub async fn emit_event(&self, i: EmitEventInput) -> Result<EmitEventOutput, ToolError> {
        if !self.settings.mcp.allow_emit {
            return Err(ToolError::Disabled(
                "emit_event is off on this server (set mcp.allow_emit = true)".into(),
            ));
        }
        let data =
            serde_json::to_vec(&i.event).map_err(|e| ToolError::Invalid(format!("event: {e}")))?;
        let ev = parse_raw_event(&data).map_err(|e| ToolError::Invalid(e.to_string()))?;
        let ordering_key = ev.ordering_key();
        let fp = fingerprint(&ev, &ev.changes);
        let publishers = self.publishers().await?;
        let message_id = publishers
            .publish_to(
                TopicKind::Raw,
                Bytes::from(data),
                Default::default(),
                &ordering_key,
            )
            .await
            .map_err(|e| ToolError::Failed(e.to_string()))?;
        let caller = self.transport.caller();
        tracing::info!(
            caller,
            message_id = %message_id,
            ordering_key = %ordering_key,
            fingerprint = %fp,
            "A raw event was published through MCP."
        );
        let row = AuditRow {
            event_id: None,
            fingerprint: fp.clone(),
            record_type: Some(ev.record_type.clone()),
            record_id: Some(ev.record_id.clone()),
            stage: AUDIT_STAGE.into(),
            outcome: "emitted".into(),
            detail: Some(json!({"caller": caller, "topic": TopicKind::Raw.as_str()}).to_string()),
            message_id: Some(message_id.clone()),
            attempt: 0,
            claim: false,
        };
        if let Err(e) = self.store.record_audit(row).await {
            tracing::warn!(error = %e, message_id = %message_id, "The audit row of an MCP emit could not be written.");
        }
        Ok(EmitEventOutput {
            message_id,
            topic: self.settings.topology().topic_id(TopicKind::Raw),
            ordering_key,
            fingerprint: fp,
            record_type: ev.record_type,
            record_id: ev.record_id,
        })
    }
}
