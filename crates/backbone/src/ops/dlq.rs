//! Dead letters as an operator sees them (docs/spec.md §7.1): a selection
//! (ids, or a filter: target or stage, reason, record, time range, status,
//! or a group = stage + reason + normalised message), listed, previewed,
//! replayed (paced by the targets' limiters as every delivery) or
//! discarded with a reason.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{check_reason, Actor, OpsError};
use crate::dlq::{ReplayReport, MAX_BATCH, PAGE};
use crate::pubsub::publisher::Publishers;
use crate::store::dead_letters::{DeadLetter, DlqFilter};
use crate::store::dlq_status::{DlqStatus, SentAndAnswer};
use crate::store::Store;

/// Which dead letters an action covers. Empty: every parked one.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Selection {
    #[serde(default)]
    pub ids: Vec<i64>,
    /// `merge`, `deliver.netsuite`, …
    pub stage: Option<String>,
    /// A delivery target (`netsuite`, `suitex`): the stage `deliver.<target>`.
    pub target: Option<String>,
    pub reason: Option<String>,
    pub record_type: Option<String>,
    pub record_id: Option<String>,
    /// Parked at or after / before (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// An issue: [`group_key`] of stage, reason and normalised message.
    pub group: Option<String>,
    /// Listing only: this status instead of `parked` (replays and previews
    /// always select parked rows).
    pub status: Option<String>,
    /// Listing only: every status.
    #[serde(default)]
    pub all: bool,
}

impl Selection {
    fn filter(&self, parked_only: bool) -> Result<DlqFilter, OpsError> {
        let stage = match (&self.stage, &self.target) {
            (Some(_), Some(_)) => {
                return Err(OpsError::Invalid(
                    "give a stage or a target, not both".into(),
                ))
            }
            (Some(s), None) => Some(s.clone()),
            (None, Some(t)) => {
                let t: crate::model::raw_event::Source =
                    t.parse()
                        .map_err(|e: crate::model::raw_event::UnknownSource| {
                            OpsError::Invalid(e.to_string())
                        })?;
                Some(crate::stages::deliver::stage_name(t).to_string())
            }
            (None, None) => None,
        };
        if let Some(s) = &self.status {
            if DlqStatus::parse(s).is_none() {
                return Err(OpsError::Invalid(format!(
                    "unknown status {s:?} (parked, replayed, superseded, discarded)"
                )));
            }
        }
        Ok(DlqFilter {
            ids: self.ids.clone(),
            stage,
            record_type: self.record_type.clone(),
            record_id: self.record_id.clone(),
            reason: self.reason.clone(),
            include_replayed: !parked_only && self.all,
            status: if parked_only {
                Some(DlqStatus::Parked.as_str().into())
            } else {
                self.status.clone()
            },
            since: self.since,
            until: self.until,
        })
    }
}

/// A dead letter in a listing, with the issue it belongs to.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    #[serde(flatten)]
    pub dead_letter: DeadLetter,
    pub group: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ListReport {
    pub rows: Vec<Row>,
    /// Page on with this as `after_id`; `None` at the end.
    pub next_after_id: Option<i64>,
    /// Parked dead letters in all (what the alerts count).
    pub parked_total: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ShowReport {
    pub dead_letter: DeadLetter,
    pub group: String,
    /// The message data: text, or `{"hex": …}`.
    pub data: serde_json::Value,
    /// For a delivery: the body sent and the target's answer.
    pub sent: SentAndAnswer,
}

/// One issue of a preview.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct GroupSummary {
    pub group: String,
    pub stage: String,
    pub reason: String,
    /// The normalised message the group shares.
    pub message: String,
    pub count: i64,
    pub first_seen: String,
    pub last_seen: String,
    pub records: i64,
}

/// What a replay of a selection would cover.
#[derive(Debug, Clone, Default, Serialize, schemars::JsonSchema)]
pub struct PreviewReport {
    pub count: i64,
    /// The ids, in order (at most 10,000: what one replay takes).
    pub ids: Vec<i64>,
    /// Distinct records affected, and the first 100 of them (`type:id`).
    pub records_total: i64,
    pub records: Vec<String>,
    /// Dead letters per stage (a delivery's stage names its target).
    pub stages: BTreeMap<String, i64>,
    pub reasons: BTreeMap<String, i64>,
    pub groups: Vec<GroupSummary>,
    /// More rows match than one replay takes.
    pub truncated: bool,
}

