//! The plain-text form of an [`Explanation`], for people.

use std::fmt::Write;

use super::{ConflictView, DeliveryStatus, EventRef, Explanation, FieldExplanation};
use crate::model::raw_event::Source;

/// Renders the whole explanation; ends with a newline.
pub fn render(x: &Explanation) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write_all(&mut out, x);
    out
}

fn write_all(o: &mut String, x: &Explanation) -> std::fmt::Result {
    writeln!(
        o,
        "{}/{} at version {} ({} events, last sequence {}; {} pending)",
        x.record_type, x.record_id, x.version, x.events, x.last_seq, x.pending
    )?;
    let priority: Vec<&str> = x
        .policy
        .source_priority
        .iter()
        .map(|s| s.as_str())
        .collect();
    writeln!(
        o,
        "Conflicts derived by replaying the events with merge policy {}, source priority {}.",
        x.policy.conflict_policy.as_str(),
        priority.join(" > ")
    )?;
    for w in &x.warnings {
        writeln!(o, "WARNING: {w}")?;
    }
    if x.fields.is_empty() {
        writeln!(o, "\nNo fields.")?;
    }
    for (name, f) in &x.fields {
        writeln!(o)?;
        write_field(o, name, f)?;
    }
    Ok(())
}

fn event(e: &EventRef) -> String {
    format!(
        "{} event {} (seq {}, v{}, at {})",
        e.source, e.event_id, e.sequence_num, e.version, e.timestamp
    )
}

fn write_field(o: &mut String, name: &str, f: &FieldExplanation) -> std::fmt::Result {
    writeln!(o, "{name} = {}", f.value)?;
    writeln!(o, "  set by    {}", event(&f.set_by))?;
    if f.conflicts.is_empty() {
        writeln!(o, "  conflicts none")?;
    }
    for c in &f.conflicts {
        write_conflict(o, c)?;
    }
    for t in Source::ALL {
        let Some(d) = f.delivery.get(&t) else {
            continue;
        };
        let label = format!("{t}:");
        let line = match d.status {
            DeliveryStatus::NotNeeded => format!("not needed ({t} is where this value came from)"),
            DeliveryStatus::Delivered => match &d.delivered {
                Some(v) => format!(
                    "delivered at {} with merged event {} (seq {}, v{}){}",
                    v.at,
                    v.event_id,
                    v.sequence_num,
                    v.version,
                    needed(d.needed_since)
                ),
                None => "delivered".into(),
            },
            DeliveryStatus::Retrying
            | DeliveryStatus::DeadLettered
            | DeliveryStatus::NotDelivered => {
                let what = match d.status {
                    DeliveryStatus::Retrying => "not delivered yet, retrying",
                    DeliveryStatus::DeadLettered => {
                        "NOT delivered: dead-lettered (see `event-backbone dlq list`)"
                    }
                    _ => "not delivered yet",
                };
                match &d.last_attempt {
                    Some(a) => format!(
                        "{what}; last: {} {} at {} for seq {}{}{}",
                        a.stage,
                        a.outcome,
                        a.at,
                        a.sequence_num,
                        a.error
                            .as_deref()
                            .map(|e| format!(" ({e})"))
                            .unwrap_or_default(),
                        needed(d.needed_since)
                    ),
                    None => format!("{what}; no delivery recorded{}", needed(d.needed_since)),
                }
            }
        };
        writeln!(o, "  {label:<9} {line}")?;
    }
    Ok(())
}

fn needed(since: Option<i64>) -> String {
    since
        .map(|s| format!("; needed since seq {s}"))
        .unwrap_or_default()
}

fn write_conflict(o: &mut String, c: &ConflictView) -> std::fmt::Result {
    let verdict = if c.decided_current_value {
        "won by the current value"
    } else {
        "decided an earlier value"
    };
    let note = if c.recorded {
        ""
    } else {
        " (replay only: no stored merged event to check it against)"
    };
    writeln!(
        o,
        "  conflict  seq {}, rule {}: {verdict}{note}",
        c.sequence_num,
        c.rule.as_str()
    )?;
    writeln!(
        o,
        "    won     {} = {} [{}]",
        event(&c.winner.event),
        c.winner.value,
        c.winner.role
    )?;
    writeln!(
        o,
        "    lost    {} = {} [{}]",
        event(&c.loser.event),
        c.loser.value,
        c.loser.role
    )?;
    writeln!(o, "    why     {}", c.why)
}
