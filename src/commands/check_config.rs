//! `event-backbone check-config`: the validated configuration (secrets
//! redacted) and the topology derived from it.

use serde_json::json;

use crate::config::Settings;
use crate::topology::{ConsumerKind, TopicKind};

pub fn run(settings: Settings) -> anyhow::Result<i32> {
    let t = settings.topology();
    let topics: Vec<String> = TopicKind::all().iter().map(|k| t.topic_path(*k)).collect();
    let subs: Vec<serde_json::Value> = ConsumerKind::all()
        .iter()
        .map(|c| {
            let s = t.subscription_spec(*c);
            json!({
                "consumer": c.as_str(),
                "enabled": settings.consumers.get(*c).enabled,
                "subscription": s.name,
                "topic": s.topic,
                "ack_deadline_seconds": s.ack_deadline_seconds,
                "message_ordering": s.enable_message_ordering,
                "dead_letter_topic": s.dead_letter_topic,
                "max_delivery_attempts": s.max_delivery_attempts,
                "retry_min_backoff_s": s.retry_min_backoff.map(|d| d.as_secs()),
                "retry_max_backoff_s": s.retry_max_backoff.map(|d| d.as_secs()),
            })
        })
        .collect();
    let out = json!({
        "config": settings.redacted(),
        "topology": {"topics": topics, "subscriptions": subs},
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(0)
}
