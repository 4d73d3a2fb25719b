//! `event-backbone dlq list|show|replay|discard`: works against the database
//! and the topics directly, so no running daemon is needed. Every
//! subcommand prints a table (or key: value lines) by default and JSON with
//! `--json`; the work is done by `ops::dlq`, as for the admin API and MCP.

use chrono::{DateTime, Utc};

use backbone::config::Settings;
use backbone::model::raw_event::Source;
use backbone::ops::dlq::{self as ops_dlq, ListReport, ReplayOutcome, Selection, ShowReport};
use backbone::ops::{Actor, OpsError};
use backbone::pubsub::publisher::Publishers;
use backbone::stages::deliver;
use backbone::topology::StageName;

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
    /// Only deliveries to this target (the stage deliver.<target>).
    #[arg(long, value_enum, conflicts_with = "stage")]
    pub target: Option<TargetName>,
    /// Only rows parked at or after this time (RFC 3339).
    #[arg(long)]
    pub since: Option<DateTime<Utc>>,
    /// Only rows parked before this time (RFC 3339).
    #[arg(long)]
    pub until: Option<DateTime<Utc>>,
    /// Only this issue: the GROUP column of `dlq list` (stage, reason and
    /// normalised message).
    #[arg(long)]
    pub group: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TargetName {
    Netsuite,
    Suitex,
}

impl TargetName {
    fn source(self) -> Source {
        match self {
            TargetName::Netsuite => Source::Netsuite,
            TargetName::Suitex => Source::Suitex,
        }
    }
}

/// A dead letter's status (`--status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Status {
    /// Open: waiting for an operator (what the alerts count).
    Parked,
    Replayed,
    /// Closed by itself: a later version reached the target.
    Superseded,
    /// Closed by an operator with a reason.
    Discarded,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Parked => "parked",
            Status::Replayed => "replayed",
            Status::Superseded => "superseded",
            Status::Discarded => "discarded",
        }
    }
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
            Stage::Merge => backbone::stages::merge::batch::STAGE,
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
            Reason::Unpublishable => backbone::stages::park::UNPUBLISHABLE,
        }
    }
}

