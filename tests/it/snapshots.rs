//! Claim-check snapshots end to end, against fake-gcs-server (the official
//! `google-cloud-storage` client pointed at STORAGE_EMULATOR_HOST) and the
//! local-folder store: big raw change sets by reference, big merged payloads
//! out as references, content-addressed writes.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use backbone::model::fingerprint::fingerprint;
use backbone::model::raw_event::parse_raw_event;
use backbone::snapshots::claim_check::ClaimCheck;
use backbone::snapshots::gcs::GcsSnapshots;
use backbone::snapshots::{Scope, SnapshotError, SnapshotStore};
use backbone::topology::TopicKind;
use bytes::Bytes;
use serde_json::{json, Value};

use crate::deliver::{deploy_with, skipped_count, Deployed, NS, SX, WAIT};
use crate::support::*;

const MIB: usize = 1024 * 1024;

/// fake-gcs-server's base URL; sets STORAGE_EMULATOR_HOST for the daemon
/// when the runner did not (scripts/test.sh does).
pub fn gcs_host() -> String {
    let host = std::env::var("STORAGE_EMULATOR_HOST").unwrap_or_else(|_| {
        std::env::set_var("STORAGE_EMULATOR_HOST", "http://127.0.0.1:4443");
        "http://127.0.0.1:4443".into()
    });
    let addr = host.trim_start_matches("http://").trim_end_matches('/');
    if std::net::TcpStream::connect_timeout(
        &addr
            .parse()
            .expect("STORAGE_EMULATOR_HOST is http://host:port"),
        Duration::from_secs(2),
    )
    .is_err()
    {
        panic!("fake-gcs-server is not reachable at {host}: run scripts/services.sh (or scripts/test.sh)");
    }
    host.trim_end_matches('/').to_string()
}

/// A fresh bucket (fake-gcs's JSON API: the gRPC control API does not work with it).
pub async fn fresh_bucket() -> String {
    let name = format!("snap-{}", rand_suffix(12));
    let resp = reqwest::Client::new()
        .post(format!("{}/storage/v1/b?project=it", gcs_host()))
        .json(&json!({ "name": name }))
        .send()
        .await
        .expect("create bucket");
    assert!(
        resp.status().is_success(),
        "create bucket: {}",
        resp.status()
    );
    name
}

/// Uploads a publisher-named object (as SuiteX would for a big change set).
async fn upload(bucket: &str, object: &str, data: Vec<u8>) {
    let resp = reqwest::Client::new()
        .post(format!(
            "{}/upload/storage/v1/b/{bucket}/o?uploadType=media&name={object}",
            gcs_host()
        ))
        .body(data)
        .send()
        .await
        .expect("upload");
    assert!(resp.status().is_success(), "upload: {}", resp.status());
}

