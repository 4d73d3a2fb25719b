//! `event-backbone explain`: why each field of a record holds its value, the
//! conflicts it won or lost, and whether each target has it.

use backbone::config::Settings;
use backbone::explain::{self, ExplainError};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The record's type, e.g. `project`.
    #[arg(long)]
    pub record_type: String,
    /// The record's id, e.g. `42`.
    #[arg(long)]
    pub record_id: String,
    /// Only this field.
    #[arg(long)]
    pub field: Option<String>,
    /// Print JSON (for tools) instead of text.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(settings: Settings, args: Args) -> anyhow::Result<i32> {
    let store = backbone::app::connect_store(&settings).await?;
    let policy = settings.merge_policy();
    let result = explain::explain_record(
        &store,
        &policy,
        &args.record_type,
        &args.record_id,
        args.field.as_deref(),
    )
    .await;
    store.close().await;
    match result {
        Ok(x) if args.json => println!("{}", serde_json::to_string_pretty(&x)?),
        Ok(x) => print!("{}", explain::text::render(&x)),
        // Not an internal failure: say so plainly, without an error chain.
        Err(e @ (ExplainError::UnknownRecord { .. } | ExplainError::UnknownField { .. })) => {
            eprintln!("error: {e}");
            return Ok(1);
        }
        Err(e) => return Err(e.into()),
    }
    Ok(0)
}
