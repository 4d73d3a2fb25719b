//! The backlog, published before the daemon starts (and again for the
//! baseline), or streamed while it runs as bursts: each record's changes
//! within one second, so many records a second.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;

use super::super::merge::Gen;
use backbone::model::merged_event::MergedEvent;
use backbone::pubsub::publisher::Publishers;
use backbone::stages::merge::batch::SEQUENCE_ATTRIBUTE;
use backbone::store::merged::MergedRow;
use backbone::topology::TopicKind;

/// Publishes every generated message (duplicates twice, right after the
/// original), each record's in order on its own task, the records
/// concurrently. Returns when each event's first copy was handed to the
/// publisher, by event id.
pub(super) async fn publish_backlog(
    publishers: &Arc<Publishers>,
    gens: &[Gen],
) -> anyhow::Result<HashMap<String, Instant>> {
    let mut by_key: HashMap<String, Vec<(String, Bytes, bool)>> = HashMap::new();
    for g in gens {
        by_key.entry(g.key.clone()).or_default().push((
            g.id.to_string(),
            Bytes::from(g.json.clone()),
            g.duplicate,
        ));
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (key, msgs) in by_key {
        let p = publishers.clone();
        tasks.spawn(async move {
            let mut times = Vec::with_capacity(msgs.len());
            for (id, data, duplicate) in msgs {
                times.push((id, Instant::now()));
                for _ in 0..(1 + usize::from(duplicate)) {
                    p.publish_to(TopicKind::Raw, data.clone(), HashMap::new(), &key)
                        .await?;
                }
            }
            Ok::<_, anyhow::Error>(times)
        });
    }
    let mut out = HashMap::with_capacity(gens.len());
    while let Some(r) = tasks.join_next().await {
        out.extend(r??);
    }
    Ok(out)
}

/// One message to publish: its data and attributes.
type Message = (Bytes, HashMap<String, String>);

/// Publishes the merged events to the merged topic as the daemon does: each
/// record's in order under its ordering key, with the same attributes.
pub(super) async fn publish_merged(
    publishers: &Arc<Publishers>,
    merged: &[MergedRow],
) -> anyhow::Result<()> {
    let mut by_key: HashMap<String, Vec<Message>> = HashMap::new();
    for row in merged {
        let ev: MergedEvent = serde_json::from_str(&row.payload)
            .with_context(|| format!("stored merged event {} is unreadable", row.event_id))?;
        let mut attributes = ev.attributes();
        attributes.insert(SEQUENCE_ATTRIBUTE.to_string(), row.sequence_num.to_string());
        by_key
            .entry(ev.ordering_key())
            .or_default()
            .push((Bytes::from(row.payload.clone()), attributes));
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (key, msgs) in by_key {
        let p = publishers.clone();
        tasks.spawn(async move {
            for (data, attributes) in msgs {
                p.publish_to(TopicKind::Merged, data, attributes, &key)
                    .await?;
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(())
}

/// A record's messages: (event id, data, sent twice).
type Burst = (String, Vec<(String, Bytes, bool)>);

/// Each record's messages in generation order, records in order of first
/// appearance.
pub(super) fn bursts(gens: &[Gen]) -> Vec<Burst> {
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut out: Vec<Burst> = Vec::new();
    for g in gens {
        let i = *index.entry(g.key.as_str()).or_insert_with(|| {
            out.push((g.key.clone(), Vec::new()));
            out.len() - 1
        });
        out[i]
            .1
            .push((g.id.to_string(), Bytes::from(g.json.clone()), g.duplicate));
    }
    out
}

/// Publishes record `i`'s burst at `i / rate` seconds from now, each
/// burst's messages one after the other (a burst takes well under a
/// second). Returns when each event's first copy was handed over.
pub(super) async fn publish_stream(
    publishers: &Arc<Publishers>,
    bursts: Vec<Burst>,
    records_per_s: f64,
) -> anyhow::Result<HashMap<String, Instant>> {
    let start = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (key, msgs)) in bursts.into_iter().enumerate() {
        let p = publishers.clone();
        let at = start + Duration::from_secs_f64(i as f64 / records_per_s);
        tasks.spawn(async move {
            tokio::time::sleep_until(at).await;
            let mut times = Vec::with_capacity(msgs.len());
            for (id, data, duplicate) in msgs {
                times.push((id, Instant::now()));
                for _ in 0..(1 + usize::from(duplicate)) {
                    p.publish_to(TopicKind::Raw, data.clone(), HashMap::new(), &key)
                        .await?;
                }
            }
            Ok::<_, anyhow::Error>(times)
        });
    }
    let mut out = HashMap::new();
    while let Some(r) = tasks.join_next().await {
        out.extend(r??);
    }
    Ok(out)
}