/// (name, generation) of every object in `bucket`.
pub async fn objects(bucket: &str) -> Vec<(String, String)> {
    let v: Value = reqwest::get(format!("{}/storage/v1/b/{bucket}/o", gcs_host()))
        .await
        .expect("list")
        .json()
        .await
        .expect("list JSON");
    v["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|o| {
                    (
                        o["name"].as_str().unwrap_or_default().to_string(),
                        o["generation"].to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Gcs,
    Local,
}

/// Deploys with snapshots in a fresh bucket (Gcs) or the temp folder (Local),
/// tapping the merged topic before the daemon starts.
async fn deploy_snap(
    db: Db,
    kind: Kind,
    merged: &OnceLock<Tap>,
) -> Option<(Deployed, Option<String>)> {
    let bucket = match kind {
        Kind::Gcs => Some(fresh_bucket().await),
        Kind::Local => None,
    };
    let url = bucket.as_ref().map(|b| format!("gs://{b}"));
    let mut extra: Vec<(&str, &str)> = vec![];
    if let Some(u) = &url {
        extra.push(("BACKBONE__SNAPSHOTS__URL", u));
    }
    let d = deploy_with(db, &extra, async |t| {
        let _ = merged.set(tap(t, TopicKind::Merged).await);
    })
    .await?;
    Some((d, bucket))
}

async fn big_raw_by_reference(db: Db, kind: Kind) {
    let merged = OnceLock::new();
    let Some((d, bucket)) = deploy_snap(db, kind, &merged).await else {
        return;
    };
    let changes = json!({"name": "big", "blob": "x".repeat(3 * MIB)});
    let data = serde_json::to_vec(&changes).unwrap();
    let reference = match &bucket {
        Some(b) => {
            upload(b, "raw/changes-42.json", data).await;
            format!("gs://{b}/raw/changes-42.json")
        }
        None => {
            let dir = d.app.snapshots_dir().join("raw");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("changes-42.json"), data).unwrap();
            format!(
                "file://{}/raw/changes-42.json",
                d.app.snapshots_dir().display()
            )
        }
    };
    let raw = json!({
        "source": "suitex", "record_type": "project", "record_id": "42", "base_version": 0,
        "timestamp": "2026-03-13T20:00:00.123456Z", "changes": {}, "full_snapshot_ref": reference,
    })
    .to_string();
    let p = publishers(&d.app.topology).await;
    publish_raw(&p, &raw).await;

    let got = d.sink.wait_for(NS, 1, WAIT).await;
    assert_eq!(got.len(), 1, "netsuite receives the 3 MiB change");
    let body = got[0].json();
    assert_eq!(
        body["applied"]["blob"].as_str().map(str::len),
        Some(3 * MIB)
    );
    assert_eq!(body["applied"]["name"], "big");
    assert!(
        body.get("full_snapshot_ref").is_none(),
        "targets get the resolved event"
    );
    // The fingerprint is over the resolved changes (docs/spec.md §3.2).
    let ev = parse_raw_event(raw.as_bytes()).unwrap();
    let expected_fp = fingerprint(&ev, changes.as_object().unwrap());
    assert_eq!(got[0].header("idempotency-key"), Some(expected_fp.clone()));

    // The 3 MiB merged payload itself went out as a reference.
    let msgs = merged.get().unwrap().collect(1, WAIT).await;
    assert_eq!(msgs.len(), 1);
    assert!(
        msgs[0].data.len() < 4096,
        "merged message is small: {}",
        msgs[0].data.len()
    );
    let pointer = json(&msgs[0]);
    assert_eq!(pointer["fingerprint"], expected_fp.as_str());
    assert_eq!(pointer["applied"], json!({}));
    let expected_scheme = if kind == Kind::Gcs {
        "gs://"
    } else {
        "file://"
    };
    assert!(pointer["full_snapshot_ref"]
        .as_str()
        .unwrap()
        .starts_with(expected_scheme));
    assert_eq!(
        count(
            &d.app.store,
            "SELECT COUNT(*) FROM events WHERE full_snapshot_ref IS NOT NULL"
        )
        .await,
        1
    );
    assert!(
        eventually(WAIT, || async {
            skipped_count(&d.app, "suitex").await == 1
        })
        .await
    );
    d.app.stop().await;
}

#[tokio::test]
async fn snapshot_gcs_raw_3mib_by_reference_is_merged_and_delivered_sqlite() {
    big_raw_by_reference(Db::Sqlite, Kind::Gcs).await;
}

#[tokio::test]
async fn snapshot_gcs_raw_3mib_by_reference_is_merged_and_delivered_mariadb() {
    big_raw_by_reference(Db::Mariadb, Kind::Gcs).await;
}

#[tokio::test]
async fn snapshot_local_raw_3mib_by_reference_is_merged_and_delivered_sqlite() {
    big_raw_by_reference(Db::Sqlite, Kind::Local).await;
}

async fn big_merged_payload_as_reference(db: Db, kind: Kind) {
    let merged = OnceLock::new();
    let Some((d, bucket)) = deploy_snap(db, kind, &merged).await else {
        return;
    };
    let p = publishers(&d.app.topology).await;
    // One big change from each side, so each consumer resolves and delivers one.
    let from_suitex = raw_event(
        "suitex",
        "project",
        "1",
        0,
        "2026-03-13T20:00:00Z",
        json!({"doc": "s".repeat(2 * MIB)}),
    );
    let from_netsuite = raw_event(
        "netsuite",
        "project",
        "2",
        0,
        "2026-03-13T20:00:00Z",
        json!({"doc": "n".repeat(2 * MIB)}),
    );
    publish_raw(&p, &from_suitex).await;
    publish_raw(&p, &from_netsuite).await;

    let msgs = merged.get().unwrap().collect(2, WAIT).await;
    assert_eq!(msgs.len(), 2);
    for m in &msgs {
        assert!(
            m.data.len() < 4096,
            "merged message is a reference: {} bytes",
            m.data.len()
        );
        let v = json(m);
        assert!(v["full_snapshot_ref"].is_string(), "{v}");
        assert_eq!(v["conflicts"], json!([]));
        assert_eq!(v["version"], 1);
        assert_eq!(
            m.attributes["fingerprint"], v["fingerprint"],
            "attributes unchanged"
        );
    }
    let ns = d.sink.wait_for(NS, 1, WAIT).await;
    let sx = d.sink.wait_for(SX, 1, WAIT).await;
    assert_eq!(
        (ns.len(), sx.len()),
        (1, 1),
        "each target receives the other side's change"
    );
    assert_eq!(
        ns[0].json()["applied"]["doc"].as_str().unwrap(),
        "s".repeat(2 * MIB)
    );
    assert_eq!(
        sx[0].json()["applied"]["doc"].as_str().unwrap(),
        "n".repeat(2 * MIB)
    );
    assert_eq!(ns[0].json()["origin"], "suitex");
    assert!(
        eventually(WAIT, || async {
            skipped_count(&d.app, "netsuite").await == 1
                && skipped_count(&d.app, "suitex").await == 1
        })
        .await
    );
    if let Some(b) = bucket {
        let objs = objects(&b).await;
        assert_eq!(objs.len(), 2, "{objs:?}");
        assert!(
            objs.iter()
                .all(|(n, _)| n.starts_with("sha256/") && n.ends_with(".json")),
            "{objs:?}"
        );
    }
    d.app.stop().await;
}

#[tokio::test]
async fn snapshot_gcs_2mib_merged_payload_goes_out_as_a_reference_sqlite() {
    big_merged_payload_as_reference(Db::Sqlite, Kind::Gcs).await;
}

#[tokio::test]
async fn snapshot_gcs_2mib_merged_payload_goes_out_as_a_reference_mariadb() {
    big_merged_payload_as_reference(Db::Mariadb, Kind::Gcs).await;
}

#[tokio::test]
async fn snapshot_local_2mib_merged_payload_goes_out_as_a_reference_sqlite() {
    big_merged_payload_as_reference(Db::Sqlite, Kind::Local).await;
}

#[tokio::test]
async fn snapshot_gcs_same_payload_twice_writes_one_object() {
    let bucket = fresh_bucket().await;
    let store = Arc::new(
        GcsSnapshots::new(&format!("gs://{bucket}"), Some(&gcs_host()))
            .await
            .unwrap(),
    );
    let cc = ClaimCheck::new(store.clone(), 1024);
    let payload = Bytes::from(
        json!({
            "event_id": "0190b6a0-0000-7000-8000-000000000001", "fingerprint": "ab",
            "record_type": "project", "record_id": "42", "origin": "suitex",
            "version": 8, "base_version": 7, "timestamp": "2026-03-13T20:00:00.123456Z",
            "applied": {"doc": "d".repeat(2 * MIB)}, "conflicts": []
        })
        .to_string(),
    );
    let first = cc.shrink(payload.clone()).await.unwrap();
    let after_first = objects(&bucket).await;
    let second = cc.shrink(payload.clone()).await.unwrap();
    assert_eq!(first, second, "same content, same reference");
    let after_second = objects(&bucket).await;
    assert_eq!(after_first.len(), 1, "{after_first:?}");
    assert_eq!(
        after_first, after_second,
        "not written again (same generation)"
    );
    let (full, bytes) = cc.resolve(&first).await.unwrap();
    assert_eq!(bytes, payload);
    assert_eq!(full.version, 8);
    // A plain put of the same bytes lands on the same object too.
    let pointer: Value = serde_json::from_slice(&first).unwrap();
    assert_eq!(
        store.put(payload).await.unwrap(),
        pointer["full_snapshot_ref"].as_str().unwrap()
    );
    assert_eq!(objects(&bucket).await, after_first);
}

#[tokio::test]
async fn snapshot_gcs_foreign_bucket_is_permanent_and_missing_object_is_transient() {
    let (errors, dlq) = (OnceLock::new(), OnceLock::new());
    let bucket = fresh_bucket().await;
    let url = format!("gs://{bucket}");
    let Some(d) = deploy_with(
        Db::Sqlite,
        &[("BACKBONE__SNAPSHOTS__URL", &url)],
        async |t| {
            let _ = errors.set(tap(t, TopicKind::Error).await);
            let _ = dlq.set(tap(t, TopicKind::Dlq).await);
        },
    )
    .await
    else {
        return;
    };
    let p = publishers(&d.app.topology).await;
    let with_ref = |rid: &str, r: &str| {
        json!({
            "source": "suitex", "record_type": "project", "record_id": rid, "base_version": 0,
            "timestamp": "2026-03-13T20:00:00Z", "changes": {}, "full_snapshot_ref": r,
        })
        .to_string()
    };
    publish_raw(
        &p,
        &with_ref("1", "gs://suitex-payload-snapshots-production/raw/x.json"),
    )
    .await;
    publish_raw(
        &p,
        &with_ref("2", &format!("gs://{bucket}/raw/not-there-yet.json")),
    )
    .await;

    let dead = dlq.get().unwrap().collect(1, WAIT).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attributes["stage"], "merge");
    assert_eq!(dead[0].attributes["dead_reason"], "permanent");
    assert!(dead[0].attributes["last_error"].contains("suitex-payload-snapshots-production"));
    let retried = errors.get().unwrap().collect(1, WAIT).await;
    assert_eq!(retried.len(), 1);
    assert_eq!(retried[0].attributes["stage"], "merge");
    assert_eq!(json(&retried[0])["record_id"], "2");
    assert!(
        retried[0].attributes["last_error"].contains("does not exist"),
        "{:?}",
        retried[0].attributes
    );
    d.app.stop().await;
}

