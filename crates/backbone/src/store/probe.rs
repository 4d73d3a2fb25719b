//! The readiness probe's view of the database (`/readyz`), over a connection
//! of its own: a pool whose connections are all busy in merge batches is not
//! a database that is down, and must not make the pod unready under load.

use secrecy::{ExposeSecret, SecretString};
use sqlx::{AnyConnection, Connection};
use tokio::sync::Mutex;

/// Why a probe failed: the driver's own words, shown as they are.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct ProbeError(#[from] pub(super) sqlx::Error);

/// One lazily opened connection used only to ask `SELECT 1`.
pub struct Probe {
    url: SecretString,
    conn: Mutex<Option<AnyConnection>>,
}

impl Probe {
    /// Connects on the first [`Probe::ping`], not now.
    pub fn new(url: SecretString) -> Self {
        sqlx::any::install_default_drivers();
        Probe {
            url,
            conn: Mutex::new(None),
        }
    }

    /// `SELECT 1`, reconnecting when needed. The connection is taken out
    /// while in use, so an error, or the caller dropping this future on a
    /// timeout, drops it and the next ping starts afresh.
    pub async fn ping(&self) -> Result<(), ProbeError> {
        let mut guard = self.conn.lock().await;
        let mut conn = match guard.take() {
            Some(c) => c,
            None => AnyConnection::connect(self.url.expose_secret()).await?,
        };
        sqlx::query("SELECT 1").execute(&mut conn).await?;
        *guard = Some(conn);
        Ok(())
    }
}
