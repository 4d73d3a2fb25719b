//! `list_event_types`: the record types stored, with counts and the fields
//! seen, and the vocabulary of outcomes and dead-letter reasons.

use std::collections::BTreeMap;

use rmcp::{tool, tool_router, Json};
use schemars::JsonSchema;
use serde::Serialize;

use super::error::ToolError;
use super::{err, McpServer};
use crate::mcp::catalog::{self, Term};
use crate::mcp::Ctx;
use crate::model::raw_event::Source;

/// Records whose merged state `list_event_types` reads per type for field names.
pub const FIELD_SAMPLE: i64 = 500;

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
            sources: Source::ALL.iter().map(|s| s.as_str().to_string()).collect(),
            outcomes: catalog::OUTCOMES.to_vec(),
            dead_letter_reasons: catalog::DEAD_REASONS.to_vec(),
            dead_letter_stages: catalog::DEAD_LETTER_STAGES
                .iter()
                .map(|s| s.to_string())
                .collect(),
        })
    }
}

#[tool_router(router = list_event_types_tool, vis = "pub(super)")]
impl McpServer {
    #[tool(
        description = "The record types the store holds, with record and event counts per \
source and the fields seen in their merged state (a sample of up to 500 records per type); and the \
vocabulary: the audit outcomes and dead-letter reasons the daemon writes, each with one line on \
what it means. Counts scan the tables: call it once per conversation, not per question.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn list_event_types(&self) -> Result<Json<ListEventTypesOutput>, String> {
        self.ctx.list_event_types().await.map(Json).map_err(err)
    }
}
