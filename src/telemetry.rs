//! Logging: human-readable text locally, JSON in sandbox/production.

use tracing_subscriber::{fmt, EnvFilter};

use crate::config::{LogFormat, Settings};

/// Installs the global subscriber (once; later calls are ignored, which
/// keeps tests that boot several applications working).
pub fn init(settings: &Settings) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "{},sqlx=warn,h2=warn,hyper=warn",
            settings.log.level
        ))
    });
    let _ = match settings.log.format {
        LogFormat::Json => fmt()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init(),
        LogFormat::Text => fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init(),
    };
}