impl Filters {
    fn selection(&self) -> Selection {
        Selection {
            ids: self.ids.clone(),
            stage: self.stage.map(|s| s.as_str().to_owned()),
            target: self.target.map(|t| t.source().as_str().to_owned()),
            reason: self.reason.map(|r| r.as_str().to_owned()),
            record_type: self.record_type.clone(),
            record_id: self.record_id.clone(),
            since: self.since,
            until: self.until,
            group: self.group.clone(),
            status: None,
            all: false,
        }
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// List dead letters: the parked (open) ones unless --all or --status.
    List {
        #[command(flatten)]
        filters: Filters,
        /// Every status (parked, replayed, superseded, discarded).
        #[arg(long)]
        all: bool,
        /// Only this status.
        #[arg(long, value_enum, conflicts_with = "all")]
        status: Option<Status>,
        /// Rows to list (their data is never read; `dlq show` reads it).
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// List the rows after this id (paging).
        #[arg(long)]
        after_id: Option<i64>,
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter: its data, attributes, error history, status,
    /// and for a delivery the body sent and the target's answer.
    Show {
        id: i64,
        #[arg(long)]
        json: bool,
    },
    /// Republish parked dead letters to the error topic (attempt=0,
    /// replay=true); paced by the targets' limiters like every delivery.
    Replay {
        #[command(flatten)]
        filters: Filters,
        /// Say what would be replayed (how many, which records, which
        /// targets and issues) without publishing.
        #[arg(long, visible_alias = "preview")]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Close parked dead letters without replaying them: kept, marked
    /// `discarded` with who and why, audited, no longer alerted on.
    Discard {
        /// Dead letter ids.
        #[arg(required = true)]
        ids: Vec<i64>,
        /// Why (required): recorded with the row and its audit row.
        #[arg(long)]
        reason: String,
        #[arg(long)]
        json: bool,
    },
}

fn record(d: &backbone::store::dead_letters::DeadLetter) -> String {
    format!(
        "{}:{}",
        d.record_type.as_deref().unwrap_or("-"),
        d.record_id.as_deref().unwrap_or("-")
    )
}

fn print_list(r: &ListReport) {
    println!(
        "{:>6}  {:<10} {:<17} {:<9} {:>3}  {:<24} {:<12} {:<6} LAST ERROR",
        "ID", "STATUS", "STAGE", "REASON", "TRY", "RECORD", "GROUP", "REPLAY"
    );
    for row in &r.rows {
        let d = &row.dead_letter;
        let err = d.last_error.as_deref().unwrap_or("").replace('\n', " ");
        println!(
            "{:>6}  {:<10} {:<17} {:<9} {:>3}  {:<24} {:<12} {:<6} {}",
            d.id,
            d.status,
            d.stage,
            d.reason,
            d.attempts,
            record(d),
            row.group,
            d.replay_count,
            backbone::model::envelope::truncate(&err, 100)
        );
    }
    println!(
        "{} row(s); {} parked in all.{}",
        r.rows.len(),
        r.parked_total,
        r.next_after_id
            .map(|id| format!(" More: --after-id {id}"))
            .unwrap_or_default()
    );
}

fn print_show(r: &ShowReport) {
    let d = &r.dead_letter;
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    println!("id:             {}", d.id);
    println!("status:         {}", d.status);
    if d.status_actor.is_some() {
        println!(
            "  changed by:   {} at {} ({})",
            opt(&d.status_actor),
            opt(&d.status_at),
            opt(&d.status_reason)
        );
    }
    println!("stage:          {}", d.stage);
    println!("reason:         {}", d.reason);
    println!("attempts:       {}", d.attempts);
    println!("record:         {}", record(d));
    println!("fingerprint:    {}", opt(&d.fingerprint));
    println!("group:          {}", r.group);
    println!("parked at:      {}", d.parked_at);
    println!(
        "replays:        {} (last {})",
        d.replay_count,
        opt(&d.replayed_at)
    );
    println!("last error:     {}", opt(&d.last_error));
    println!("error history:");
    for e in &d.errors {
        println!("  - {e}");
    }
    let mut attrs: Vec<_> = d.attributes.iter().collect();
    attrs.sort();
    println!("attributes:");
    for (k, v) in attrs {
        println!("  {k}: {}", backbone::model::envelope::truncate(v, 200));
    }
    println!("data:           {}", r.data);
    if let Some(body) = &r.sent.sent_body {
        println!("body sent:      {body}");
    }
    if let Some(a) = &r.sent.answer {
        println!(
            "answer:         HTTP {} {}{}",
            a.status
                .map(|s| s.to_string())
                .unwrap_or_else(|| "-".into()),
            a.netsuite_code.clone().unwrap_or_default(),
            a.error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        );
        if let Some(b) = &a.body {
            println!("answer body:    {b}");
        }
    }
}

fn print_replay(r: &ReplayOutcome) {
    let p = &r.preview;
    let verb = if r.dry_run {
        "would replay"
    } else {
        "selected"
    };
    println!(
        "{verb} {} dead letter(s) over {} record(s){}",
        p.count,
        p.records_total,
        if p.truncated {
            " (more match: one replay takes 10,000)"
        } else {
            ""
        }
    );
    for (stage, n) in &p.stages {
        println!("  stage {stage}: {n}");
    }
    for (reason, n) in &p.reasons {
        println!("  reason {reason}: {n}");
    }
    println!("issues:");
    for g in &p.groups {
        println!(
            "  {} {:<17} {:<9} {:>5} over {} record(s), {} .. {}: {}",
            g.group, g.stage, g.reason, g.count, g.records, g.first_seen, g.last_seen, g.message
        );
    }
    let first: Vec<_> = p.records.iter().take(10).cloned().collect();
    if !first.is_empty() {
        println!("first records: {}", first.join(", "));
    }
    if !r.dry_run {
        println!(
            "replayed {}, skipped {} (another replay had them), failed {}",
            r.replayed.len(),
            r.skipped.len(),
            r.failed.len()
        );
        for (id, e) in &r.failed {
            println!("  {id}: {e}");
        }
    }
}

fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// An operator error: bad input is exit 2, anything else exit 1.
fn failed(e: OpsError) -> anyhow::Result<i32> {
    eprintln!("error: {e}");
    Ok(match e {
        OpsError::Invalid(_) => 2,
        _ => 1,
    })
}

pub async fn run(settings: Settings, args: Args) -> anyhow::Result<i32> {
    let store = backbone::app::connect_store(&settings).await?;
    match args.cmd {
        Cmd::List {
            filters,
            all,
            status,
            limit,
            after_id,
            json,
        } => {
            let mut sel = filters.selection();
            sel.all = all;
            sel.status = status.map(|s| s.as_str().to_owned());
            let report = match ops_dlq::list(&store, &sel, limit, after_id).await {
                Ok(r) => r,
                Err(e) => return failed(e),
            };
            if json {
                print_json(&report)?;
            } else {
                print_list(&report);
            }
        }
        Cmd::Show { id, json } => {
            let report = match ops_dlq::show(&store, id).await {
                Ok(r) => r,
                Err(e) => return failed(e),
            };
            if json {
                print_json(&report)?;
            } else {
                print_show(&report);
            }
        }
        Cmd::Replay {
            filters,
            dry_run,
            json,
        } => {
            let publishers =
                Publishers::new(settings.topology(), &backbone::app::endpoint(&settings)).await?;
            let sel = filters.selection();
            let outcome = ops_dlq::replay(&store, &publishers, &sel, &Actor::cli(), dry_run).await;
            publishers.flush().await;
            let report = match outcome {
                Ok(r) => r,
                Err(e) => return failed(e),
            };
            if json {
                print_json(&report)?;
            } else {
                print_replay(&report);
            }
            if !report.failed.is_empty() {
                return Ok(1);
            }
        }
        Cmd::Discard { ids, reason, json } => {
            let report = match ops_dlq::discard(&store, &ids, &Actor::cli(), &reason).await {
                Ok(r) => r,
                Err(e) => return failed(e),
            };
            if json {
                print_json(&report)?;
            } else {
                println!(
                    "discarded {} dead letter(s): {:?}",
                    report.changed.len(),
                    report.changed
                );
                for (id, why) in &report.unchanged {
                    println!("  {id} not discarded: {why}");
                }
            }
            if report.changed.is_empty() {
                return Ok(1);
            }
        }
    }
    Ok(0)
}
