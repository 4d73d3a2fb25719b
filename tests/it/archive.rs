//! Retention with archival (docs/spec.md §6.1, issue 21): a record with half its
//! history archived still replays, verifies and explains from its
//! checkpoint; the archived rows are in a verified segment and come back
//! with `archive restore`; records that may not go stay; on MariaDB the
//! database itself refuses the archiver any row no segment covers and the
//! runtime user any DELETE.

use std::collections::HashMap;
use std::time::Duration;

use backbone::history::archive::{self, Options, TableCounts};
use backbone::history::{self, verify::verify, HistoryError};
use backbone::model::fingerprint::fingerprint;
use backbone::model::raw_event::{RawEvent, Source};
use backbone::model::rules::MergePolicy;
use backbone::snapshots::gcs::GcsSnapshots;
use backbone::snapshots::local::LocalSnapshots;
use backbone::snapshots::SnapshotStore;
use backbone::stages::merge::batch::{self, EngineConfig, EventItem, Item};
use backbone::store::outbox::ConfirmedSet;
use backbone::store::Store;
use chrono::{DateTime, TimeZone, Utc};
use serde_json::{json, Map, Value};

use crate::snapshots::{fresh_bucket, gcs_host, objects};
use crate::support::*;

const T: &str = "project";

fn cfg() -> EngineConfig {
    EngineConfig {
        policy: MergePolicy::default(),
        merged_topic: "projects/p/topics/events.merged.local".into(),
        batch_max: 100,
        linger: Duration::from_millis(1),
        workers: 1,
        confirmed: ConfirmedSet::default(),
    }
}

fn item(id: &str, source: Source, base: i64, minute: u32, changes: Value) -> Item {
    let Value::Object(changes) = changes else {
        unreachable!()
    };
    let event = RawEvent {
        id: None,
        record_type: T.into(),
        record_id: id.into(),
        source,
        timestamp: Utc.with_ymd_and_hms(2026, 3, 13, 10, minute, 0).unwrap(),
        base_version: base,
        changes: Map::new(),
        full_snapshot_ref: None,
    };
    let fp = fingerprint(&event, &changes);
    Item::Event(Box::new(EventItem {
        event,
        changes,
        fingerprint: fp,
        message_id: format!("m-{id}-{base}-{minute}"),
        execution: 1,
        data: bytes::Bytes::new(),
        attributes: HashMap::new(),
    }))
}

/// Merges `n` events into record `id` (alternating sources, one conflict
/// each few), starting at version `from`.
async fn merge(store: &Store, id: &str, from: i64, n: i64) {
    for v in from..from + n {
        let source = if v % 2 == 0 {
            Source::Netsuite
        } else {
            Source::Suitex
        };
        // Every third event is built on a stale base: a conflict on `status`.
        let base = if v % 3 == 0 && v > 0 { v - 1 } else { v };
        let it = item(
            id,
            source,
            base,
            v as u32,
            json!({"status": format!("s{v}"), format!("f{v}"): v}),
        );
        batch::process(store, &cfg(), &[it]).await.unwrap();
    }
}