/// A status change over a set of ids.
#[derive(Debug, Clone, Default, Serialize, schemars::JsonSchema)]
pub struct StatusReport {
    pub status: String,
    pub changed: Vec<i64>,
    /// Ids not changed, with why (their status, or `not found`).
    pub unchanged: Vec<(i64, String)>,
}

/// What a replay did (or, dry, would do), with the preview of its selection.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayOutcome {
    pub dry_run: bool,
    pub preview: PreviewReport,
    pub replayed: Vec<i64>,
    pub skipped: Vec<i64>,
    pub failed: Vec<(i64, String)>,
}

/// The issue a dead letter belongs to: stage, reason and its last error
/// with numbers, ids and quoted values folded away.
pub fn group_key(stage: &str, reason: &str, last_error: Option<&str>) -> String {
    let msg = normalise(last_error.unwrap_or(""));
    let digest =
        crate::model::fingerprint::sha256_hex(format!("{stage}\n{reason}\n{msg}").as_bytes());
    digest[..12].to_string()
}

/// A message without what differs between two occurrences of one problem.
pub fn normalise(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len().min(200));
    for word in msg.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        // Ids, digests and uuids, with any punctuation around them kept.
        let core = word.trim_matches(|c: char| !c.is_ascii_alphanumeric());
        let hexish = core.len() >= 12
            && core.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
            && core.chars().any(|c| c.is_ascii_digit());
        if hexish {
            out.push_str(&word.replacen(core, "…", 1));
            continue;
        }
        let mut last_digit = false;
        for c in word.chars() {
            if c.is_ascii_digit() {
                if !last_digit {
                    out.push('#');
                }
                last_digit = true;
            } else {
                out.push(c);
                last_digit = false;
            }
        }
        if out.chars().count() >= 160 {
            break;
        }
    }
    out.chars().take(160).collect()
}

fn group_of(d: &DeadLetter) -> String {
    group_key(&d.stage, &d.reason, d.last_error.as_deref())
}

/// The rows `sel` selects, paged without their data, at most `max`.
async fn select(
    store: &Store,
    sel: &Selection,
    parked_only: bool,
    after_id: Option<i64>,
    max: i64,
) -> Result<(Vec<DeadLetter>, bool), OpsError> {
    let f = sel.filter(parked_only)?;
    let mut out = Vec::new();
    let mut after = after_id;
    loop {
        let page = store.dead_letter_page(&f, after, PAGE).await?;
        let Some(last) = page.last() else {
            return Ok((out, false));
        };
        after = Some(last.id);
        for d in page {
            if sel.group.as_ref().is_some_and(|g| *g != group_of(&d)) {
                continue;
            }
            if out.len() as i64 >= max {
                return Ok((out, true));
            }
            out.push(d);
        }
    }
}

pub async fn list(
    store: &Store,
    sel: &Selection,
    limit: i64,
    after_id: Option<i64>,
) -> Result<ListReport, OpsError> {
    let limit = limit.clamp(1, MAX_BATCH);
    let (rows, more) = select(store, sel, false, after_id, limit).await?;
    let next_after_id = if more {
        rows.last().map(|r| r.id)
    } else {
        None
    };
    Ok(ListReport {
        rows: rows
            .into_iter()
            .map(|d| Row {
                group: group_of(&d),
                dead_letter: d,
            })
            .collect(),
        next_after_id,
        parked_total: store.pending_dead_letters().await?,
    })
}

pub async fn show(store: &Store, id: i64) -> Result<ShowReport, OpsError> {
    let d = store
        .dead_letter(id)
        .await?
        .ok_or_else(|| OpsError::NotFound(format!("no dead letter with id {id}")))?;
    let data = match std::str::from_utf8(&d.data) {
        Ok(s) => serde_json::json!(s),
        Err(_) => serde_json::json!({"hex": hex::encode(&d.data)}),
    };
    let sent = store.dead_letter_sent(id).await?;
    Ok(ShowReport {
        group: group_of(&d),
        dead_letter: d,
        data,
        sent,
    })
}

