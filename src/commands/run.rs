//! `event-backbone run`: the daemon. SIGTERM/SIGINT drain and exit 0;
//! SIGUSR1 replays every parked dead letter.

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use backbone::app::Application;
use backbone::config::Settings;
use backbone::store::dead_letters::DlqFilter;

pub async fn run(settings: Settings) -> anyhow::Result<i32> {
    let shutdown = CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let app = Application::build(settings).await?;
    let sd = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received; draining."),
            _ = int.recv() => tracing::info!("SIGINT received; draining."),
        }
        sd.cancel();
    });
    let (store, publishers) = (app.store.clone(), app.publishers.clone());
    let sd = shutdown.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = sd.cancelled() => return,
                got = usr1.recv() => if got.is_none() { return },
            }
            tracing::info!("SIGUSR1 received; replaying parked dead letters.");
            if let Err(e) = backbone::dlq::replay_by(
                &store,
                &publishers,
                &DlqFilter::default(),
                false,
                "signal",
            )
            .await
            {
                tracing::error!(error = %e, "DLQ replay failed; parked rows stay pending.");
            }
        }
    });
    app.run(shutdown).await?;
    Ok(0)
}
