//! `event-backbone migrate`: applies the embedded migrations.

use crate::config::Settings;

pub async fn run(settings: Settings) -> anyhow::Result<i32> {
    let store = crate::app::connect_store(&settings).await?;
    store.migrate().await?;
    println!(
        "Migrations applied to {} ({:?}).",
        settings.database.url_masked(),
        store.backend()
    );
    Ok(0)
}