/// What the daemon would have left once every merged event was published
/// and acknowledged by both targets: no outbox rows, both targets at the head.
async fn settle(store: &Store, id: &str) {
    sqlx::query("DELETE FROM outbox")
        .execute(store.pool())
        .await
        .unwrap();
    let head: i64 = sqlx::query_scalar(
        "SELECT last_seq FROM record_state WHERE record_type = ? AND record_id = ?",
    )
    .bind(T)
    .bind(id)
    .fetch_one(store.pool())
    .await
    .unwrap();
    for target in ["netsuite", "suitex"] {
        sqlx::query(
            "INSERT INTO delivery_state (target, record_type, record_id, acked_seq, acked_version, attempted_seq) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(target)
        .bind(T)
        .bind(id)
        .bind(head)
        .bind(head)
        .bind(head)
        .execute(store.pool())
        .await
        .unwrap();
    }
}

async fn n(store: &Store, sql: &str, id: &str) -> i64 {
    sqlx::query_scalar(sql)
        .bind(T)
        .bind(id)
        .fetch_one(store.pool())
        .await
        .unwrap()
}

/// Where the segments go: a local folder, or a bucket of fake-gcs-server
/// through the official client (production's path).
#[derive(Clone, Copy, Debug)]
enum Bucket {
    Folder,
    Gcs,
}

/// The snapshot store of `bucket`, its `snapshots.url` and what lists its
/// objects' names.
struct Snaps {
    store: Box<dyn SnapshotStore>,
    url: String,
    gcs_bucket: Option<String>,
    _dir: tempfile::TempDir,
}

impl Snaps {
    async fn open(bucket: Bucket) -> Snaps {
        let dir = tempfile::tempdir().unwrap();
        match bucket {
            Bucket::Folder => {
                let url = format!("file://{}", dir.path().display());
                Snaps {
                    store: Box::new(LocalSnapshots::new(&url)),
                    url,
                    gcs_bucket: None,
                    _dir: dir,
                }
            }
            Bucket::Gcs => {
                let name = fresh_bucket().await;
                let url = format!("gs://{name}");
                Snaps {
                    store: Box::new(GcsSnapshots::new(&url, Some(&gcs_host())).await.unwrap()),
                    url,
                    gcs_bucket: Some(name),
                    _dir: dir,
                }
            }
        }
    }

    /// The archive objects written, by name (segments and manifests).
    async fn archive_objects(&self) -> Vec<String> {
        let mut names: Vec<String> = match &self.gcs_bucket {
            Some(b) => objects(b).await.into_iter().map(|(n, _)| n).collect(),
            None => walk(self._dir.path(), self._dir.path()),
        };
        names.retain(|n| n.starts_with("archive/"));
        names.sort();
        names
    }
}

fn walk(root: &std::path::Path, dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(root, &p));
        } else {
            out.push(p.strip_prefix(root).unwrap().display().to_string());
        }
    }
    out
}

