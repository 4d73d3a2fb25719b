//! Environment → Pub/Sub topic and subscription names (docs/spec.md §2).
//!
//! This is the only place a topic or subscription name is made. Everything
//! else asks a [`Topology`], so a sandbox process cannot even spell a
//! production topic, and [`Topology::check_publish_target`] refuses one that
//! arrives from outside (CLI argument, replayed attribute).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Ack deadline on every subscription; leases are extended while in flight.
pub const ACK_DEADLINE_SECONDS: i32 = 60;
/// Broker-side backstop for a message that keeps crashing the process.
pub const MAX_DELIVERY_ATTEMPTS: i32 = 5;
/// Broker redelivery backoff on the error subscription.
pub const RETRY_MIN_BACKOFF: Duration = Duration::from_secs(10);
/// Message retention of every subscription, set explicitly by `provision`
/// (Pub/Sub's default, written down so a held target relies on it).
pub const MESSAGE_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
pub const RETRY_MAX_BACKOFF: Duration = Duration::from_secs(600);

/// The deployment environment; the suffix of every topic name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Env {
    Local,
    Sandbox,
    Production,
}

impl Env {
    pub const ALL: [Env; 3] = [Env::Local, Env::Sandbox, Env::Production];

    pub fn as_str(self) -> &'static str {
        match self {
            Env::Local => "local",
            Env::Sandbox => "sandbox",
            Env::Production => "production",
        }
    }
}

impl fmt::Display for Env {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An environment name that is not one of [`Env::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown environment `{value}`; expected one of: local, sandbox, production")]
pub struct ParseEnvError {
    pub value: String,
}

impl FromStr for Env {
    type Err = ParseEnvError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Env::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| ParseEnvError {
                value: s.to_owned(),
            })
    }
}

impl Serialize for Env {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Env {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One of the four topics of an environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TopicKind {
    Raw,
    Merged,
    Error,
    Dlq,
}

impl TopicKind {
    pub const ALL: [TopicKind; 4] = [
        TopicKind::Raw,
        TopicKind::Merged,
        TopicKind::Error,
        TopicKind::Dlq,
    ];

    pub fn all() -> [TopicKind; 4] {
        Self::ALL
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TopicKind::Raw => "raw",
            TopicKind::Merged => "merged",
            TopicKind::Error => "error",
            TopicKind::Dlq => "dlq",
        }
    }

    fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl fmt::Display for TopicKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One consumer per subscription; the name is its key under `consumers.` in
/// the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConsumerKind {
    Merge,
    Netsuite,
    Suitex,
    Retry,
    Park,
}

impl ConsumerKind {
    pub const ALL: [ConsumerKind; 5] = [
        ConsumerKind::Merge,
        ConsumerKind::Netsuite,
        ConsumerKind::Suitex,
        ConsumerKind::Retry,
        ConsumerKind::Park,
    ];

    pub fn all() -> [ConsumerKind; 5] {
        Self::ALL
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ConsumerKind::Merge => "merge",
            ConsumerKind::Netsuite => "netsuite",
            ConsumerKind::Suitex => "suitex",
            ConsumerKind::Retry => "retry",
            ConsumerKind::Park => "park",
        }
    }
}

impl fmt::Display for ConsumerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A consumer name that is not one of [`ConsumerKind::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown consumer `{value}`; expected one of: merge, netsuite, suitex, retry, park")]
pub struct ParseConsumerKindError {
    pub value: String,
}

impl FromStr for ConsumerKind {
    type Err = ParseConsumerKindError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| ParseConsumerKindError {
                value: s.to_owned(),
            })
    }
}

/// A stage by the name it goes by on the wire: the `stage` attribute of
/// error envelopes, the `stage` column of the audit log and dead letters,
/// the `stage` label of metrics. Declared here, once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StageName {
    Merge,
    DeliverNetsuite,
    DeliverSuitex,
    /// The retry router: names envelopes it cannot route.
    Retry,
    Park,
}

