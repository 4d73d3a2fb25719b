//! `event-backbone migrate`: applies the embedded migrations. Run it with the
//! administrator's database credentials before the daemon (docs/spec.md §10): the
//! runtime user may not change the schema, and `run` refuses a schema behind
//! it.

use backbone::config::Settings;
use backbone::store::schema;

pub async fn run(settings: Settings) -> anyhow::Result<i32> {
    let store = backbone::app::create_store(&settings).await?;
    let before = schema::inspect(&store).await?;
    store.migrate().await?;
    let after = schema::inspect(&store).await?;
    store.close().await;
    let target = format!("{} ({:?})", settings.database.url_masked(), store.backend());
    let newly: Vec<String> = before
        .missing
        .iter()
        .filter(|m| !after.missing.contains(m))
        .map(ToString::to_string)
        .collect();
    let latest = after
        .latest()
        .map_or_else(|| "none".to_string(), ToString::to_string);
    if newly.is_empty() {
        println!(
            "{target} is up to date: all {} migrations applied, the latest {latest}.",
            after.embedded.len()
        );
    } else {
        println!("Applied to {target}: {}.", newly.join(", "));
        println!(
            "All {} migrations applied, the latest {latest}.",
            after.embedded.len()
        );
    }
    if after.is_ahead() {
        println!("Note: {}.", after.ahead_message());
    }
    Ok(0)
}
