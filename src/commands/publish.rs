//! `event-backbone publish`: a raw event onto events.raw.{env} with the
//! right ordering key — what an operator or a test uses.

use std::path::PathBuf;

use bytes::Bytes;

use backbone::config::Settings;
use backbone::model::raw_event::parse_raw_event;
use backbone::pubsub::publisher::Publishers;
use backbone::topology::TopicKind;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// JSON file with the raw event; stdin when absent or `-`.
    pub file: Option<PathBuf>,
    /// Publish even if the event does not validate (to exercise the dlq path).
    #[arg(long)]
    pub allow_invalid: bool,
}

pub async fn run(settings: Settings, args: Args) -> anyhow::Result<i32> {
    let data = super::input::read_input(args.file.as_ref())?;
    let ordering_key = match parse_raw_event(&data) {
        Ok(ev) => ev.ordering_key(),
        Err(e) if args.allow_invalid => {
            eprintln!("warning: publishing an invalid event as asked: {e}");
            String::new()
        }
        Err(e) => {
            eprintln!("error: {e} (use --allow-invalid to publish it anyway)");
            return Ok(2);
        }
    };
    let publishers =
        Publishers::new(settings.topology(), &backbone::app::endpoint(&settings)).await?;
    let id = publishers
        .publish_to(
            TopicKind::Raw,
            Bytes::from(data),
            Default::default(),
            &ordering_key,
        )
        .await?;
    publishers.flush().await;
    println!(
        "published message {id} to {} (ordering key {ordering_key:?})",
        settings.topology().topic_id(TopicKind::Raw)
    );
    Ok(0)
}
