//! Pub/Sub checks: the topics exist, a probe message makes the round trip
//! through the raw topic, and each enabled consumer's subscription is as
//! `provision` makes it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use google_cloud_pubsub::model::{ExpirationPolicy, Subscription};
use serde_json::json;

use backbone::pubsub::clients::{self, Endpoint};
use backbone::pubsub::provision::{is_not_found, subscription_drift};
use backbone::pubsub::publisher::Publishers;
use backbone::stages::merge::PROBE_ATTRIBUTE;
use backbone::topology::{ConsumerKind, TopicKind, Topology};

/// How long the probe message may take to come back through the probe subscription.
/// Within doctor's bound on the whole round trip.
const PULL_TIMEOUT: Duration = Duration::from_secs(8);

pub(super) async fn topics(t: &Topology, ep: &Endpoint) -> Result<String, String> {
    let admin = clients::topic_admin(ep).await.map_err(|e| e.to_string())?;
    let mut missing = Vec::new();
    for kind in TopicKind::all() {
        let path = t.topic_path(kind);
        match admin.get_topic().set_topic(path.clone()).send().await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => missing.push(t.topic_id(kind)),
            Err(e) => return Err(format!("cannot read {path}: {e}")),
        }
    }
    if missing.is_empty() {
        Ok(format!(
            "all 4 topics of env `{}` exist in project {}",
            t.env, t.project_id
        ))
    } else {
        Err(format!(
            "missing: {}; run `event-backbone provision`",
            missing.join(", ")
        ))
    }
}

/// Publishes a unique probe to the raw topic and pulls it back through a
/// probe subscription of its own (unordered), which is deleted afterwards.
pub(super) async fn raw_round_trip(t: &Topology, ep: &Endpoint) -> Result<String, String> {
    let admin = clients::subscription_admin(ep)
        .await
        .map_err(|e| e.to_string())?;
    let probe = uuid::Uuid::new_v4().simple().to_string();
    let sub = format!(
        "projects/{}/subscriptions/doctor-probe-{}",
        t.project_id,
        &probe[..12]
    );
    admin
        .create_subscription()
        .with_request(
            Subscription::new()
                .set_name(sub.clone())
                .set_topic(t.topic_path(TopicKind::Raw))
                .set_ack_deadline_seconds(10)
                // The shortest TTL Pub/Sub allows: cleans up after a crashed doctor.
                .set_expiration_policy(
                    ExpirationPolicy::new().set_ttl(google_cloud_wkt::Duration::clamp(86_400, 0)),
                ),
        )
        .send()
        .await
        .map_err(|e| format!("cannot create the probe subscription {sub}: {e}"))?;
    let result = publish_and_pull(t, ep, &sub, &probe).await;
    let deleted = admin
        .delete_subscription()
        .set_subscription(sub.clone())
        .send()
        .await;
    match (result, deleted) {
        (Ok(d), Ok(_)) => Ok(format!("{d}; probe subscription deleted")),
        (Ok(d), Err(e)) => Err(format!(
            "{d}, but deleting the probe subscription {sub} failed: {e}"
        )),
        (Err(e), _) => Err(e),
    }
}

async fn publish_and_pull(
    t: &Topology,
    ep: &Endpoint,
    sub: &str,
    probe: &str,
) -> Result<String, String> {
    let publishers = Publishers::new(t.clone(), ep)
        .await
        .map_err(|e| e.to_string())?;
    let subscriber = clients::subscriber(ep).await.map_err(|e| e.to_string())?;
    let started = Instant::now();
    let data = json!({ "doctor_probe": probe }).to_string();
    let attributes = HashMap::from([(PROBE_ATTRIBUTE.to_string(), probe.to_string())]);
    let id = publishers
        .publish_to(TopicKind::Raw, Bytes::from(data), attributes, "")
        .await
        .map_err(|e| format!("cannot publish: {e}"))?;
    publishers.flush().await;
    let mut stream = subscriber.subscribe(sub.to_string()).build();
    let deadline = tokio::time::Instant::now() + PULL_TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => {
                return Err(format!(
                    "published probe message {id} but it did not arrive through {sub} within {} s",
                    PULL_TIMEOUT.as_secs()
                ))
            }
            Ok(None) => return Err(format!("the pull stream of {sub} ended early")),
            Ok(Some(Err(e))) => return Err(format!("cannot pull from {sub}: {e}")),
            Ok(Some(Ok((m, h)))) => {
                // Live traffic reaches the probe subscription too; only ours counts.
                h.ack();
                if m.attributes.get(PROBE_ATTRIBUTE).map(String::as_str) == Some(probe) {
                    return Ok(format!(
                        "published probe message {id} and pulled it back in {} ms",
                        started.elapsed().as_millis()
                    ));
                }
            }
        }
    }
}

pub(super) async fn subscription(
    t: &Topology,
    ep: &Endpoint,
    kind: ConsumerKind,
) -> Result<String, String> {
    let admin = clients::subscription_admin(ep)
        .await
        .map_err(|e| e.to_string())?;
    let spec = t.subscription_spec(kind);
    match subscription_drift(&admin, &spec).await {
        Ok(Some(diff)) => {
            if diff.is_empty() {
                Ok(format!(
                    "exists with the settings `provision` gives it (consumer {kind})"
                ))
            } else {
                Err(format!(
                    "differs from what `provision` creates: {}",
                    diff.join("; ")
                ))
            }
        }
        Ok(None) => Err(format!(
            "does not exist, so the {kind} consumer cannot run; run `event-backbone provision`"
        )),
        Err(e) => Err(format!("cannot read it: {e}")),
    }
}