impl StageName {
    pub const ALL: [StageName; 5] = [
        StageName::Merge,
        StageName::DeliverNetsuite,
        StageName::DeliverSuitex,
        StageName::Retry,
        StageName::Park,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            StageName::Merge => "merge",
            StageName::DeliverNetsuite => "deliver.netsuite",
            StageName::DeliverSuitex => "deliver.suitex",
            StageName::Retry => "retry",
            StageName::Park => "park",
        }
    }

    /// The stage a consumer runs.
    pub const fn of_consumer(kind: ConsumerKind) -> StageName {
        match kind {
            ConsumerKind::Merge => StageName::Merge,
            ConsumerKind::Netsuite => StageName::DeliverNetsuite,
            ConsumerKind::Suitex => StageName::DeliverSuitex,
            ConsumerKind::Retry => StageName::Retry,
            ConsumerKind::Park => StageName::Park,
        }
    }
}

impl fmt::Display for StageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stage name that is not one of [`StageName::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown stage `{value}`; expected one of: merge, deliver.netsuite, deliver.suitex, retry, park")]
pub struct ParseStageNameError {
    pub value: String,
}

impl FromStr for StageName {
    type Err = ParseStageNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|n| n.as_str() == s)
            .ok_or_else(|| ParseStageNameError {
                value: s.to_owned(),
            })
    }
}

/// The settings a subscription must have; `provision` creates it from this and
/// `doctor` compares the live resource against it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionSpec {
    /// Full path: `projects/{p}/subscriptions/{id}`.
    pub name: String,
    /// Full path of the topic it is attached to.
    pub topic: String,
    pub ack_deadline_seconds: i32,
    pub enable_message_ordering: bool,
    /// Full path of the dead-letter topic, when the subscription has one.
    pub dead_letter_topic: Option<String>,
    pub max_delivery_attempts: Option<i32>,
    pub retry_min_backoff: Option<Duration>,
    pub retry_max_backoff: Option<Duration>,
    /// How long unacked messages are kept: a target held through a long
    /// outage keeps its messages for this long (docs/spec.md §4.2).
    pub message_retention: Duration,
}

/// Why a publish target was refused. Nothing is sent in either case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    #[error("refusing to publish to `{topic}`: it belongs to environment `{topic_env}`, this process runs in `{own_env}`")]
    ForeignEnv {
        topic: String,
        topic_env: String,
        own_env: Env,
    },
    #[error("refusing to publish to `{topic}`: it is not one of this deployment's topics")]
    UnknownTopic { topic: String },
}

/// The names of one environment's topics and subscriptions in one project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub env: Env,
    pub project_id: String,
}

impl Topology {
    pub fn new(env: Env, project_id: impl Into<String>) -> Self {
        Self {
            env,
            project_id: project_id.into(),
        }
    }

    /// `events.{kind}.{env}`.
    pub fn topic_id(&self, t: TopicKind) -> String {
        format!("events.{}.{}", t, self.env)
    }

    /// `projects/{project}/topics/events.{kind}.{env}`.
    pub fn topic_path(&self, t: TopicKind) -> String {
        format!("projects/{}/topics/{}", self.project_id, self.topic_id(t))
    }

    /// `events.dlq.{env}-sub` for the park consumer, otherwise
    /// `events.{topic}.{env}-{consumer}-sub`.
    pub fn subscription_id(&self, c: ConsumerKind) -> String {
        let topic = self.topic_id(Self::topic_of(c));
        match c {
            ConsumerKind::Park => format!("{topic}-sub"),
            _ => format!("{topic}-{c}-sub"),
        }
    }

    /// `projects/{project}/subscriptions/{subscription_id}`.
    pub fn subscription_path(&self, c: ConsumerKind) -> String {
        format!(
            "projects/{}/subscriptions/{}",
            self.project_id,
            self.subscription_id(c)
        )
    }

    /// The topic a consumer's subscription is attached to.
    pub fn topic_of(c: ConsumerKind) -> TopicKind {
        match c {
            ConsumerKind::Merge => TopicKind::Raw,
            ConsumerKind::Netsuite | ConsumerKind::Suitex => TopicKind::Merged,
            ConsumerKind::Retry => TopicKind::Error,
            ConsumerKind::Park => TopicKind::Dlq,
        }
    }

    /// The settings docs/spec.md §2 prescribes for a consumer's subscription.
    pub fn subscription_spec(&self, c: ConsumerKind) -> SubscriptionSpec {
        let topic = Self::topic_of(c);
        // Ordering only where publishes carry an ordering key (raw, merged).
        let ordered = matches!(topic, TopicKind::Raw | TopicKind::Merged);
        // The dlq subscription is terminal: dead-lettering it to itself would loop.
        let dead_letter = topic != TopicKind::Dlq;
        let retry_policy = topic == TopicKind::Error;
        SubscriptionSpec {
            name: self.subscription_path(c),
            topic: self.topic_path(topic),
            ack_deadline_seconds: ACK_DEADLINE_SECONDS,
            enable_message_ordering: ordered,
            dead_letter_topic: dead_letter.then(|| self.topic_path(TopicKind::Dlq)),
            max_delivery_attempts: dead_letter.then_some(MAX_DELIVERY_ATTEMPTS),
            retry_min_backoff: retry_policy.then_some(RETRY_MIN_BACKOFF),
            retry_max_backoff: retry_policy.then_some(RETRY_MAX_BACKOFF),
            message_retention: MESSAGE_RETENTION,
        }
    }

    /// Specs of all five subscriptions, in [`ConsumerKind::ALL`] order.
    pub fn subscription_specs(&self) -> Vec<SubscriptionSpec> {
        ConsumerKind::ALL
            .into_iter()
            .map(|c| self.subscription_spec(c))
            .collect()
    }

    /// Refuses (typed error) any topic whose env suffix differs from
    /// `self.env`, or which is not one of ours. Accepts a topic id
    /// (`events.raw.sandbox`) or a full path in this project.
    pub fn check_publish_target(&self, topic_path_or_id: &str) -> Result<TopicKind, TopologyError> {
        let unknown = || TopologyError::UnknownTopic {
            topic: topic_path_or_id.to_owned(),
        };
        let id = if topic_path_or_id.starts_with("projects/") {
            let mut parts = topic_path_or_id.splitn(4, '/');
            match (parts.next(), parts.next(), parts.next(), parts.next()) {
                (Some("projects"), Some(project), Some("topics"), Some(id)) => {
                    // Checked after the env so a production topic in any
                    // project is reported as the cross-env mistake it is.
                    let own_project = project == self.project_id;
                    let kind = self.check_topic_id(id, topic_path_or_id)?;
                    return if own_project {
                        Ok(kind)
                    } else {
                        Err(unknown())
                    };
                }
                _ => return Err(unknown()),
            }
        } else {
            topic_path_or_id
        };
        self.check_topic_id(id, topic_path_or_id)
    }

    fn check_topic_id(&self, id: &str, original: &str) -> Result<TopicKind, TopologyError> {
        let unknown = || TopologyError::UnknownTopic {
            topic: original.to_owned(),
        };
        let rest = id.strip_prefix("events.").ok_or_else(unknown)?;
        let (kind, env) = rest.split_once('.').ok_or_else(unknown)?;
        let kind = TopicKind::from_name(kind).ok_or_else(unknown)?;
        // Only a name shaped like an env counts as one; anything else
        // (`sandbox-merge-sub`, `a.b`) is simply not a topic of ours.
        if env.is_empty()
            || !env
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(unknown());
        }
        if env != self.env.as_str() {
            return Err(TopologyError::ForeignEnv {
                topic: original.to_owned(),
                topic_env: env.to_owned(),
                own_env: self.env,
            });
        }
        Ok(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_parses_and_displays_lowercase() {
        for env in Env::ALL {
            assert_eq!(env.to_string().parse::<Env>(), Ok(env));
        }
        let err = "staging".parse::<Env>().unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("staging") && msg.contains("local, sandbox, production"));
        assert!("Sandbox".parse::<Env>().is_err());
    }

    #[test]
    fn consumer_kind_round_trips() {
        for c in ConsumerKind::all() {
            assert_eq!(c.as_str().parse::<ConsumerKind>(), Ok(c));
        }
        assert!("deliver".parse::<ConsumerKind>().is_err());
    }

    #[test]
    fn names_for_each_env() {
        for env in Env::ALL {
            let t = Topology::new(env, "my-proj");
            let e = env.as_str();
            assert_eq!(t.topic_id(TopicKind::Raw), format!("events.raw.{e}"));
            assert_eq!(t.topic_id(TopicKind::Merged), format!("events.merged.{e}"));
            assert_eq!(t.topic_id(TopicKind::Error), format!("events.error.{e}"));
            assert_eq!(t.topic_id(TopicKind::Dlq), format!("events.dlq.{e}"));
            assert_eq!(
                t.topic_path(TopicKind::Raw),
                format!("projects/my-proj/topics/events.raw.{e}")
            );
            assert_eq!(
                t.subscription_id(ConsumerKind::Merge),
                format!("events.raw.{e}-merge-sub")
            );
            assert_eq!(
                t.subscription_id(ConsumerKind::Netsuite),
                format!("events.merged.{e}-netsuite-sub")
            );
            assert_eq!(
                t.subscription_id(ConsumerKind::Suitex),
                format!("events.merged.{e}-suitex-sub")
            );
            assert_eq!(
                t.subscription_id(ConsumerKind::Retry),
                format!("events.error.{e}-retry-sub")
            );
            assert_eq!(
                t.subscription_id(ConsumerKind::Park),
                format!("events.dlq.{e}-sub")
            );
            assert_eq!(
                t.subscription_path(ConsumerKind::Park),
                format!("projects/my-proj/subscriptions/events.dlq.{e}-sub")
            );
        }
    }

    #[test]
    fn sandbox_refuses_production_topics() {
        let t = Topology::new(Env::Sandbox, "suitex-sandbox");
        for target in [
            "events.raw.production",
            "projects/x/topics/events.raw.production",
            "projects/suitex-sandbox/topics/events.merged.production",
        ] {
            match t.check_publish_target(target) {
                Err(TopologyError::ForeignEnv {
                    topic,
                    topic_env,
                    own_env,
                }) => {
                    assert_eq!(topic, target);
                    assert_eq!(topic_env, "production");
                    assert_eq!(own_env, Env::Sandbox);
                }
                other => panic!("{target}: expected ForeignEnv, got {other:?}"),
            }
        }
        let msg = t
            .check_publish_target("events.raw.production")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("production") && msg.contains("sandbox"),
            "{msg}"
        );
    }

    #[test]
    fn production_refuses_sandbox_and_local_topics() {
        let t = Topology::new(Env::Production, "suitex-production");
        assert!(matches!(
            t.check_publish_target("events.error.sandbox"),
            Err(TopologyError::ForeignEnv { .. })
        ));
        assert!(matches!(
            t.check_publish_target("events.dlq.local"),
            Err(TopologyError::ForeignEnv { .. })
        ));
    }

    #[test]
    fn accepts_own_topics_by_id_and_path() {
        let t = Topology::new(Env::Sandbox, "suitex-sandbox");
        for kind in TopicKind::all() {
            assert_eq!(t.check_publish_target(&t.topic_id(kind)), Ok(kind));
            assert_eq!(t.check_publish_target(&t.topic_path(kind)), Ok(kind));
        }
    }

    #[test]
    fn unknown_topics_refused() {
        let t = Topology::new(Env::Sandbox, "suitex-sandbox");
        for target in [
            "",
            "events.raw",
            "events.raw.",
            "events.audit.sandbox",
            "orders.raw.sandbox",
            "events.raw.sandbox.extra",
            "events.raw.sandbox/x",
            "projects/suitex-sandbox/topics",
            "projects/suitex-sandbox/subscriptions/events.raw.sandbox",
            // Right name, someone else's project.
            "projects/other-proj/topics/events.raw.sandbox",
            "projects/suitex-sandbox/topics/events.raw.sandbox-merge-sub",
        ] {
            assert_eq!(
                t.check_publish_target(target),
                Err(TopologyError::UnknownTopic {
                    topic: target.to_owned()
                }),
                "{target}"
            );
        }
    }

    #[test]
    fn specs_for_all_subscriptions() {
        let t = Topology::new(Env::Sandbox, "p-123456");
        let dlq = Some("projects/p-123456/topics/events.dlq.sandbox".to_owned());

        let merge = t.subscription_spec(ConsumerKind::Merge);
        assert_eq!(
            merge,
            SubscriptionSpec {
                name: "projects/p-123456/subscriptions/events.raw.sandbox-merge-sub".into(),
                topic: "projects/p-123456/topics/events.raw.sandbox".into(),
                ack_deadline_seconds: 60,
                enable_message_ordering: true,
                dead_letter_topic: dlq.clone(),
                max_delivery_attempts: Some(5),
                retry_min_backoff: None,
                retry_max_backoff: None,
                message_retention: MESSAGE_RETENTION,
            }
        );

        for (c, id) in [
            (ConsumerKind::Netsuite, "events.merged.sandbox-netsuite-sub"),
            (ConsumerKind::Suitex, "events.merged.sandbox-suitex-sub"),
        ] {
            assert_eq!(
                t.subscription_spec(c),
                SubscriptionSpec {
                    name: format!("projects/p-123456/subscriptions/{id}"),
                    topic: "projects/p-123456/topics/events.merged.sandbox".into(),
                    ack_deadline_seconds: 60,
                    enable_message_ordering: true,
                    dead_letter_topic: dlq.clone(),
                    max_delivery_attempts: Some(5),
                    retry_min_backoff: None,
                    retry_max_backoff: None,
                    message_retention: MESSAGE_RETENTION,
                }
            );
        }

        assert_eq!(
            t.subscription_spec(ConsumerKind::Retry),
            SubscriptionSpec {
                name: "projects/p-123456/subscriptions/events.error.sandbox-retry-sub".into(),
                topic: "projects/p-123456/topics/events.error.sandbox".into(),
                ack_deadline_seconds: 60,
                enable_message_ordering: false,
                dead_letter_topic: dlq,
                max_delivery_attempts: Some(5),
                retry_min_backoff: Some(Duration::from_secs(10)),
                retry_max_backoff: Some(Duration::from_secs(600)),
                message_retention: MESSAGE_RETENTION,
            }
        );

        assert_eq!(
            t.subscription_spec(ConsumerKind::Park),
            SubscriptionSpec {
                name: "projects/p-123456/subscriptions/events.dlq.sandbox-sub".into(),
                topic: "projects/p-123456/topics/events.dlq.sandbox".into(),
                ack_deadline_seconds: 60,
                enable_message_ordering: false,
                dead_letter_topic: None,
                max_delivery_attempts: None,
                retry_min_backoff: None,
                retry_max_backoff: None,
                message_retention: MESSAGE_RETENTION,
            }
        );

        let all = t.subscription_specs();
        assert_eq!(all.len(), 5);
        assert!(all.iter().all(|s| s.ack_deadline_seconds == 60));
    }

    #[test]
    fn stage_names_are_the_wire_values_and_parse_back() {
        let names: Vec<_> = StageName::ALL.iter().map(|n| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "merge",
                "deliver.netsuite",
                "deliver.suitex",
                "retry",
                "park"
            ]
        );
        for n in StageName::ALL {
            assert_eq!(n.as_str().parse::<StageName>(), Ok(n));
        }
        assert!("deliver".parse::<StageName>().is_err());
        assert_eq!(
            StageName::of_consumer(ConsumerKind::Netsuite),
            StageName::DeliverNetsuite
        );
    }
}
