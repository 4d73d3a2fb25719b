//! A subscription of the demo's own on the merged topic: it sees every merged
//! event the daemon publishes, so the story can show that a duplicate
//! published nothing and that an oversized payload went out as a claim check.

use std::sync::{Arc, Mutex, MutexGuard};

use google_cloud_pubsub::client::SubscriptionAdmin;
use google_cloud_pubsub::model::Subscription;
use serde_json::Value;

use super::DemoError;
use backbone::pubsub::clients::{self, Endpoint};
use backbone::topology::{TopicKind, Topology};

/// One merged message as it travelled on the topic.
#[derive(Debug, Clone)]
pub struct SeenMerged {
    pub fingerprint: Option<String>,
    /// Size of the message data (the pointer, for a claim check).
    pub size: usize,
    pub full_snapshot_ref: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct MergedObserver {
    subscription: String,
    admin: SubscriptionAdmin,
    seen: Arc<Mutex<Vec<SeenMerged>>>,
    task: tokio::task::JoinHandle<()>,
}

impl MergedObserver {
    pub async fn start(topology: &Topology, ep: &Endpoint) -> Result<Self, DemoError> {
        let setup = |e: &dyn std::fmt::Display| {
            DemoError::setup("creating the demo's observer subscription", e)
        };
        let admin = clients::subscription_admin(ep)
            .await
            .map_err(|e| setup(&e))?;
        let subscription = format!(
            "projects/{}/subscriptions/demo-merged-observer",
            topology.project_id
        );
        admin
            .create_subscription()
            .with_request(
                Subscription::new()
                    .set_name(subscription.clone())
                    .set_topic(topology.topic_path(TopicKind::Merged))
                    .set_ack_deadline_seconds(60),
            )
            .send()
            .await
            .map_err(|e| setup(&e))?;
        let subscriber = clients::subscriber(ep).await.map_err(|e| setup(&e))?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (sub, sink) = (subscription.clone(), seen.clone());
        let task = tokio::spawn(async move {
            let mut stream = subscriber.subscribe(sub).build();
            while let Some(Ok((m, h))) = stream.next().await {
                h.ack();
                let body: Value = serde_json::from_slice(&m.data).unwrap_or(Value::Null);
                lock(&sink).push(SeenMerged {
                    fingerprint: m.attributes.get("fingerprint").cloned(),
                    size: m.data.len(),
                    full_snapshot_ref: body
                        .get("full_snapshot_ref")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                });
            }
        });
        Ok(Self {
            subscription,
            admin,
            seen,
            task,
        })
    }

    /// Merged messages seen for a fingerprint.
    pub fn for_fingerprint(&self, fp: &str) -> Vec<SeenMerged> {
        lock(&self.seen)
            .iter()
            .filter(|s| s.fingerprint.as_deref() == Some(fp))
            .cloned()
            .collect()
    }

    pub fn all(&self) -> Vec<SeenMerged> {
        lock(&self.seen).clone()
    }

    /// Stops reading and deletes the subscription (best effort: the
    /// project is the demo's own).
    pub async fn stop(self) {
        self.task.abort();
        let _ = self
            .admin
            .delete_subscription()
            .set_subscription(self.subscription.clone())
            .send()
            .await;
    }
}