async fn half_archived(db: Db, bucket: Bucket) {
    let Some(tdb) = fresh_db(db).await else {
        return;
    };
    let admin = Store::connect(&tdb.url, 4, Duration::from_secs(10))
        .await
        .unwrap();
    admin.migrate().await.unwrap();
    // The MariaDB run archives as the archiver of the shipped grants.
    let grants = match db {
        Db::Mariadb => Some(apply_shipped_grants(tdb.name.as_deref().unwrap()).await),
        Db::Sqlite => None,
    };
    let store = match &grants {
        Some(user) => Store::connect(
            &mariadb_url_as(&format!("{user}_ar"), "pw", tdb.name.as_deref().unwrap()),
            4,
            Duration::from_secs(10),
        )
        .await
        .unwrap(),
        None => admin.clone(),
    };
    // The shipped grants split recording a segment from removing its rows.
    let recorder = match &grants {
        Some(user) => Store::connect(
            &mariadb_url_as(&format!("{user}_rc"), "pw", tdb.name.as_deref().unwrap()),
            2,
            Duration::from_secs(10),
        )
        .await
        .unwrap(),
        None => admin.clone(),
    };

    merge(&admin, "42", 0, 6).await;
    merge(&admin, "held", 0, 3).await;
    // A dead letter of 42 replayed before the cutoff goes with the archive;
    // one never replayed stays.
    for (msg, replayed) in [("dl-1", true), ("dl-2", false)] {
        sqlx::query(&format!(
            "INSERT INTO dead_letters (dlq_message_id, stage, reason, record_type, record_id, errors, \
             data, attributes, replayed_at) VALUES (?, 'deliver.netsuite', 'exhausted', ?, 'x', '[]', ?, '{{}}', {})",
            if replayed { admin.dialect().now() } else { "NULL" }
        ))
        .bind(msg)
        .bind(T)
        .bind(vec![0u8, 159, 146, 150])
        .execute(admin.pool())
        .await
        .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    let cutoff: DateTime<Utc> = Utc::now();
    tokio::time::sleep(Duration::from_millis(30)).await;
    merge(&admin, "42", 6, 6).await;
    settle(&admin, "42").await;
    // "held": its merged events were never published (outbox rows stay).
    merge(&admin, "held", 3, 1).await;
    sqlx::query(
        "INSERT INTO delivery_state (target, record_type, record_id, acked_seq, acked_version, attempted_seq) \
         VALUES ('netsuite', ?, 'held', 0, 0, 0)",
    )
    .bind(T)
    .execute(admin.pool())
    .await
    .unwrap();

    let policy = MergePolicy::default();
    let head = history::replay(&admin, &policy, T, "42", None)
        .await
        .unwrap();
    let at8 = history::replay(&admin, &policy, T, "42", Some(8))
        .await
        .unwrap();
    assert_eq!(head.last_seq, 12);
    let explained = backbone::explain::explain_record(&admin, &policy, T, "42", None)
        .await
        .unwrap();

    let bucket = Snaps::open(bucket).await;
    let snaps = bucket.store.as_ref();
    let opts = Options {
        cutoff,
        segment_events: 1000,
        delete_batch: 2,
        pace: 0.0,
        dry_run: false,
    };
    let report = archive::run_as(&recorder, &store, snaps, &policy, &opts)
        .await
        .unwrap();
    assert_eq!(report.segments.len(), 2, "{report:?}");
    let seg = &report.segments[0];
    assert_eq!((seg.records, seg.events, seg.merged), (1, 6, 6), "{seg:?}");
    assert_eq!(
        seg.removed,
        TableCounts {
            events: 6,
            audit: seg.audit as u64,
            merged: 6,
            dead_letters: 0
        },
        "{seg:?}"
    );
    // The replayed dead letter, in a segment of its own.
    let dl = &report.segments[1];
    assert_eq!(
        (dl.records, dl.dead_letters, dl.removed),
        (
            0,
            1,
            TableCounts {
                dead_letters: 1,
                ..TableCounts::default()
            }
        ),
        "{dl:?}"
    );
    // Each segment is in the bucket under its own hash, a manifest beside it
    // (two objects per segment, nothing else under archive/).
    let names = bucket.archive_objects().await;
    assert_eq!(names.len(), 2 * report.segments.len(), "{names:?}");
    for s in &report.segments {
        let object = format!("archive/sha256/{}.jsonl.gz", s.id);
        assert!(names.contains(&object), "{object} not in {names:?}");
        assert!(s.reference.ends_with(&object), "{s:?}");
        let back = snaps
            .read(&s.reference, backbone::snapshots::Scope::Archive)
            .await
            .unwrap();
        assert_eq!(
            backbone::model::fingerprint::sha256_hex(&back),
            s.id,
            "{s:?}"
        );
    }
    let dead = |store: &Store| {
        let store = store.clone();
        async move { count(&store, "SELECT COUNT(*) FROM dead_letters").await }
    };
    assert_eq!(dead(&admin).await, 1);
    assert!(
        report.held.iter().any(|h| h.record_id == "held"),
        "{:?}",
        report.held
    );

    // What is left: events 7..=12 of 42; all of "held".
    let ev = "SELECT COUNT(*) FROM events WHERE record_type = ? AND record_id = ?";
    assert_eq!(n(&admin, ev, "42").await, 6);
    assert_eq!(n(&admin, ev, "held").await, 4);
    assert_eq!(
        n(
            &admin,
            "SELECT MIN(sequence_num) FROM merged_events WHERE record_type = ? AND record_id = ?",
            "42"
        )
        .await,
        7
    );

    // History answers from the checkpoint and the remaining events.
    let again = history::replay(&admin, &policy, T, "42", None)
        .await
        .unwrap();
    assert_eq!(again.state, head.state);
    assert_eq!(again.last_seq, 12);
    assert_eq!(again.events_replayed, 6);
    let again8 = history::replay(&admin, &policy, T, "42", Some(8))
        .await
        .unwrap();
    assert_eq!(again8.state, at8.state);
    let e = history::replay(&admin, &policy, T, "42", Some(3))
        .await
        .unwrap_err();
    assert!(
        matches!(e, HistoryError::Archived { through: 6, .. }),
        "{e}"
    );
    let v = verify(&admin, &policy, None).await.unwrap();
    assert!(v.clean(), "{:?}", v.drift);
    let page = history::list(&admin, T, "42", &history::ListQuery::default())
        .await
        .unwrap();
    assert_eq!(page.events.len(), 6);
    assert_eq!(
        (
            page.archived.len(),
            page.archived[0].from_seq,
            page.archived[0].to_seq
        ),
        (1, 1, 6)
    );
    let after = backbone::explain::explain_record(&admin, &policy, T, "42", None)
        .await
        .unwrap();
    assert_eq!(
        (after.version, after.last_seq),
        (explained.version, explained.last_seq)
    );
    let values = |x: &backbone::explain::Explanation| -> Vec<(String, Value)> {
        x.fields
            .iter()
            .map(|(k, f)| (k.clone(), f.value.clone()))
            .collect()
    };
    assert_eq!(values(&after), values(&explained));
    // A field last set by an archived event names the segment; a later one its event.
    assert!(
        after.fields["f0"].set_by.event_id.starts_with("archived:"),
        "{after:?}"
    );
    assert_eq!(after.fields["f11"].set_by, explained.fields["f11"].set_by);
    assert!(
        after.warnings.iter().any(|w| w.contains("archived")),
        "{:?}",
        after.warnings
    );

    // A second run finds nothing new: nothing is archived twice.
    let second = archive::run_as(&recorder, &store, snaps, &policy, &opts)
        .await
        .unwrap();
    assert!(second.segments.is_empty(), "{second:?}");

    // Restore brings every row back; history replays from the beginning.
    let r = archive::restore(&store, snaps, Some(&seg.id), None)
        .await
        .unwrap();
    assert_eq!(
        r.inserted,
        TableCounts {
            events: 6,
            audit: seg.audit as u64,
            merged: 6,
            dead_letters: 0
        }
    );
    let r = archive::restore(&store, snaps, Some(&dl.id), None)
        .await
        .unwrap();
    assert_eq!(
        r.inserted,
        TableCounts {
            dead_letters: 1,
            ..TableCounts::default()
        }
    );
    assert_eq!(dead(&admin).await, 2);
    let back: Vec<u8> =
        sqlx::query_scalar("SELECT data FROM dead_letters WHERE dlq_message_id = 'dl-1'")
            .fetch_one(admin.pool())
            .await
            .unwrap();
    assert_eq!(back, vec![0u8, 159, 146, 150]);
    assert_eq!(n(&admin, ev, "42").await, 12);
    let restored = history::replay(&admin, &policy, T, "42", Some(3))
        .await
        .unwrap();
    assert_eq!(restored.last_seq, 3);
    let v = verify(&admin, &policy, None).await.unwrap();
    assert!(v.clean(), "{:?}", v.drift);

    if let Some(user) = grants {
        // The archiver may not delete what no segment covers...
        let err = sqlx::query("DELETE FROM events WHERE record_id = 'held'")
            .execute(store.pool())
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("Event records are immutable and cannot be deleted."),
            "{err}"
        );
        let err = sqlx::query("DELETE FROM event_audit_log WHERE record_id = 'held'")
            .execute(store.pool())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("cannot be deleted"), "{err}");
        // ...nor update anything.
        let err = sqlx::query("UPDATE events SET record_id = 'x' WHERE record_id = '42'")
            .execute(store.pool())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("command denied"), "{err}");
        // The runtime user may not delete at all, covered or not.
        let worker = Store::connect(
            &mariadb_url_as(&user, "pw", tdb.name.as_deref().unwrap()),
            2,
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        for sql in [
            "DELETE FROM events WHERE record_id = '42' AND sequence_num = 1",
            "DELETE FROM event_audit_log WHERE record_id = '42'",
            "DELETE FROM merged_events WHERE record_id = '42'",
        ] {
            let err = sqlx::query(sql).execute(worker.pool()).await.unwrap_err();
            assert!(err.to_string().contains("command denied"), "{sql}: {err}");
        }
        // The runtime user reads the archive's checkpoints for history.
        let back = history::replay(&worker, &policy, T, "42", None)
            .await
            .unwrap();
        assert_eq!(back.state, head.state);
        // Issue 31: no single credential can both record a segment and
        // remove what it covers. The remover may not record one...
        for sql in [
            "INSERT INTO archive_segments (id, reference, bytes, cutoff, manifest) \
             VALUES (REPEAT('f', 64), 'gs://forged', 1, NOW(6), '{}')",
            "INSERT INTO archive_coverage (record_type, record_id, segment_id, from_seq, to_seq, \
             audit_before) VALUES ('project', 'held', REPEAT('f', 64), 1, 99, NOW(6))",
            "INSERT INTO archive_segment_tables (segment_id, table_name, row_count) \
             VALUES (REPEAT('f', 64), 'events', 99)",
            "UPDATE archive_segments SET reference = 'gs://forged'",
        ] {
            let err = sqlx::query(sql).execute(store.pool()).await.unwrap_err();
            assert!(err.to_string().contains("command denied"), "{sql}: {err}");
        }
        // ...and the recorder may not remove anything, covered or not.
        for sql in [
            "DELETE FROM events WHERE record_id = '42'",
            "DELETE FROM event_audit_log WHERE record_id = '42'",
            "DELETE FROM merged_events WHERE record_id = '42'",
            "DELETE FROM dead_letters",
            "UPDATE archive_segments SET removed_at = NULL",
        ] {
            let err = sqlx::query(sql).execute(recorder.pool()).await.unwrap_err();
            assert!(err.to_string().contains("command denied"), "{sql}: {err}");
        }
        // Who recorded each segment and who removed its rows, as the
        // connecting users (migration 0010; 0006 wrote the trigger's definer).
        let by: Vec<(String, String)> = sqlx::query_as(
            "SELECT s.recorded_by, t.removed_by FROM archive_segments s \
             JOIN archive_segment_tables t ON t.segment_id = s.id \
             WHERE t.table_name = 'events' AND t.removed > 0",
        )
        .fetch_all(admin.pool())
        .await
        .unwrap();
        assert!(!by.is_empty());
        for (recorded, removed) in by {
            assert!(recorded.starts_with(&format!("{user}_rc@")), "{recorded}");
            assert!(removed.starts_with(&format!("{user}_ar@")), "{removed}");
        }
        worker.close().await;
        store.close().await;
        recorder.close().await;
        drop_user(&user).await;
    }
    admin.close().await;
}

