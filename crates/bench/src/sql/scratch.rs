//! Scratch databases the benches create on a MySQL/MariaDB server and drop
//! afterwards, over an administrator's connection.

use sqlx::{Connection, MySqlConnection};

/// Why a scratch database could not be created.
#[derive(Debug, thiserror::Error)]
pub enum ScratchError {
    #[error("connecting to {url}")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error(transparent)]
    Create(sqlx::Error),
}

/// Creates an empty database with a fresh name on `admin_url`'s server.
/// Returns its URL (`admin_url` with the database swapped) and its name.
pub async fn create_mysql(admin_url: &str) -> Result<(String, String), ScratchError> {
    let mut conn = MySqlConnection::connect(admin_url)
        .await
        .map_err(|source| ScratchError::Connect {
            url: admin_url.to_string(),
            source,
        })?;
    let name = format!("eb_bench_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name} CHARACTER SET utf8mb4"))
        .execute(&mut conn)
        .await
        .map_err(ScratchError::Create)?;
    let base = admin_url
        .rsplit_once('/')
        .map(|(b, _)| b)
        .unwrap_or(admin_url);
    Ok((format!("{base}/{name}"), name))
}

/// Drops a database [`create_mysql`] made; best effort (a bench cleaning up
/// must not fail on its cleanup).
pub async fn drop_mysql(admin_url: &str, name: &str) {
    if let Ok(mut conn) = MySqlConnection::connect(admin_url).await {
        let _ = sqlx::query(&format!("DROP DATABASE {name}"))
            .execute(&mut conn)
            .await;
    }
}
