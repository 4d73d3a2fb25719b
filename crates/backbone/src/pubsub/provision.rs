//! `event-backbone provision`: creates the env's topics and subscriptions
//! (docs/spec.md §2). Idempotent; an existing resource whose settings differ from
//! the spec is reported, never silently kept or changed.

use google_cloud_gax::error::rpc::Code;
use google_cloud_pubsub::client::{SubscriptionAdmin, TopicAdmin};
use google_cloud_pubsub::model::{DeadLetterPolicy, RetryPolicy, Subscription, Topic};

use super::clients::{self, ClientError, Endpoint};
use crate::topology::{SubscriptionSpec, TopicKind, Topology};

#[derive(Debug, Default)]
pub struct Report {
    pub created: Vec<String>,
    pub unchanged: Vec<String>,
    /// Resources that exist with other settings: (name, differences).
    pub drift: Vec<(String, Vec<String>)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{action} {name} failed: {source}")]
    Api {
        action: &'static str,
        name: String,
        #[source]
        source: google_cloud_pubsub::Error,
    },
}

pub fn is_not_found(e: &google_cloud_pubsub::Error) -> bool {
    e.status().is_some_and(|s| s.code == Code::NotFound) || e.http_status_code() == Some(404)
}

fn is_already_exists(e: &google_cloud_pubsub::Error) -> bool {
    e.status().is_some_and(|s| s.code == Code::AlreadyExists) || e.http_status_code() == Some(409)
}

/// The subscription resource `provision` creates for `spec`.
pub fn subscription_resource(spec: &SubscriptionSpec) -> Subscription {
    let mut s = Subscription::new()
        .set_name(spec.name.clone())
        .set_topic(spec.topic.clone())
        .set_ack_deadline_seconds(spec.ack_deadline_seconds)
        .set_enable_message_ordering(spec.enable_message_ordering)
        .set_message_retention_duration(wkt_duration(spec.message_retention));
    if let Some(dlq) = &spec.dead_letter_topic {
        s = s.set_dead_letter_policy(
            DeadLetterPolicy::new()
                .set_dead_letter_topic(dlq.clone())
                .set_max_delivery_attempts(spec.max_delivery_attempts.unwrap_or(5)),
        );
    }
    if let (Some(min), Some(max)) = (spec.retry_min_backoff, spec.retry_max_backoff) {
        s = s.set_retry_policy(
            RetryPolicy::new()
                .set_minimum_backoff(wkt_duration(min))
                .set_maximum_backoff(wkt_duration(max)),
        );
    }
    s
}

fn wkt_duration(d: std::time::Duration) -> google_cloud_wkt::Duration {
    google_cloud_wkt::Duration::clamp(d.as_secs() as i64, d.subsec_nanos() as i32)
}

fn secs(d: &Option<google_cloud_wkt::Duration>) -> Option<i64> {
    d.as_ref().map(|d| d.seconds())
}

/// Differences between a live subscription and its spec (empty = matches).
pub fn differences(live: &Subscription, spec: &SubscriptionSpec) -> Vec<String> {
    let mut d = Vec::new();
    let mut check = |what: &str, live: String, want: String| {
        if live != want {
            d.push(format!("{what}: is {live}, should be {want}"));
        }
    };
    check("topic", live.topic.clone(), spec.topic.clone());
    check(
        "ack_deadline_seconds",
        live.ack_deadline_seconds.to_string(),
        spec.ack_deadline_seconds.to_string(),
    );
    check(
        "enable_message_ordering",
        live.enable_message_ordering.to_string(),
        spec.enable_message_ordering.to_string(),
    );
    // Unset reads as Pub/Sub's default, which is what we set.
    check(
        "message_retention_duration",
        format!(
            "{}s",
            secs(&live.message_retention_duration)
                .unwrap_or(crate::topology::MESSAGE_RETENTION.as_secs() as i64)
        ),
        format!("{}s", spec.message_retention.as_secs()),
    );
    let live_dlq = live.dead_letter_policy.as_ref();
    check(
        "dead_letter_topic",
        format!(
            "{:?}",
            live_dlq
                .map(|p| p.dead_letter_topic.clone())
                .filter(|t| !t.is_empty())
        ),
        format!("{:?}", spec.dead_letter_topic),
    );
    if spec.dead_letter_topic.is_some() {
        check(
            "max_delivery_attempts",
            format!("{:?}", live_dlq.map(|p| p.max_delivery_attempts)),
            format!("{:?}", spec.max_delivery_attempts),
        );
    }
    let live_retry = live.retry_policy.as_ref();
    check(
        "retry_policy",
        format!(
            "{:?}",
            live_retry.map(|r| (secs(&r.minimum_backoff), secs(&r.maximum_backoff)))
        ),
        format!(
            "{:?}",
            spec.retry_min_backoff
                .zip(spec.retry_max_backoff)
                .map(|(a, b)| (Some(a.as_secs() as i64), Some(b.as_secs() as i64)))
        ),
    );
    d
}

