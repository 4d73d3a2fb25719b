//! The merged event (docs/spec.md §3.3), published on `events.merged.{env}`.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::model::raw_event::Source;
use crate::model::rules::Conflict;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MergedEvent {
    pub event_id: String,
    pub fingerprint: String,
    pub record_type: String,
    pub record_id: String,
    pub origin: Source,
    pub version: i64,
    pub base_version: i64,
    /// RFC 3339, UTC, six fractional digits.
    pub timestamp: String,
    pub applied: Map<String, Value>,
    pub conflicts: Vec<Conflict>,
    /// Set instead of `applied`/`conflicts` content when the payload was too
    /// big for a message (claim check); consumers resolve it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_snapshot_ref: Option<String>,
}

impl MergedEvent {
    pub fn ordering_key(&self) -> String {
        crate::model::raw_event::ordering_key(&self.record_type, &self.record_id)
    }

    /// Message attributes (docs/spec.md §3.3).
    pub fn attributes(&self) -> HashMap<String, String> {
        HashMap::from([
            ("origin".to_string(), self.origin.as_str().to_string()),
            ("record_type".to_string(), self.record_type.clone()),
            ("record_id".to_string(), self.record_id.clone()),
            ("version".to_string(), self.version.to_string()),
            ("fingerprint".to_string(), self.fingerprint.clone()),
        ])
    }
}
