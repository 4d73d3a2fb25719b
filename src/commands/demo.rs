//! `event-backbone demo`: the scripted story of docs/spec.md §9 on the embedded
//! default. Exit 0 when every step went as expected, 1 otherwise (including
//! Ctrl-C before the end, which still shuts everything down cleanly).

use std::path::PathBuf;
use std::sync::Mutex;

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::demo::{self, DemoError, DemoOptions, RunFiles};
use backbone::config::{Settings, ENV_VAR_PUBSUB_EMULATOR_HOST};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory for the demo's SQLite file, log and snapshot folder.
    #[arg(long, default_value = "./data")]
    pub data_dir: PathBuf,
    /// After the story, keep the daemon running (metrics, admin API) until Ctrl-C.
    #[arg(long)]
    pub keep_running: bool,
}

/// The demo ignores the configured settings on purpose: it always runs the
/// embedded `local` default with files of its own, so it can never touch a
/// real database or project. Only `PUBSUB_EMULATOR_HOST` is honoured.
pub async fn run(_settings: Settings, args: Args) -> anyhow::Result<i32> {
    let files = RunFiles::new(&args.data_dir)?;
    init_logging(&files)?;
    let interrupt = CancellationToken::new();
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let on_signal = interrupt.clone();
    let listener = tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        eprintln!("Stopping the demo: draining the daemon and shutting down …");
        on_signal.cancel();
    });
    let opts = DemoOptions {
        files,
        emulator_host: std::env::var(ENV_VAR_PUBSUB_EMULATOR_HOST)
            .ok()
            .filter(|h| !h.is_empty()),
        metrics_port: demo::DEFAULT_METRICS_PORT,
        admin_port: demo::DEFAULT_ADMIN_PORT,
        echo: true,
        keep_running: args.keep_running,
    };
    let outcome = demo::run(opts, interrupt).await;
    listener.abort();
    match outcome.result {
        Ok(()) => Ok(0),
        Err(DemoError::EmulatorMissing { .. }) => {
            eprintln!(
                "The demo needs the Pub/Sub emulator: {}.",
                demo::emulator::INSTALL_HINT
            );
            Ok(1)
        }
        Err(_) => Ok(1),
    }
}

/// The daemon's own log goes to a file: stdout is for the story.
fn init_logging(files: &RunFiles) -> anyhow::Result<()> {
    let file = std::fs::File::create(&files.log)?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,sqlx=warn,h2=warn,hyper=warn")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(Mutex::new(file))
        .try_init();
    Ok(())
}