pub async fn provision(topology: &Topology, ep: &Endpoint) -> Result<Report, ProvisionError> {
    let topics = clients::topic_admin(ep).await?;
    let subs = clients::subscription_admin(ep).await?;
    let mut report = Report::default();
    for kind in TopicKind::all() {
        ensure_topic(&topics, &topology.topic_path(kind), &mut report).await?;
    }
    for spec in topology.subscription_specs() {
        ensure_subscription(&subs, &spec, &mut report).await?;
    }
    Ok(report)
}

async fn ensure_topic(
    admin: &TopicAdmin,
    name: &str,
    report: &mut Report,
) -> Result<(), ProvisionError> {
    match admin.get_topic().set_topic(name.to_string()).send().await {
        Ok(_) => {
            report.unchanged.push(name.to_string());
            return Ok(());
        }
        Err(e) if is_not_found(&e) => {}
        Err(source) => {
            return Err(ProvisionError::Api {
                action: "reading topic",
                name: name.to_string(),
                source,
            })
        }
    }
    match admin
        .create_topic()
        .with_request(Topic::new().set_name(name.to_string()))
        .send()
        .await
    {
        Ok(_) => report.created.push(name.to_string()),
        // Another provisioner won the race: same result.
        Err(e) if is_already_exists(&e) => report.unchanged.push(name.to_string()),
        Err(source) => {
            return Err(ProvisionError::Api {
                action: "creating topic",
                name: name.to_string(),
                source,
            })
        }
    }
    Ok(())
}

/// How the live subscription differs from `spec` (empty: not at all);
/// `Ok(None)` when it does not exist. Shared by `provision` and `doctor`.
pub async fn subscription_drift(
    admin: &SubscriptionAdmin,
    spec: &SubscriptionSpec,
) -> Result<Option<Vec<String>>, google_cloud_pubsub::Error> {
    match admin
        .get_subscription()
        .set_subscription(spec.name.clone())
        .send()
        .await
    {
        Ok(live) => Ok(Some(differences(&live, spec))),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

async fn ensure_subscription(
    admin: &SubscriptionAdmin,
    spec: &SubscriptionSpec,
    report: &mut Report,
) -> Result<(), ProvisionError> {
    match subscription_drift(admin, spec).await {
        Ok(Some(diff)) => {
            if diff.is_empty() {
                report.unchanged.push(spec.name.clone());
            } else {
                report.drift.push((spec.name.clone(), diff));
            }
            return Ok(());
        }
        Ok(None) => {}
        Err(source) => {
            return Err(ProvisionError::Api {
                action: "reading subscription",
                name: spec.name.clone(),
                source,
            })
        }
    }
    match admin
        .create_subscription()
        .with_request(subscription_resource(spec))
        .send()
        .await
    {
        Ok(_) => report.created.push(spec.name.clone()),
        Err(e) if is_already_exists(&e) => report.unchanged.push(spec.name.clone()),
        Err(source) => {
            return Err(ProvisionError::Api {
                action: "creating subscription",
                name: spec.name.clone(),
                source,
            })
        }
    }
    Ok(())
}

/// What [`remove_project`] deleted.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub subscriptions: usize,
    pub topics: usize,
}

/// Deletes every subscription, then every topic, of `project_id`: scratch
/// projects (tests, benches, the demo) are removed whole, so a tap or an
/// observer made beside the topology goes too. On the emulator this is what
/// gives back the resources a subscription holds (a thread per ordering key
/// for an ordered one); never run against a real project.
pub async fn remove_project(project_id: &str, ep: &Endpoint) -> Result<Removed, ProvisionError> {
    let parent = format!("projects/{project_id}");
    let mut removed = Removed::default();
    let subs = clients::subscription_admin(ep).await?;
    let mut names = Vec::new();
    let mut token = String::new();
    loop {
        let page = subs
            .list_subscriptions()
            .set_project(parent.clone())
            .set_page_token(token)
            .send()
            .await
            .map_err(|source| ProvisionError::Api {
                action: "listing subscriptions of",
                name: parent.clone(),
                source,
            })?;
        names.extend(page.subscriptions.into_iter().map(|s| s.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    for name in names {
        match subs
            .delete_subscription()
            .set_subscription(name.clone())
            .send()
            .await
        {
            Ok(()) => removed.subscriptions += 1,
            Err(e) if is_not_found(&e) => {}
            Err(source) => {
                return Err(ProvisionError::Api {
                    action: "deleting subscription",
                    name,
                    source,
                })
            }
        }
    }
    let topics = clients::topic_admin(ep).await?;
    let mut names = Vec::new();
    let mut token = String::new();
    loop {
        let page = topics
            .list_topics()
            .set_project(parent.clone())
            .set_page_token(token)
            .send()
            .await
            .map_err(|source| ProvisionError::Api {
                action: "listing topics of",
                name: parent.clone(),
                source,
            })?;
        names.extend(page.topics.into_iter().map(|t| t.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    for name in names {
        match topics.delete_topic().set_topic(name.clone()).send().await {
            Ok(()) => removed.topics += 1,
            Err(e) if is_not_found(&e) => {}
            Err(source) => {
                return Err(ProvisionError::Api {
                    action: "deleting topic",
                    name,
                    source,
                })
            }
        }
    }
    Ok(removed)
}
