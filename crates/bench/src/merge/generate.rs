//! The generated workload: per-record histories with conflicts and
//! duplicates, and the percentile the reports use.

use chrono::{TimeZone, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use backbone::model::raw_event::Source;

/// One generated raw event and whether it is sent twice.
pub(crate) struct Gen {
    pub(crate) id: uuid::Uuid,
    /// The ordering key.
    pub(crate) key: String,
    pub(crate) json: String,
    pub(crate) duplicate: bool,
}

/// Per-record histories: base versions follow the merged version, some
/// events are stale (conflicts), some are sent twice (duplicates).
pub(crate) fn generate(n: usize, records: usize, dup: f64, conflict: f64, seed: u64) -> Vec<Gen> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut version = vec![0i64; records];
    let t0 = Utc
        .with_ymd_and_hms(2026, 3, 13, 0, 0, 0)
        .single()
        .unwrap_or_else(Utc::now);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let r = i % records;
        let stale = version[r] > 0 && rng.random_bool(conflict);
        let base = if stale { version[r] - 1 } else { version[r] };
        let source = if (i / records + usize::from(stale)).is_multiple_of(2) {
            Source::Suitex
        } else {
            Source::Netsuite
        };
        // A stale event touches the field the last event changed.
        let field = if stale {
            format!("f{}", (version[r] - 1) % 8)
        } else {
            format!("f{}", version[r] % 8)
        };
        let ts = t0 + chrono::Duration::microseconds(i as i64 * 1_000 + 123);
        let id = uuid::Uuid::now_v7();
        let json = json!({
            "id": id.to_string(), "source": source.as_str(), "record_type": "bench",
            "record_id": format!("r{r}"), "base_version": base,
            "timestamp": backbone::model::fingerprint::format_timestamp(&ts),
            "changes": {field: format!("v{i}"), "n": i},
        })
        .to_string();
        // Later timestamps win, so every event applies something: version grows.
        version[r] += 1;
        out.push(Gen {
            id,
            key: format!("bench:r{r}"),
            json,
            duplicate: rng.random_bool(dup),
        });
    }
    out
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}