pub async fn preview(store: &Store, sel: &Selection) -> Result<PreviewReport, OpsError> {
    let (rows, truncated) = select(store, sel, true, None, MAX_BATCH).await?;
    let mut p = PreviewReport {
        count: rows.len() as i64,
        truncated,
        ..Default::default()
    };
    let mut records = BTreeSet::new();
    let mut groups: BTreeMap<String, (GroupSummary, BTreeSet<String>)> = BTreeMap::new();
    for d in &rows {
        p.ids.push(d.id);
        *p.stages.entry(d.stage.clone()).or_default() += 1;
        *p.reasons.entry(d.reason.clone()).or_default() += 1;
        let record = format!(
            "{}:{}",
            d.record_type.as_deref().unwrap_or("-"),
            d.record_id.as_deref().unwrap_or("-")
        );
        records.insert(record.clone());
        let key = group_of(d);
        let (g, recs) = groups.entry(key.clone()).or_insert_with(|| {
            (
                GroupSummary {
                    group: key,
                    stage: d.stage.clone(),
                    reason: d.reason.clone(),
                    message: normalise(d.last_error.as_deref().unwrap_or("")),
                    count: 0,
                    first_seen: d.parked_at.clone(),
                    last_seen: d.parked_at.clone(),
                    records: 0,
                },
                BTreeSet::new(),
            )
        });
        g.count += 1;
        g.first_seen = g.first_seen.clone().min(d.parked_at.clone());
        g.last_seen = g.last_seen.clone().max(d.parked_at.clone());
        recs.insert(record);
    }
    p.records_total = records.len() as i64;
    p.records = records.into_iter().take(100).collect();
    p.groups = groups
        .into_values()
        .map(|(mut g, recs)| {
            g.records = recs.len() as i64;
            g
        })
        .collect();
    p.groups.sort_by_key(|g| std::cmp::Reverse(g.count));
    Ok(p)
}

/// Replays the parked rows `sel` selects (a dry run replays nothing): the
/// preview first, then each row claimed, republished and marked by `actor`.
pub async fn replay(
    store: &Store,
    publishers: &Publishers,
    sel: &Selection,
    actor: &Actor,
    dry_run: bool,
) -> Result<ReplayOutcome, OpsError> {
    let preview = preview(store, sel).await?;
    let report = if dry_run {
        ReplayReport {
            dry_run: true,
            replayed: preview.ids.clone(),
            ..Default::default()
        }
    } else {
        crate::dlq::replay_ids(store, publishers, &preview.ids, actor.as_str()).await?
    };
    Ok(ReplayOutcome {
        dry_run,
        preview,
        replayed: report.replayed,
        skipped: report.skipped,
        failed: report.failed,
    })
}

/// Marks parked rows `discarded` by `actor` with `reason`: kept, audited,
/// no longer counted by the alerts nor selected by replays.
pub async fn discard(
    store: &Store,
    ids: &[i64],
    actor: &Actor,
    reason: &str,
) -> Result<StatusReport, OpsError> {
    let reason = check_reason(reason)?;
    if ids.is_empty() {
        return Err(OpsError::Invalid("name at least one dead letter id".into()));
    }
    let changed = store
        .change_dead_letter_status(
            ids,
            &[DlqStatus::Parked],
            DlqStatus::Discarded,
            actor.as_str(),
            Some(reason),
        )
        .await?;
    let mut unchanged = Vec::new();
    for id in ids.iter().filter(|id| !changed.contains(id)) {
        let why = match store.dead_letter(*id).await? {
            Some(d) => format!("status is {}", d.status),
            None => "not found".into(),
        };
        unchanged.push((*id, why));
    }
    if let Ok(n) = store.pending_dead_letters().await {
        crate::metrics::set_dead_letters_parked(n);
    }
    Ok(StatusReport {
        status: DlqStatus::Discarded.as_str().into(),
        changed,
        unchanged,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_problem_on_two_records_is_one_group() {
        let a = group_key(
            "deliver.netsuite",
            "permanent",
            Some("netsuite answered HTTP 400 for record 1234 (id 9f86d081884c7d65)"),
        );
        let b = group_key(
            "deliver.netsuite",
            "permanent",
            Some("netsuite answered HTTP 400 for record 77 (id 0a1b2c3d4e5f6a7b)"),
        );
        assert_eq!(a, b);
        let other = group_key(
            "deliver.suitex",
            "permanent",
            Some("suitex answered HTTP 400"),
        );
        assert_ne!(a, other);
        assert_eq!(normalise("HTTP 503  after   12 s"), "HTTP # after # s");
    }
}
