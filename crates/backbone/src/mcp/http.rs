//! The streamable HTTP transport, mounted by the admin API at `/mcp`
//! behind its bearer-token check (so the token, the address and the
//! 127.0.0.1 default are the admin API's).

use std::net::SocketAddr;
use std::sync::Arc;

use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use super::{Ctx, McpServer};

/// Where the admin router mounts the service.
pub const PATH: &str = "/mcp";

/// The MCP service for the admin router; its sessions end with `shutdown`.
pub fn service(
    ctx: Ctx,
    admin_addr: &str,
    shutdown: CancellationToken,
) -> StreamableHttpService<McpServer, LocalSessionManager> {
    let mut config = StreamableHttpServerConfig::default().with_cancellation_token(shutdown);
    // rmcp accepts only loopback Host headers by default (DNS rebinding).
    // Bound elsewhere (a pod's 0.0.0.0 behind a Service), the Host is the
    // Service's name: the bearer token, which a rebinding page cannot
    // know, is the guard there.
    let loopback = admin_addr
        .parse::<SocketAddr>()
        .map(|a| a.ip().is_loopback())
        .unwrap_or(admin_addr.starts_with("localhost:"));
    if !loopback {
        config = config.disable_allowed_hosts();
    }
    let server = McpServer::new(ctx);
    StreamableHttpService::new(
        move || Ok(server.clone()),
        Arc::new(LocalSessionManager::default()),
        config,
    )
}
