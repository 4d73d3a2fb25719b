//! What of a candidate record may be archived now: every hold checked, the
//! range cut short before deliveries not acknowledged, its rows read and
//! folded from its checkpoint into the next one.

use super::segment::Part;
use super::{ArchiveError, Held, Options};
use crate::history::fold_each_from;
use crate::model::merged_event::MergedEvent;
use crate::model::raw_event::Source;
use crate::model::rules::{MergePolicy, RecordState};
use crate::stages::deliver::routing::{self, Route};
use crate::store::archive::{Candidate, Checkpoint, Coverage};
use crate::store::Store;

/// What of `c` may be archived now, read and folded into its checkpoint;
/// `None` (with the reason in `held`) when nothing may.
pub(super) async fn plan(
    store: &Store,
    policy: &MergePolicy,
    c: &Candidate,
    opts: &Options,
    held: &mut Vec<Held>,
) -> Result<Option<Part>, ArchiveError> {
    let (t, id) = (&c.key.0, &c.key.1);
    let from = c.covered_to + 1;
    if from > c.old_to_seq {
        return Ok(None);
    }
    let mut hold = |reason: String| {
        held.push(Held {
            record_type: t.clone(),
            record_id: id.clone(),
            reason,
        });
        Ok(None)
    };
    if let Some(reason) = hold_reason(c) {
        return hold(reason);
    }
    let to = before_unacked(store, c).await?;
    if to < from {
        return hold("deliveries not yet acknowledged".into());
    }
    let rows = store.archive_rows((t, id), from, to, &opts.cutoff).await?;
    let start = if c.covered_to == 0 {
        (RecordState::default(), 0)
    } else {
        match store.checkpoint(t, id).await? {
            Some(cp) if cp.sequence_num == c.covered_to => (cp.state, cp.sequence_num),
            other => {
                return Err(ArchiveError::Checkpoint {
                    record_type: t.clone(),
                    record_id: id.clone(),
                    covered_to: c.covered_to,
                    checkpoint: other.map(|c| c.sequence_num),
                })
            }
        }
    };
    let (state, last) = fold_each_from(start, &rows.events, policy, |_, _, _| {})?;
    if last != to {
        return Err(ArchiveError::Fold {
            record_type: t.clone(),
            record_id: id.clone(),
            from,
            to,
            last,
        });
    }
    Ok(Some(Part {
        coverage: Coverage {
            record_type: t.clone(),
            record_id: id.clone(),
            from_seq: from,
            to_seq: to,
            events: rows.events.len() as i64,
            audit: rows.audit.len() as i64,
            merged: rows.merged.len() as i64,
        },
        checkpoint: Checkpoint {
            record_type: t.clone(),
            record_id: id.clone(),
            sequence_num: to,
            state,
            segment_id: String::new(),
        },
        rows,
    }))
}

/// Why nothing of `c` may go now, if anything holds it whole.
fn hold_reason(c: &Candidate) -> Option<String> {
    if c.pending > 0 {
        return Some(format!("{} pending events (an open gap)", c.pending));
    }
    if c.unreplayed_dead_letters > 0 {
        return Some(format!(
            "{} dead letters not replayed",
            c.unreplayed_dead_letters
        ));
    }
    if c.outbox > 0 {
        return Some(format!("{} merged events not yet published", c.outbox));
    }
    if let Some((target, _)) = c.delivery.iter().find(|(_, (a, s))| s > a) {
        return Some(format!("a delivery to {target} is not acknowledged yet"));
    }
    None
}

/// The highest sequence of `c` that may go: per target, nothing from the
/// first merged event routed to it and not acknowledged, since a later
/// delivery folds those in (docs/spec.md §4.1).
async fn before_unacked(store: &Store, c: &Candidate) -> Result<i64, ArchiveError> {
    let (t, id) = (&c.key.0, &c.key.1);
    let mut to = c.old_to_seq;
    let acked = |target: Source| {
        c.delivery
            .get(target.as_str())
            .map_or(0, |(acked, _)| *acked)
    };
    let lowest = Source::ALL.iter().map(|t| acked(*t)).min().unwrap_or(0);
    if lowest < to {
        for m in store.merged_range(t, id, lowest, to).await? {
            let ev: MergedEvent =
                serde_json::from_str(&m.payload).map_err(|error| ArchiveError::MergedEvent {
                    record_type: t.clone(),
                    record_id: id.clone(),
                    sequence_num: m.sequence_num,
                    error,
                })?;
            let unacked = Source::ALL.iter().any(|target| {
                m.sequence_num > acked(*target) && routing::route(&ev, *target) == Route::Deliver
            });
            if unacked {
                to = to.min(m.sequence_num - 1);
                break;
            }
        }
    }
    Ok(to)
}
