//! `event-backbone run`: the daemon. SIGTERM/SIGINT drain and exit 0.

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::app::Application;
use crate::config::Settings;

pub async fn run(settings: Settings) -> anyhow::Result<i32> {
    let shutdown = CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let app = Application::build(settings).await?;
    let sd = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received; draining."),
            _ = int.recv() => tracing::info!("SIGINT received; draining."),
        }
        sd.cancel();
    });
    app.run(shutdown).await?;
    Ok(0)
}
