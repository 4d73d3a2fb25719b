//! `event-backbone dlq list|show|replay`: works against the database and the
//! topics directly, so no running daemon is needed.

use serde_json::json;

use crate::config::Settings;
use crate::model::raw_event::Source;
use crate::pubsub::publisher::Publishers;
use crate::stages::deliver;
use crate::store::dead_letters::{DeadLetter, DlqFilter};
use crate::topology::StageName;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Debug, clap::Args)]
pub struct Filters {
    /// Only these row ids (repeatable).
    #[arg(long = "id")]
    pub ids: Vec<i64>,
    /// Only this stage.
    #[arg(long, value_enum)]
    pub stage: Option<Stage>,
    #[arg(long)]
    pub record_type: Option<String>,
    #[arg(long)]
    pub record_id: Option<String>,
    /// Only this dead reason.
    #[arg(long, value_enum)]
    pub reason: Option<Reason>,
}

/// The stages a dead letter is parked for: a typo must be a usage error, not
/// a filter that matches nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Stage {
    Merge,
    #[value(name = "deliver.netsuite")]
    DeliverNetsuite,
    #[value(name = "deliver.suitex")]
    DeliverSuitex,
    /// An error envelope the retry router could not route.
    Retry,
    /// A broker dead letter from a subscription the park stage does not know.
    Unknown,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Merge => crate::stages::merge::batch::STAGE,
            Stage::DeliverNetsuite => deliver::stage_name(Source::Netsuite),
            Stage::DeliverSuitex => deliver::stage_name(Source::Suitex),
            Stage::Retry => StageName::Retry.as_str(),
            Stage::Unknown => "unknown",
        }
    }
}

/// The `dead_reason` values the stages and the runtime write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Reason {
    /// The message can never be processed as it is.
    Invalid,
    /// The target refused it for good.
    Permanent,
    /// Retries used up.
    Exhausted,
    /// A missing version was not filled in time.
    Gap,
    /// Pub/Sub would not take its error envelope; parked directly.
    Unpublishable,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Invalid => "invalid",
            Reason::Permanent => "permanent",
            Reason::Exhausted => "exhausted",
            Reason::Gap => "gap",
            Reason::Unpublishable => crate::stages::park::UNPUBLISHABLE,
        }
    }
}

impl Filters {
    fn filter(&self, include_replayed: bool) -> DlqFilter {
        DlqFilter {
            ids: self.ids.clone(),
            stage: self.stage.map(|s| s.as_str().to_owned()),
            record_type: self.record_type.clone(),
            record_id: self.record_id.clone(),
            reason: self.reason.map(|r| r.as_str().to_owned()),
            include_replayed,
        }
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// List parked dead letters (pending ones unless --all).
    List {
        #[command(flatten)]
        filters: Filters,
        /// Include rows already replayed.
        #[arg(long)]
        all: bool,
        /// Rows to list (their data is never read; `dlq show` reads it).
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// List the rows after this id (paging).
        #[arg(long)]
        after_id: Option<i64>,
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter with its data, attributes and error history.
    Show { id: i64 },
    /// Republish pending dead letters to the error topic (attempt=0, replay=true).
    Replay {
        #[command(flatten)]
        filters: Filters,
        /// List what would be replayed without publishing.
        #[arg(long)]
        dry_run: bool,
    },
}

fn summary(d: &DeadLetter) -> serde_json::Value {
    json!({
        "id": d.id, "stage": d.stage, "reason": d.reason, "attempts": d.attempts,
        "record_type": d.record_type, "record_id": d.record_id, "fingerprint": d.fingerprint,
        "last_error": d.last_error, "parked_at": d.parked_at, "replay_count": d.replay_count,
        "replayed_at": d.replayed_at, "source_subscription": d.source_subscription,
    })
}

pub async fn run(settings: Settings, args: Args) -> anyhow::Result<i32> {
    let store = crate::app::connect_store(&settings).await?;
    match args.cmd {
        Cmd::List {
            filters,
            all,
            limit,
            after_id,
            json,
        } => {
            let f = filters.filter(all);
            let mut rows = Vec::new();
            let mut after = after_id;
            let want = limit.clamp(1, 10_000);
            while (rows.len() as i64) < want {
                let page = store
                    .dead_letter_page(&f, after, (want - rows.len() as i64).min(1000))
                    .await?;
                let Some(last) = page.last() else { break };
                after = Some(last.id);
                rows.extend(page);
            }
            if json {
                let v: Vec<_> = rows.iter().map(summary).collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "{:>6}  {:<17} {:<9} {:>3}  {:<28} {:<6} LAST ERROR",
                    "ID", "STAGE", "REASON", "TRY", "RECORD", "REPLAY"
                );
                for d in &rows {
                    let record = format!(
                        "{}:{}",
                        d.record_type.as_deref().unwrap_or("-"),
                        d.record_id.as_deref().unwrap_or("-")
                    );
                    let err = d.last_error.as_deref().unwrap_or("").replace('\n', " ");
                    println!(
                        "{:>6}  {:<17} {:<9} {:>3}  {:<28} {:<6} {}",
                        d.id,
                        d.stage,
                        d.reason,
                        d.attempts,
                        record,
                        d.replay_count,
                        crate::model::envelope::truncate(&err, 100)
                    );
                }
                println!("{} row(s).", rows.len());
            }
        }
        Cmd::Show { id } => {
            let Some(d) = store.dead_letter(id).await? else {
                eprintln!("error: no dead letter with id {id}");
                return Ok(1);
            };
            let mut v = summary(&d);
            v["errors"] = json!(d.errors);
            v["attributes"] = json!(d.attributes);
            v["ordering_key"] = json!(d.ordering_key);
            v["dlq_message_id"] = json!(d.dlq_message_id);
            v["origin_message_id"] = json!(d.origin_message_id);
            v["data"] = match std::str::from_utf8(&d.data) {
                Ok(s) => json!(s),
                Err(_) => json!({"hex": hex::encode(&d.data)}),
            };
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Cmd::Replay { filters, dry_run } => {
            let publishers =
                Publishers::new(settings.topology(), &crate::app::endpoint(&settings)).await?;
            let report =
                crate::dlq::replay(&store, &publishers, &filters.filter(false), dry_run).await?;
            publishers.flush().await;
            println!("{}", serde_json::to_string_pretty(&report)?);
            if !report.failed.is_empty() {
                return Ok(1);
            }
        }
    }
    Ok(0)
}
