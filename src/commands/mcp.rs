//! `event-backbone mcp`: the MCP server on stdio, for an assistant that
//! starts it as a subprocess with the operator's own database credentials
//! (the configuration is read as by every command). stdout carries the
//! protocol only; logs go to stderr.

use rmcp::ServiceExt;

use backbone::config::Settings;
use backbone::mcp::{Ctx, McpServer, Transport};

pub async fn run(settings: Settings) -> anyhow::Result<i32> {
    let store = backbone::app::connect_store(&settings).await?;
    let mut ctx = Ctx::new(store.clone(), &settings, Transport::Stdio);
    if settings.mcp.allow_resync {
        // Only then: a read-only session never needs the targets' credentials.
        ctx = ctx.with_sinks(backbone::app::targets::sinks(&settings)?);
    }
    let server = McpServer::new(ctx);
    tracing::info!(
        tools = ?server.tool_names(),
        "Serving the event store over MCP on stdio."
    );
    let running = server.serve(rmcp::transport::stdio()).await?;
    let reason = running.waiting().await?;
    tracing::info!(?reason, "The MCP client went away.");
    store.close().await;
    Ok(0)
}
