//! Command-line interface: one binary, one subcommand per task (docs/spec.md §7).
//! Exit codes: 0 ok, 1 runtime failure, 2 bad usage or invalid configuration.

use clap::{Parser, Subcommand};

use crate::commands;

#[derive(Debug, Parser)]
#[command(
    name = "event-backbone",
    version,
    about = "Sync engine between SuiteX and NetSuite over Google Cloud Pub/Sub."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: every enabled consumer, the outbox relay, the HTTP endpoints.
    Run,
    /// Create the env's topics and subscriptions (idempotent; reports drift).
    Provision,
    /// Apply the embedded database migrations.
    Migrate,
    /// Publish a raw event (JSON from a file or stdin) to events.raw.{env}.
    Publish(commands::publish::Args),
    /// Validate the configuration and print it (secrets redacted) with the derived topology.
    CheckConfig(commands::check_config::Args),
    /// Inspect and replay parked dead letters (works without a running daemon).
    Dlq(commands::dlq::Args),
    /// Pause, resume and list the delivery targets (stored in the database: every replica obeys).
    Targets(commands::targets::Args),
    /// Resend records' current merged state to a target (`records resync`), audited.
    Records(commands::records::Args),
    /// A record's event history, and its state rebuilt at any sequence number.
    Events(commands::events::Args),
    /// Compare every record's live projection with a full replay; exit 1 on drift.
    Verify(commands::verify::Args),
    /// Why each field of a record holds its value: the event that set it, its conflicts, its deliveries.
    Explain(commands::explain::Args),
    /// Retention: move rows older than `retention.keep` to the snapshot bucket, leaving checkpoints; restore them.
    Archive(commands::archive::Args),
    /// Run the scripted story of docs/spec.md §9 on the embedded default (emulator, SQLite, stand-in targets).
    Demo(commands::demo::Args),
    /// Check Pub/Sub, the event store and the snapshot store with the configured credentials.
    Doctor,
    /// Serve the event store to an assistant over MCP on stdio (`run` also serves it at /mcp on the admin listener).
    Mcp,
}

/// Parses arguments, runs the command, returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return 1;
        }
    };
    rt.block_on(dispatch(cli.command))
}

async fn dispatch(cmd: Command) -> i32 {
    let settings = match backbone::config::load() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    // Outside `local`, the daemon and its checks refuse a half-done
    // configuration (check-config does too, unless --lenient).
    if matches!(cmd, Command::Run | Command::Doctor) {
        if let Err(e) = settings.check_complete() {
            eprintln!("error: {e}");
            return 2;
        }
    }
    // The demo logs the daemon to a file of its own: stdout tells the story.
    if !matches!(cmd, Command::Demo(_)) {
        backbone::telemetry::init(&settings);
    }
    let result = match cmd {
        Command::Run => commands::run::run(settings).await,
        Command::Provision => commands::provision::run(settings).await,
        Command::Migrate => commands::migrate::run(settings).await,
        Command::Publish(a) => commands::publish::run(settings, a).await,
        Command::CheckConfig(a) => commands::check_config::run(settings, a),
        Command::Dlq(a) => commands::dlq::run(settings, a).await,
        Command::Targets(a) => commands::targets::run(settings, a).await,
        Command::Records(a) => commands::records::run(settings, a).await,
        Command::Events(a) => commands::events::run(settings, a).await,
        Command::Verify(a) => commands::verify::run(settings, a).await,
        Command::Explain(a) => commands::explain::run(settings, a).await,
        Command::Archive(a) => commands::archive::run(settings, a).await,
        Command::Demo(a) => commands::demo::run(settings, a).await,
        Command::Doctor => commands::doctor::run(settings).await,
        Command::Mcp => commands::mcp::run(settings).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            // A setting found unusable only when used (a credential file,
            // a private key) is still a configuration error.
            if e.downcast_ref::<backbone::config::ConfigError>().is_some() {
                2
            } else {
                1
            }
        }
    }
}
