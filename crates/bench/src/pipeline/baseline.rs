//! The same-run baseline: an ack-only drain of the pipeline's message volume.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use google_cloud_pubsub::client::Subscriber;

use super::super::merge::Gen;
use super::publish::{publish_backlog, publish_merged};
use super::report::Baseline;
use super::usage::{cpu_seconds, MachineCpu};
use super::{unique_project, Scratch};
use backbone::config::Settings;
use backbone::pubsub::publisher::Publishers;
use backbone::pubsub::{clients, provision};
use backbone::store::merged::MergedRow;
use backbone::topology::{ConsumerKind, Topology};

/// The same three subscriptions' message volume — the raw backlog on the
/// merge subscription, the merged events on each delivery subscription —
/// published to a fresh topology first, then drained at once by ack-only
/// subscribers of one client, with the daemon's flow control.
pub(super) async fn baseline(
    settings: &Settings,
    ep: &clients::Endpoint,
    gens: &[Gen],
    merged: &[MergedRow],
    scratch: &mut Scratch,
) -> anyhow::Result<Baseline> {
    let topo = Topology::new(settings.env, unique_project());
    scratch.topologies.push(topo.clone());
    provision::provision(&topo, ep).await?;
    let publishers = Arc::new(Publishers::new(topo.clone(), ep).await?);
    publish_backlog(&publishers, gens).await?;
    // What publishing the merged events costs the emulator: the pipeline's
    // drain does it, this drain does not (they were published before it).
    let publish_started = Instant::now();
    let publish_before = MachineCpu::now(None);
    publish_merged(&publishers, merged).await?;
    publishers.flush().await;
    drop(publishers);
    let merged_publish = (
        publish_started.elapsed().as_secs_f64(),
        MachineCpu::now(None).since(&publish_before),
    );
    let raw: usize = gens.iter().map(|g| 1 + usize::from(g.duplicate)).sum();
    let plan = [
        (ConsumerKind::Merge, raw),
        (ConsumerKind::Netsuite, merged.len()),
        (ConsumerKind::Suitex, merged.len()),
    ];

    let started = Instant::now();
    let cpu_before = cpu_seconds("self");
    let machine_before = MachineCpu::now(None);
    let subscriber = clients::subscriber(ep).await?;
    let mut tasks = tokio::task::JoinSet::new();
    for (kind, n) in plan {
        tasks.spawn(ack_only(
            subscriber.clone(),
            topo.subscription_path(kind),
            n,
            settings.consumers.get(kind).max_outstanding_messages,
        ));
    }
    let mut finished = started;
    while let Some(r) = tasks.join_next().await {
        finished = finished.max(r??);
    }
    let seconds = finished.duration_since(started).as_secs_f64().max(1e-6);
    // This process ran nothing else meanwhile (the stand-ins are idle).
    let cpu = cpu_seconds("self").zip(cpu_before).map(|(a, b)| a - b);
    let machine_cpu = MachineCpu::now(None).since(&machine_before);
    let messages = raw + 2 * merged.len();
    Ok(Baseline {
        raw_messages: raw,
        merged_messages_per_delivery_subscription: merged.len(),
        messages,
        seconds,
        messages_per_s: messages as f64 / seconds,
        cpu_seconds: cpu,
        machine_cpu,
        merged_publish_seconds: merged_publish.0,
        merged_publish_cpu: merged_publish.1,
    })
}

/// Acks `n` messages of `sub` as they come; returns when the last was acked.
async fn ack_only(
    subscriber: Subscriber,
    sub: String,
    n: usize,
    max_outstanding: i64,
) -> anyhow::Result<Instant> {
    let mut stream = subscriber
        .subscribe(sub.clone())
        .set_max_outstanding_messages(max_outstanding)
        .build();
    let mut got = 0usize;
    while got < n {
        match tokio::time::timeout(Duration::from_secs(60), stream.next()).await {
            Ok(Some(Ok((_m, h)))) => {
                h.ack();
                got += 1;
            }
            Ok(Some(Err(e))) => bail!("ack-only baseline on {sub}: {e} after {got} of {n}"),
            Ok(None) | Err(_) => bail!("ack-only baseline drained {got} of {n} messages of {sub}"),
        }
    }
    Ok(Instant::now())
}