#[tokio::test]
async fn archive_half_history_replays_verifies_explains_and_restores_sqlite() {
    half_archived(Db::Sqlite, Bucket::Folder).await;
}

#[tokio::test]
async fn archive_half_history_replays_verifies_explains_and_restores_mariadb() {
    half_archived(Db::Mariadb, Bucket::Folder).await;
}

/// The same against fake-gcs-server through the official client, as the
/// archiver of the shipped grants: production's path.
#[tokio::test]
async fn archive_half_history_to_gcs_replays_verifies_explains_and_restores_mariadb() {
    half_archived(Db::Mariadb, Bucket::Gcs).await;
}

/// SIGKILL of `event-backbone archive` once its first segment is recorded
/// (rows half removed), then a second run: every event is either still in
/// the database or in exactly one recorded segment, and history is intact.
async fn killed_and_rerun(db: Db, bucket: Bucket) {
    let Some(tdb) = fresh_db(db).await else {
        return;
    };
    let store = Store::connect(&tdb.url, 4, Duration::from_secs(10))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    const RECORDS: usize = 30;
    const PER: i64 = 20;
    for v in 0..PER {
        let items: Vec<Item> = (0..RECORDS)
            .map(|r| {
                item(
                    &format!("r{r}"),
                    if v % 2 == 0 {
                        Source::Netsuite
                    } else {
                        Source::Suitex
                    },
                    v,
                    v as u32,
                    json!({"status": format!("s{v}"), format!("f{v}"): v}),
                )
            })
            .collect();
        batch::process(&store, &cfg(), &items).await.unwrap();
    }
    for r in 0..RECORDS {
        settle(&store, &format!("r{r}")).await;
    }
    let policy = MergePolicy::default();
    let mut heads = Vec::new();
    for r in 0..RECORDS {
        heads.push(
            history::replay(&store, &policy, T, &format!("r{r}"), None)
                .await
                .unwrap()
                .state,
        );
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let cutoff = backbone::model::fingerprint::format_timestamp(&Utc::now());
    let bucket = Snaps::open(bucket).await;
    let run = || {
        let mut cmd = binary("local");
        cmd.args(["archive", "--before", &cutoff])
            .env("BACKBONE__DATABASE__URL", &tdb.url)
            .env("BACKBONE__SNAPSHOTS__URL", &bucket.url)
            .env("BACKBONE__RETENTION__SEGMENT_EVENTS", "100")
            .env("BACKBONE__RETENTION__DELETE_BATCH", "1")
            .env("BACKBONE__LOG__LEVEL", "warn")
            .stdout(std::process::Stdio::null());
        cmd
    };
    let mut child = run().spawn().unwrap();
    let recorded = eventually(Duration::from_secs(60), || async {
        count(&store, "SELECT COUNT(*) FROM archive_segments").await > 0
    })
    .await;
    child.kill().unwrap();
    let _ = child.wait();
    assert!(recorded, "no segment was recorded before the kill");
    let left_after_kill = count(&store, "SELECT COUNT(*) FROM events").await;
    assert!(
        left_after_kill > 0,
        "the run finished before the kill: nothing was tested"
    );
    let out = run().output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Every event is archived exactly once: the coverage ranges of each
    // record are disjoint and together 1..=PER; the manifests' counts add up.
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM events").await,
        0,
        "left after kill: {left_after_kill}"
    );
    assert_eq!(count(&store, "SELECT COUNT(*) FROM merged_events").await, 0);
    assert_eq!(
        count(&store, "SELECT CAST(COALESCE(SUM(row_count), 0) AS SIGNED) FROM archive_segment_tables WHERE table_name = 'events'").await,
        RECORDS as i64 * PER
    );
    assert_eq!(
        count(&store, "SELECT CAST(COALESCE(SUM(removed), 0) AS SIGNED) FROM archive_segment_tables WHERE table_name = 'events'").await,
        RECORDS as i64 * PER
    );
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM archive_segments WHERE removed_at IS NULL"
        )
        .await,
        0
    );
    for (r, head) in heads.iter().enumerate() {
        let ranges = store.archived_ranges(T, &format!("r{r}")).await.unwrap();
        let mut next = 1;
        for g in &ranges {
            assert_eq!(g.from_seq, next, "r{r}: {ranges:?}");
            next = g.to_seq + 1;
        }
        assert_eq!(next, PER + 1, "r{r}: {ranges:?}");
        let back = history::replay(&store, &policy, T, &format!("r{r}"), None)
            .await
            .unwrap();
        assert_eq!(&back.state, head, "r{r}");
    }
    let v = verify(&store, &policy, None).await.unwrap();
    assert!(v.clean(), "{:?}", v.drift);
    // Every recorded segment is in the bucket; a segment the killed run
    // wrote but never recorded may be there too (unreferenced, harmless).
    let names = bucket.archive_objects().await;
    let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM archive_segments ORDER BY id")
        .fetch_all(store.pool())
        .await
        .unwrap();
    assert!(!ids.is_empty());
    for id in &ids {
        let object = format!("archive/sha256/{id}.jsonl.gz");
        assert!(names.contains(&object), "{object} not in {names:?}");
    }
    store.close().await;
}

