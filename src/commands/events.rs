//! `event-backbone events list|replay`: a record's history and its state
//! rebuilt at any sequence number (docs/spec.md §7).

use chrono::{DateTime, Utc};

use backbone::config::Settings;
use backbone::history::{self, EventPage, ListQuery, Replayed, MAX_LIMIT};
use backbone::model::raw_event::Source;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub which: Which,
}

#[derive(Debug, clap::Subcommand)]
pub enum Which {
    /// A record's events, newest first, with their fingerprints and audit outcomes.
    List(ListArgs),
    /// Rebuild a record's merged state by folding its events through the merge rules.
    Replay(ReplayArgs),
}

#[derive(Debug, clap::Args)]
pub struct RecordArgs {
    /// The record's type, e.g. `project`.
    #[arg(long)]
    pub record_type: String,
    /// The record's id, e.g. `42`.
    #[arg(long)]
    pub record_id: String,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub record: RecordArgs,
    /// Events per page (1-1000).
    #[arg(long, default_value_t = history::DEFAULT_LIMIT,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_LIMIT)))]
    pub limit: u32,
    /// Only events before this sequence number (the next-page cursor).
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
    pub before_seq: Option<i64>,
    /// Only events from this source.
    #[arg(long, value_parser = source_parser())]
    pub source: Option<Source>,
    /// Only events whose timestamp is at or after this instant (RFC 3339).
    #[arg(long, value_parser = parse_time)]
    pub since: Option<DateTime<Utc>>,
    /// Only events whose timestamp is before this instant (RFC 3339).
    #[arg(long, value_parser = parse_time)]
    pub until: Option<DateTime<Utc>>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub record: RecordArgs,
    /// Stop after this sequence number (default: the whole history).
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
    pub to_seq: Option<i64>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The sources as clap's possible values, so `--help` and a typo's error
/// list them.
fn source_parser() -> impl clap::builder::TypedValueParser<Value = Source> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new([Source::Suitex.as_str(), Source::Netsuite.as_str()])
        .try_map(|s| s.parse::<Source>())
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("not an RFC 3339 timestamp ({e}); e.g. 2026-03-13T20:00:00Z"))
}

pub async fn run(settings: Settings, args: Args) -> anyhow::Result<i32> {
    let store = backbone::app::connect_store(&settings).await?;
    let code = match args.which {
        Which::List(a) => {
            let q = ListQuery {
                limit: a.limit,
                before_seq: a.before_seq,
                source: a.source,
                since: a.since,
                until: a.until,
            };
            let page =
                history::list(&store, &a.record.record_type, &a.record.record_id, &q).await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&page)?);
            } else {
                print_page(&page);
            }
            0
        }
        Which::Replay(a) => {
            let policy = settings.merge_policy();
            let r = history::replay(
                &store,
                &policy,
                &a.record.record_type,
                &a.record.record_id,
                a.to_seq,
            )
            .await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&r.view())?);
            } else {
                print_replay(&r);
            }
            0
        }
    };
    store.close().await;
    Ok(code)
}

fn print_page(page: &EventPage) {
    let key = format!("{}/{}", page.record_type, page.record_id);
    if page.events.is_empty() {
        println!("{key}: no events match.");
        return;
    }
    println!("{key}: {} events, newest first", page.events.len());
    for e in &page.events {
        let ev = &e.event;
        let outcomes: Vec<String> = e
            .audit
            .iter()
            .map(|a| format!("{}:{}", a.stage, a.outcome))
            .collect();
        let fp = e
            .fingerprint
            .as_deref()
            .map_or("-", |f| &f[..f.len().min(12)]);
        println!(
            "  seq {:<5} {}  {:<8}  base {:<4} fp {fp}  [{}]",
            ev.sequence_num,
            ev.timestamp,
            ev.source,
            ev.base_version,
            outcomes.join(", ")
        );
        println!("            changes {}", ev.changes);
    }
    match page.next_before_seq {
        Some(s) => println!("more: add --before-seq {s} for the next page"),
        None => println!("(end of history)"),
    }
}

fn print_replay(r: &Replayed) {
    let upto = r
        .to_seq
        .map_or_else(|| "head".to_string(), |s| format!("sequence {s}"));
    println!(
        "{}/{} replayed to {upto}: {} events (last sequence {}) in {:.3} ms",
        r.record_type,
        r.record_id,
        r.events_replayed,
        r.last_seq,
        r.elapsed.as_secs_f64() * 1000.0
    );
    println!("version {}", r.state.version);
    for (name, f) in &r.state.fields {
        println!(
            "  {name} = {}  (v{} by {} at {})",
            f.value,
            f.version,
            f.source,
            backbone::model::fingerprint::format_timestamp(&f.timestamp)
        );
    }
}