/// This process's resident set (`VmRSS`) and peak (`VmHWM`), in MiB.
fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

async fn delete_object(bucket: &str, object: &str) {
    let _ = reqwest::Client::new()
        .delete(format!(
            "{}/storage/v1/b/{bucket}/o/{}",
            gcs_host(),
            object.replace('/', "%2F")
        ))
        .send()
        .await;
}

/// Issue 31, finding 2 (docs/spec.md §10 "a claim-check reference to a huge
/// object"): its size is read from the object's metadata first; over the
/// limit it is permanent and nothing is downloaded — this process's memory
/// does not grow by the object's size.
#[tokio::test]
async fn snapshot_gcs_huge_raw_reference_is_permanent_and_nothing_is_downloaded() {
    let dlq = OnceLock::new();
    let bucket = fresh_bucket().await;
    let url = format!("gs://{bucket}");
    let Some(d) = deploy_with(
        Db::Sqlite,
        &[("BACKBONE__SNAPSHOTS__URL", &url)],
        async |t| {
            let _ = dlq.set(tap(t, TopicKind::Dlq).await);
        },
    )
    .await
    else {
        return;
    };
    // A change set far over what the event store takes (8 MiB).
    const SIZE: usize = 64 * MIB;
    let mut huge = Vec::with_capacity(SIZE);
    huge.extend_from_slice(b"{\"blob\":\"");
    huge.resize(SIZE - 2, b'x');
    huge.extend_from_slice(b"\"}");
    upload(&bucket, "raw/huge.json", huge).await;

    // The store itself: refused from the metadata, memory flat.
    let store = GcsSnapshots::new(&url, Some(&gcs_host())).await.unwrap();
    let reference = format!("gs://{bucket}/raw/huge.json");
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let (before, _) = rss_mib();
    let read = store.read(&reference, Scope::Raw).await;
    let (_, peak) = rss_mib();
    match read {
        Err(SnapshotError::TooLarge { size, max, .. }) => {
            assert_eq!(size, SIZE as u64, "the size from the metadata");
            assert_eq!(max, 8 * MIB as u64);
        }
        other => panic!("expected TooLarge, got {:?}", other.map(|b| b.len())),
    }
    assert!(
        peak - before < 16.0,
        "the read grew peak RSS by {:.0} MiB",
        peak - before
    );

    // Through the daemon: dead-lettered `permanent` at once, saying why.
    let p = publishers(&d.app.topology).await;
    let raw = json!({
        "source": "suitex", "record_type": "project", "record_id": "huge", "base_version": 0,
        "timestamp": "2026-03-13T20:00:00Z", "changes": {}, "full_snapshot_ref": reference,
    })
    .to_string();
    publish_raw(&p, &raw).await;
    let dead = dlq.get().unwrap().collect(1, WAIT).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].attributes["dead_reason"], "permanent",
        "{:?}",
        dead[0].attributes
    );
    assert!(
        dead[0].attributes["last_error"].contains("may be at most 8388608 bytes"),
        "{:?}",
        dead[0].attributes["last_error"]
    );
    delete_object(&bucket, "raw/huge.json").await;
    d.app.stop().await;
}

