//! `event-backbone check-config`: the validated configuration (secrets
//! redacted) and the topology derived from it; with `--explain`, which
//! layer set each value.
//!
//! Outside `local` the configuration must also be complete (targets with a
//! real URL and credentials, a database password: `Settings::incomplete`),
//! as `run` and `doctor` require; `--lenient` checks only its shape.

use serde_json::json;

use backbone::config::{self, Settings};
use backbone::topology::{ConsumerKind, TopicKind};

#[derive(Debug, Default, clap::Args)]
pub struct Args {
    /// For each value, the layer that set it (built-in default, a file of
    /// the config dir, a BACKBONE_ variable, a `_file` secret); secrets stay redacted.
    #[arg(long)]
    pub explain: bool,
    /// Skip the completeness checks outside `local` (placeholder hosts,
    /// missing credentials or database password): keys, types and values are still checked.
    #[arg(long)]
    pub lenient: bool,
}

pub fn run(settings: Settings, args: Args) -> anyhow::Result<i32> {
    if !args.lenient {
        settings.check_complete()?;
    }
    if args.explain {
        return explain(&settings);
    }
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

/// One line per value: key, value (secrets masked), the layer that set it.
fn explain(settings: &Settings) -> anyhow::Result<i32> {
    let dir = config::process_config_dir()?;
    let rows = config::explain(settings, &dir, &config::process_env())?;
    let key_w = rows.iter().map(|r| r.key.len()).max().unwrap_or(0);
    let val_w = rows
        .iter()
        .map(|r| r.value.chars().count().min(60))
        .max()
        .unwrap_or(0);
    println!(
        "Config dir: {} (files there override the built-in ones)",
        dir.display()
    );
    for r in rows {
        println!("{:<key_w$}  {:<val_w$}  {}", r.key, r.value, r.origin);
    }
    Ok(0)
}
