//! `event-backbone bench`: throughput and latency figures (placeholder until the bench lands).

use crate::config::Settings;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn run(_settings: Settings, _args: Args) -> anyhow::Result<i32> {
    anyhow::bail!("bench is not implemented yet")
}