/// Raw events' references are confined to `snapshots.raw_prefix` (`raw/`):
/// one that points at the daemon's own claim checks (another record's
/// merged event) or outside the prefix is refused, permanent.
#[tokio::test]
async fn snapshot_raw_reference_outside_the_raw_prefix_is_refused() {
    let dlq = OnceLock::new();
    let bucket = fresh_bucket().await;
    let url = format!("gs://{bucket}");
    let Some(d) = deploy_with(
        Db::Sqlite,
        &[("BACKBONE__SNAPSHOTS__URL", &url)],
        async |t| {
            let _ = dlq.set(tap(t, TopicKind::Dlq).await);
        },
    )
    .await
    else {
        return;
    };
    let store = GcsSnapshots::new(&url, Some(&gcs_host())).await.unwrap();
    // One of ours: a merged event's claim check, a JSON object.
    let ours = store
        .put(Bytes::from(
            json!({"name": "someone else's record"}).to_string(),
        ))
        .await
        .unwrap();
    upload(
        &bucket,
        "elsewhere/changes.json",
        b"{\"name\":\"x\"}".to_vec(),
    )
    .await;
    let p = publishers(&d.app.topology).await;
    for (rid, reference) in [
        ("1", ours.clone()),
        ("2", format!("gs://{bucket}/elsewhere/changes.json")),
    ] {
        let raw = json!({
            "source": "suitex", "record_type": "project", "record_id": rid, "base_version": 0,
            "timestamp": "2026-03-13T20:00:00Z", "changes": {}, "full_snapshot_ref": reference,
        })
        .to_string();
        publish_raw(&p, &raw).await;
    }
    let dead = dlq.get().unwrap().collect(2, WAIT).await;
    assert_eq!(dead.len(), 2);
    for m in &dead {
        assert_eq!(
            m.attributes["dead_reason"], "permanent",
            "{:?}",
            m.attributes
        );
        assert!(
            m.attributes["last_error"].contains("is refused"),
            "{:?}",
            m.attributes["last_error"]
        );
    }
    assert_eq!(count(&d.app.store, "SELECT COUNT(*) FROM events").await, 0);
    d.app.stop().await;
}
