//! `event-backbone archive`: retention with archival (docs/spec.md §6.1). Moves
//! rows older than `--older-than` (default `retention.keep`) to the
//! snapshot bucket and leaves a checkpoint per record; `archive restore`
//! brings them back; `archive list` shows the recorded segments. Run it with
//! the archive's database users (sql/grants-mysql.sql): `database.url` as
//! `event_archiver` (removes), `retention.recorder_database_url` as
//! `event_archive_recorder` (records), never the runtime one.

use anyhow::{bail, Context};

use backbone::config::Settings;
use backbone::history::archive::{self, Options};

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    pub action: Option<Action>,
    /// Archive rows older than this (e.g. `90d`); default `retention.keep`.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub older_than: Option<std::time::Duration>,
    /// Archive rows created before this instant (RFC 3339) instead.
    #[arg(long, conflicts_with = "older_than")]
    pub before: Option<String>,
    /// Say what would be archived; write and remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Bring archived rows back into the database (for an audit).
    Restore {
        /// A segment's id (its SHA-256, or a unique prefix of it).
        #[arg(long, required_unless_present = "record")]
        segment: Option<String>,
        /// Every archived row of one record, as `type/id`.
        #[arg(long)]
        record: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// The recorded archive segments.
    List {
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(settings: Settings, args: Args) -> anyhow::Result<i32> {
    let store = backbone::app::connect_store(&settings).await?;
    let result = act(&settings, &store, args).await;
    store.close().await;
    result
}

/// The store that records verified segments: `retention.recorder_database_url`
/// (the shipped grants' `event_archive_recorder`), or `database.url` itself.
async fn recorder(settings: &Settings) -> anyhow::Result<Option<backbone::store::Store>> {
    use secrecy::ExposeSecret;
    let Some(url) = &settings.retention.recorder_database_url else {
        return Ok(None);
    };
    let store = backbone::store::Store::connect(
        url.expose_secret(),
        settings.database.max_connections,
        settings.database.connect_timeout,
    )
    .await
    .map(|s| s.with_query_timeout(settings.database.query_timeout))
    .context("connecting to the database as retention.recorder_database_url")?;
    Ok(Some(store))
}

/// Where segments go: `retention.archive_url` (a bucket of its own), or
/// `archive/` in the snapshot bucket.
async fn archive_store(
    settings: &Settings,
) -> anyhow::Result<std::sync::Arc<dyn backbone::snapshots::SnapshotStore>> {
    match &settings.retention.archive_url {
        Some(url) => {
            let mut s = settings.clone();
            s.snapshots.url = url.clone();
            backbone::app::snapshot_store(&s).await
        }
        None => backbone::app::snapshot_store(settings).await,
    }
}

async fn act(
    settings: &Settings,
    store: &backbone::store::Store,
    args: Args,
) -> anyhow::Result<i32> {
    match args.action {
        Some(Action::List { json }) => list(store, json).await?,
        Some(Action::Restore {
            segment,
            record,
            json,
        }) => restore(settings, store, segment.as_deref(), record.as_deref(), json).await?,
        None => archive(settings, store, &args).await?,
    }
    Ok(0)
}

/// `archive list`: the recorded segments and where each one stands.
async fn list(store: &backbone::store::Store, json: bool) -> anyhow::Result<()> {
    let segs = store.segments().await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&segs)?);
        return Ok(());
    }
    for s in &segs {
        let state = match (&s.removed_at, &s.restored_at) {
            (_, Some(r)) => format!("restored {r}"),
            (Some(r), None) => format!("removed {r}"),
            (None, None) => "recorded, rows not yet removed".into(),
        };
        println!(
            "{} {} bytes, cutoff {}, {state}: {}",
            s.id, s.bytes, s.cutoff, s.reference
        );
    }
    println!("{} segments.", segs.len());
    Ok(())
}

/// `archive restore`: a segment's rows, or one record's, back.
async fn restore(
    settings: &Settings,
    store: &backbone::store::Store,
    segment: Option<&str>,
    record: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let record = match record {
        Some(r) => Some(
            r.split_once('/')
                .with_context(|| format!("--record {r:?} is not type/id"))?,
        ),
        None => None,
    };
    let snapshots = archive_store(settings).await?;
    let r = archive::restore(store, snapshots.as_ref(), segment, record).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "Restored {} events, {} audit rows, {} merged events, {} dead letters from {} segments.",
            r.inserted.events,
            r.inserted.audit,
            r.inserted.merged,
            r.inserted.dead_letters,
            r.segments.len()
        );
    }
    Ok(())
}

/// `archive`: everything older than the cutoff that may go, as the
/// recorder and remover users.
async fn archive(
    settings: &Settings,
    store: &backbone::store::Store,
    args: &Args,
) -> anyhow::Result<()> {
    let opts = Options {
        cutoff: cutoff(settings, args)?,
        segment_events: settings.retention.segment_events,
        delete_batch: settings.retention.delete_batch,
        pace: settings.retention.pace,
        dry_run: args.dry_run,
    };
    let snapshots = archive_store(settings).await?;
    let recorder = recorder(settings).await?;
    let r = archive::run_as(
        recorder.as_ref().unwrap_or(store),
        store,
        snapshots.as_ref(),
        &settings.merge_policy(),
        &opts,
    )
    .await;
    let separate = recorder.is_some();
    if let Some(rec) = recorder {
        rec.close().await;
    }
    let r = r.with_context(|| {
        if separate {
            String::from("archiving")
        } else {
            String::from(
                "archiving (with the shipped grants, database.url's user only removes: \
                 set retention.recorder_database_url to the event_archive_recorder user)",
            )
        }
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print_report(&r);
    }
    Ok(())
}

/// Rows created before this go: `--before`, or now less `--older-than`
/// (default `retention.keep`).
fn cutoff(settings: &Settings, args: &Args) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    Ok(match (&args.before, args.older_than) {
        (Some(b), _) => chrono::DateTime::parse_from_rfc3339(b)
            .with_context(|| format!("--before {b:?} is not RFC 3339"))?
            .with_timezone(&chrono::Utc),
        (None, d) => {
            let keep = d.unwrap_or(settings.retention.keep);
            let Ok(keep) = chrono::Duration::from_std(keep) else {
                bail!("--older-than is too large");
            };
            chrono::Utc::now() - keep
        }
    })
}

fn print_report(r: &archive::Report) {
    let verb = if r.dry_run {
        "Would archive"
    } else {
        "Archived"
    };
    println!(
        "{verb} {} events in {} segments (rows created before {}) in {:.0} ms.",
        r.events,
        r.segments.len(),
        r.cutoff,
        r.elapsed_ms
    );
    for s in &r.finished_earlier {
        println!("  finished removing segment {s} (an earlier run stopped part-way)");
    }
    for s in &r.segments {
        println!(
            "  segment {}: {} records, {} events, {} audit rows, {} merged events, {} dead letters, {} bytes ({} uncompressed){}",
            s.id, s.records, s.events, s.audit, s.merged, s.dead_letters, s.bytes, s.uncompressed_bytes,
            if s.reference.is_empty() { String::new() } else { format!(" at {}", s.reference) }
        );
    }
    for h in &r.held {
        println!("  kept {}/{}: {}", h.record_type, h.record_id, h.reason);
    }
}
