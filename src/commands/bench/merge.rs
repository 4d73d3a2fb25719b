//! Merge benchmark (placeholder until it lands).

use crate::config::Settings;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn run(_settings: Settings, _args: Args) -> anyhow::Result<i32> {
    anyhow::bail!("bench merge is not implemented yet")
}