#[tokio::test]
async fn archive_sigkill_then_rerun_loses_nothing_and_archives_nothing_twice_sqlite() {
    killed_and_rerun(Db::Sqlite, Bucket::Folder).await;
}

#[tokio::test]
async fn archive_sigkill_then_rerun_loses_nothing_and_archives_nothing_twice_mariadb() {
    killed_and_rerun(Db::Mariadb, Bucket::Folder).await;
}

/// The CLI against fake-gcs-server (`gs://` and STORAGE_EMULATOR_HOST, as
/// in a cluster with the real bucket), killed and re-run.
#[tokio::test]
async fn archive_to_gcs_sigkill_then_rerun_loses_nothing_and_archives_nothing_twice_mariadb() {
    killed_and_rerun(Db::Mariadb, Bucket::Gcs).await;
}

/// `bench archive` on a small store, to a fake-gcs-server bucket, its first
/// archive process SIGKILLed after two segments: the bench checks every old
/// event ended in exactly one removed segment and history verifies, and
/// exits 0 with its figures. Never asserts on speed.
#[tokio::test]
async fn bench_archive_killed_and_rerun_to_gcs_prints_its_figures_mariadb() {
    // Only to learn whether MariaDB is here (the bench makes its own database).
    if fresh_db(Db::Mariadb).await.is_none() {
        return;
    }
    let bucket = fresh_bucket().await;
    let out = tokio::process::Command::from(bench_command())
        .args([
            "archive",
            "--old-events",
            "1200",
            "--events",
            "200",
            "--records",
            "12",
            "--kill-after-segments",
            "2",
            "--mysql-admin-url",
            &mariadb_admin_url(),
            "--snapshots-url",
            &format!("gs://{bucket}"),
        ])
        .env("BACKBONE_ENV", "local")
        .env("BACKBONE_CONFIG_DIR", config_dir())
        .env("STORAGE_EMULATOR_HOST", gcs_host())
        .env("BACKBONE__RETENTION__SEGMENT_EVENTS", "100")
        .env("BACKBONE__LOG__LEVEL", "warn")
        // A test that ends early (a panic, a timeout) takes it along.
        .kill_on_drop(true)
        .output()
        .await
        .expect("run backbone-bench archive");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let v: Value = serde_json::from_str(&stdout).expect("the report is JSON");
    let a = &v["archive"];
    assert_eq!(a["events"], 1200, "{v}");
    assert_eq!(
        a["runs"][0]["killed_at_segments"].as_i64().map(|n| n >= 2),
        Some(true),
        "{v}"
    );
    assert!(a["runs"][1]["report"].is_object(), "{v}");
    assert_eq!(v["snapshots"], "gcs");
    assert!(
        v["merge_events_per_s_alone"]["mean"]
            .as_f64()
            .is_some_and(|r| r > 0.0),
        "{v}"
    );
    let names = objects(&bucket).await;
    let segments = a["segments"].as_i64().unwrap();
    assert!(
        names
            .iter()
            .filter(|(n, _)| n.ends_with(".jsonl.gz"))
            .count() as i64
            >= segments,
        "{names:?}"
    );
}
