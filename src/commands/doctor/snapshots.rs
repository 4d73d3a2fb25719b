//! The snapshot store check: write a probe object and read it back.

use bytes::Bytes;
use serde_json::json;

use backbone::config::Settings;

/// What the check talks to: the GCS endpoint or the local folder.
pub(super) fn address(settings: &Settings) -> String {
    let url = &settings.snapshots.url;
    if let Some(dir) = url.strip_prefix("file://") {
        return std::path::absolute(dir)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| dir.to_owned());
    }
    match std::env::var(backbone::snapshots::gcs::ENV_VAR_STORAGE_EMULATOR_HOST) {
        Ok(h) if !h.is_empty() => h
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .trim_end_matches('/')
            .to_owned(),
        _ => "storage.googleapis.com:443".to_owned(),
    }
}

pub(super) async fn write_and_read(settings: &Settings) -> Result<String, String> {
    let store = backbone::app::snapshot_store(settings)
        .await
        .map_err(|e| format!("{e:#}"))?;
    let data = Bytes::from(
        json!({
            "doctor_probe": uuid::Uuid::new_v4().to_string(),
            "at": chrono::Utc::now().to_rfc3339(),
        })
        .to_string(),
    );
    let reference = store
        .put(data.clone())
        .await
        .map_err(|e| format!("cannot write to {}: {e}", settings.snapshots.url))?;
    let back = store
        .get(&reference)
        .await
        .map_err(|e| format!("wrote {reference} but cannot read it back: {e}"))?;
    if back != data {
        return Err(format!("{reference} read back different bytes"));
    }
    Ok(format!("wrote and read back {reference}"))
}
