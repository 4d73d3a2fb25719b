//! What each target received, checked against the stored merged events.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use anyhow::Context;

use super::super::merge;
use super::report::{Latency, TargetReport};
use super::stand_in::Arrival;
use backbone::model::merged_event::MergedEvent;
use backbone::model::raw_event::Source;
use backbone::stages::deliver::fold;
use backbone::stages::deliver::routing::{self, Route};
use backbone::store::merged::MergedRow;

/// What `target` received, against the stored merged events, by the
/// delivery contract (docs/spec.md §4.1): each request is a stored merged event's
/// version (`unexpected` otherwise), a record's versions only go up (P1:
/// `out_of_order`, `doubled`), and applying the bodies in arrival order
/// leaves every field routed to the target at the record's merged value
/// (P2: `missing` counts the fields that are not). A record's burst may go
/// as one request (the fold of its unacknowledged versions), so requests
/// are fewer than routed merged events.
///
/// With a replica SIGKILLed at `killed`, a version that first arrived
/// before the kill and again after it is `resent_after_kill`, not doubled:
/// the killed replica's request reached the target and its acknowledgement
/// was never written, so the survivor sent the same version again (at least
/// once, docs/spec.md §10). Any other repeat is doubled.
pub(super) fn check_target(
    target: Source,
    merged: &[MergedRow],
    arrivals: &[Arrival],
    unreadable: usize,
    published_at: &HashMap<String, Instant>,
    killed: Option<Instant>,
) -> anyhow::Result<TargetReport> {
    // Per record, every merged event in order; and which are stored.
    let mut by_record: HashMap<String, Vec<MergedEvent>> = HashMap::new();
    let mut stored: HashMap<(String, i64), &str> = HashMap::new();
    let mut routed = 0;
    let mut routed_records = HashSet::new();
    for row in merged {
        let ev: MergedEvent = serde_json::from_str(&row.payload)
            .with_context(|| format!("stored merged event {} is unreadable", row.event_id))?;
        if routing::route(&ev, target) == Route::Deliver {
            routed += 1;
            routed_records.insert(ev.ordering_key());
        }
        stored.insert((ev.ordering_key(), ev.version), row.event_id.as_str());
        by_record.entry(ev.ordering_key()).or_default().push(ev);
    }
    let mut r = TargetReport {
        expected: routed,
        routed_records: routed_records.len(),
        requests: arrivals.len(),
        unreadable,
        ..Default::default()
    };
    // When each (record, version) first arrived.
    let mut seen: HashMap<(String, i64), Instant> = HashMap::with_capacity(arrivals.len());
    let mut last_version: HashMap<&str, i64> = HashMap::new();
    let mut state: HashMap<&str, serde_json::Map<String, serde_json::Value>> = HashMap::new();
    let mut latencies = Vec::with_capacity(arrivals.len());
    for a in arrivals {
        let k = (a.record.clone(), a.version);
        let mut resent = false;
        match stored.get(&k) {
            Some(id) if *id == a.event_id => match seen.get(&k) {
                Some(first) if killed.is_some_and(|kill| *first < kill && a.at >= kill) => {
                    r.resent_after_kill += 1;
                    resent = true;
                }
                Some(_) => r.doubled += 1,
                None => {
                    seen.insert(k, a.at);
                    if let Some(p) = published_at.get(&a.event_id) {
                        latencies.push(a.at.saturating_duration_since(*p).as_secs_f64() * 1000.0);
                    }
                }
            },
            _ => r.unexpected += 1,
        }
        let last = last_version.entry(a.record.as_str()).or_insert(i64::MIN);
        // The resent version is the newest the target has (P1 holds); one
        // below it is out of order even so.
        if a.version < *last || (a.version == *last && !resent) {
            r.out_of_order += 1;
        }
        *last = (*last).max(a.version);
        let fields = state.entry(a.record.as_str()).or_default();
        for (f, v) in &a.fields {
            fields.insert(f.clone(), v.clone());
        }
    }
    // P2: what every record's whole history routes to the target.
    for (record, versions) in &by_record {
        let Some(want) = fold::fold(versions, target) else {
            continue;
        };
        let got = state.get(record.as_str());
        let mut need = want.applied.clone();
        for c in &want.conflicts {
            need.insert(c.field.clone(), c.kept.clone());
        }
        r.missing += need
            .iter()
            .filter(|(f, v)| got.and_then(|g| g.get(*f)) != Some(*v))
            .count();
    }
    latencies.sort_by(|a, b| a.total_cmp(b));
    if !latencies.is_empty() {
        r.latency_ms_raw_publish_to_delivered = Some(Latency {
            p50: merge::percentile(&latencies, 0.5),
            p99: merge::percentile(&latencies, 0.99),
        });
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seq: i64, origin: Source) -> MergedRow {
        let ev = serde_json::json!({
            "event_id": format!("e{seq}"), "fingerprint": format!("f{seq}"),
            "record_type": "bench", "record_id": "r0", "origin": origin.as_str(),
            "version": seq, "base_version": seq - 1,
            "timestamp": "2026-03-13T20:00:00.123456Z",
            "applied": {"n": seq}, "conflicts": [],
        });
        MergedRow {
            record_type: "bench".into(),
            record_id: "r0".into(),
            sequence_num: seq,
            version: seq,
            event_id: format!("e{seq}"),
            payload: ev.to_string(),
        }
    }

    fn arrival(version: i64) -> Arrival {
        Arrival {
            at: Instant::now(),
            record: "bench:r0".into(),
            version,
            event_id: format!("e{version}"),
            fields: serde_json::json!({"n": version})
                .as_object()
                .unwrap()
                .clone(),
        }
    }

    #[test]
    fn check_counts_lost_doubled_unexpected_and_reordered() {
        // Versions 1..=4 from suitex: all routed to netsuite, none to suitex.
        let merged: Vec<MergedRow> = (1..=4).map(|v| row(v, Source::Suitex)).collect();
        let ok = [arrival(1), arrival(2), arrival(3), arrival(4)];
        let r = check_target(Source::Netsuite, &merged, &ok, 0, &HashMap::new(), None).unwrap();
        assert_eq!((r.expected, r.failures()), (4, 0));
        // A burst as one request (the fold of 1..=4 under version 4): fine.
        let burst = [arrival(1), arrival(4)];
        let r = check_target(Source::Netsuite, &merged, &burst, 0, &HashMap::new(), None).unwrap();
        assert_eq!((r.expected, r.requests, r.failures()), (4, 2, 0));

        let bad = [arrival(2), arrival(1), arrival(2), arrival(9)];
        let r = check_target(Source::Netsuite, &merged, &bad, 1, &HashMap::new(), None).unwrap();
        assert_eq!(r.missing, 1, "n is 9 there, not 4");
        assert_eq!(r.doubled, 1);
        assert_eq!(r.unexpected, 1, "version 9");
        assert_eq!(r.out_of_order, 2, "1 after 2, 2 after 2");
        assert_eq!(r.unreadable, 1);
        let short = [arrival(1), arrival(2)];
        let r = check_target(Source::Netsuite, &merged, &short, 0, &HashMap::new(), None).unwrap();
        assert_eq!(r.missing, 1, "the last value never arrived");

        let echo = check_target(Source::Suitex, &merged, &ok, 0, &HashMap::new(), None).unwrap();
        assert_eq!(
            (echo.expected, echo.unexpected),
            (0, 0),
            "stored versions, nothing routed"
        );
    }

    #[test]
    fn a_version_sent_before_the_kill_and_again_after_it_is_resent_not_doubled() {
        let merged: Vec<MergedRow> = (1..=3).map(|v| row(v, Source::Suitex)).collect();
        let before = arrival(2);
        let kill = Instant::now();
        let mut again = arrival(2);
        again.at = kill + std::time::Duration::from_millis(5);
        let mut next = arrival(3);
        next.at = kill + std::time::Duration::from_millis(10);
        let got = [arrival(1), before.clone(), again.clone(), next.clone()];
        let r = check_target(
            Source::Netsuite,
            &merged,
            &got,
            0,
            &HashMap::new(),
            Some(kill),
        )
        .unwrap();
        assert_eq!((r.resent_after_kill, r.doubled, r.out_of_order), (1, 0, 0));
        assert_eq!(r.failures(), 0);
        // Without a kill, or both copies after it, the same is a double.
        let r = check_target(Source::Netsuite, &merged, &got, 0, &HashMap::new(), None).unwrap();
        assert_eq!((r.resent_after_kill, r.doubled, r.out_of_order), (0, 1, 1));
        let mut late = before;
        late.at = kill + std::time::Duration::from_millis(1);
        let both_after = [arrival(1), late, again.clone(), next];
        let r = check_target(
            Source::Netsuite,
            &merged,
            &both_after,
            0,
            &HashMap::new(),
            Some(kill),
        )
        .unwrap();
        assert_eq!(r.doubled, 1);
        // Resent below a newer version already there: still out of order (P1).
        let mut first = arrival(2);
        first.at = kill - std::time::Duration::from_millis(1);
        let mut three = arrival(3);
        three.at = kill - std::time::Duration::from_millis(1);
        let below = [arrival(1), first, three, again];
        let r = check_target(
            Source::Netsuite,
            &merged,
            &below,
            0,
            &HashMap::new(),
            Some(kill),
        )
        .unwrap();
        assert_eq!((r.resent_after_kill, r.out_of_order), (1, 1));
    }
}
