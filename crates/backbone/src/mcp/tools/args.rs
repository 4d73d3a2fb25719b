//! The argument shapes several tools share: a record, a source, a
//! timestamp, and the dead-letter filters. Each names a bad value in its
//! error rather than turning it into an empty answer.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::error::ToolError;
use crate::model::raw_event::{self, Source};
use crate::store::dead_letters::DlqFilter;

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
    pub(super) fn check(&self) -> Result<(), ToolError> {
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

    pub(super) fn key(&self) -> String {
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
    pub(super) fn source(self) -> Source {
        match self {
            SourceArg::Suitex => Source::Suitex,
            SourceArg::Netsuite => Source::Netsuite,
        }
    }
}

pub(super) fn parse_time(
    name: &str,
    v: &Option<String>,
) -> Result<Option<DateTime<Utc>>, ToolError> {
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
    pub(super) fn filter(&self, include_replayed: bool) -> Result<DlqFilter, ToolError> {
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
