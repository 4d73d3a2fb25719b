//! The snapshot store check: write a probe object and read it back.

use bytes::Bytes;
use serde_json::json;

use crate::config::Settings;

pub(super) async fn write_and_read(settings: &Settings) -> Result<String, String> {
    let store = crate::app::snapshot_store(settings)
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
