//! The broker baselines (an ack-only consumer, a forward-only one) and the
//! publishing and topology cleanup they share with the daemon's run.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::Bytes;

use super::Gen;
use backbone::pubsub::clients;
use backbone::pubsub::publisher::Publishers;
use backbone::topology::{ConsumerKind, TopicKind, Topology};

/// Deletes a bench topology's subscriptions and topics: the emulator keeps
/// every undelivered copy, and leftovers slow later runs down.
pub(crate) async fn teardown(t: &Topology, ep: &clients::Endpoint, extra_subs: &[String]) {
    if let Ok(admin) = clients::subscription_admin(ep).await {
        let subs = ConsumerKind::all()
            .into_iter()
            .map(|k| t.subscription_path(k));
        for sub in subs.chain(extra_subs.iter().cloned()) {
            let _ = admin
                .delete_subscription()
                .set_subscription(sub)
                .send()
                .await;
        }
    }
    if let Ok(admin) = clients::topic_admin(ep).await {
        for kind in TopicKind::all() {
            let _ = admin
                .delete_topic()
                .set_topic(t.topic_path(kind))
                .send()
                .await;
        }
    }
}

/// Publishes every generated message (duplicates twice), each record's in
/// order on its own task (ordering keys keep per-publisher order only), the
/// records concurrently. The baseline gets the same keys, so both runs go
/// through the emulator's ordered delivery.
pub(super) async fn publish_in_order(
    publishers: &Arc<Publishers>,
    gens: &[Gen],
) -> anyhow::Result<()> {
    let mut by_record: HashMap<String, Vec<Bytes>> = HashMap::new();
    for g in gens {
        let copies = if g.duplicate { 2 } else { 1 };
        for _ in 0..copies {
            by_record
                .entry(g.key.clone())
                .or_default()
                .push(Bytes::from(g.json.clone()));
        }
    }
    let mut tasks = Vec::new();
    for (key, msgs) in by_record {
        let p = publishers.clone();
        tasks.push(tokio::spawn(async move {
            for data in msgs {
                p.publish_to(TopicKind::Raw, data, HashMap::new(), &key)
                    .await?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// Publishes the same messages to the raw topic of a throwaway topology and
/// times a consumer draining them: ack-only, or (`forward`) publishing each
/// to the merged topic with its ordering key and acking on confirmation.
pub(super) async fn baseline(
    t: &Topology,
    ep: &clients::Endpoint,
    gens: &[Gen],
    forward: bool,
) -> anyhow::Result<BaselineRun> {
    let publishers = Arc::new(Publishers::new(t.clone(), ep).await?);
    let total: usize = gens.iter().map(|g| if g.duplicate { 2 } else { 1 }).sum();
    let subscriber = clients::subscriber(ep).await?;
    let sub = t.subscription_path(ConsumerKind::Merge);
    let fwd = publishers.clone();
    let consumer = tokio::spawn(async move {
        let mut stream = subscriber
            .subscribe(sub)
            .set_max_outstanding_messages(1000i64)
            .build();
        let mut n = 0usize;
        let mut pending = tokio::task::JoinSet::new();
        while n < total {
            match tokio::time::timeout(Duration::from_secs(60), stream.next()).await {
                Ok(Some(Ok((m, h)))) => {
                    if forward {
                        let p = fwd.clone();
                        pending.spawn(async move {
                            let ok = p
                                .publish_to(
                                    TopicKind::Merged,
                                    m.data,
                                    HashMap::new(),
                                    &m.ordering_key,
                                )
                                .await
                                .is_ok();
                            h.ack();
                            ok
                        });
                    } else {
                        h.ack();
                    }
                    n += 1;
                }
                _ => break,
            }
        }
        let mut forwarded = 0usize;
        while let Some(r) = pending.join_next().await {
            forwarded += usize::from(matches!(r, Ok(true)));
        }
        (n, forwarded, Instant::now())
    });
    let started = Instant::now();
    publish_in_order(&publishers, gens).await?;
    let published = started.elapsed().as_secs_f64();
    let (n, forwarded, finished) = consumer.await?;
    if n != total || (forward && forwarded != total) {
        bail!("baseline consumer drained {n} of {total} messages ({forwarded} forwarded)");
    }
    Ok(BaselineRun {
        rate: total as f64 / finished.duration_since(started).as_secs_f64(),
        published,
    })
}

/// What one baseline run measured.
pub(super) struct BaselineRun {
    /// Messages drained per second.
    pub rate: f64,
    /// Seconds the publishing took.
    pub published: f64,
}
