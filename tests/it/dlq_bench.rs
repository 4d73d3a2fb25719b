//! Issue 31, finding 3: listing and replaying parked dead letters keeps
//! memory flat however big the parked messages are. A bench, ignored by
//! default (it writes ~10 GB): parks `BACKBONE_BENCH_DLQ_ROWS` (10,000)
//! messages of `BACKBONE_BENCH_DLQ_BYTES` (1 MiB) each on SQLite, then
//! measures the growth of this process's peak RSS over `GET /admin/dlq`
//! paged through every row, a dry-run replay of all of them (`POST
//! /admin/dlq/replay`), and a real replay (SIGUSR1's path) of the first
//! `BACKBONE_BENCH_DLQ_REPLAY` (100). Prints the figures; fails above
//! `BACKBONE_BENCH_DLQ_MAX_GROWTH_MB` (64) for any phase.
//!
//! `cargo nextest run --test it dlq_bench --run-ignored only --no-capture`

use std::collections::HashMap;
use std::time::{Duration, Instant};

use backbone::admin::AdminState;
use backbone::store::dead_letters::{DlqFilter, NewDeadLetter};
use backbone::store::ledger::AuditRow;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::support::*;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
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

/// Resets the peak (`VmHWM`) to the current RSS (Linux: clear_refs 5).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Runs `phase`, returning (peak RSS growth over the RSS before it, MiB; elapsed).
async fn measure<F: std::future::Future<Output = ()>>(phase: F) -> (f64, Duration) {
    reset_peak();
    let (before, _) = rss_mib();
    let t = Instant::now();
    phase.await;
    let (_, peak) = rss_mib();
    ((peak - before).max(0.0), t.elapsed())
}

#[tokio::test]
#[ignore = "bench: writes ~10 GB; run with --run-ignored only"]
async fn dlq_bench_listing_and_replay_keep_rss_flat_with_big_parked_messages() {
    let rows = env_usize("BACKBONE_BENCH_DLQ_ROWS", 10_000);
    let bytes = env_usize("BACKBONE_BENCH_DLQ_BYTES", 1024 * 1024);
    let replay_n = env_usize("BACKBONE_BENCH_DLQ_REPLAY", 100).min(rows);
    let max_growth = env_usize("BACKBONE_BENCH_DLQ_MAX_GROWTH_MB", 64) as f64;
    let token = "bench-token";
    let Some(app) = TestApp::prepare(Db::Sqlite, Overrides::new().admin(token)).await else {
        return;
    };
    app.provision().await;
    app.migrate().await;
    let store = app.store.clone();

    let t = Instant::now();
    let blob = vec![b'x'; bytes];
    for i in 0..rows {
        let dl = NewDeadLetter {
            dlq_message_id: format!("bench-{i}"),
            origin_message_id: None,
            stage: "merge".into(),
            reason: "invalid".into(),
            attempts: 1,
            fingerprint: Some(format!("{i:064x}")),
            record_type: Some("project".into()),
            record_id: Some(i.to_string()),
            last_error: Some("invalid raw event: bench".into()),
            errors: vec!["invalid raw event: bench".into()],
            data: blob.clone(),
            attributes: HashMap::from([("stage".to_string(), "merge".to_string())]),
            ordering_key: None,
            source_subscription: None,
            delivery_count: None,
            replay_of: None,
        };
        let audit = AuditRow {
            event_id: None,
            fingerprint: format!("{i:064x}"),
            record_type: Some("project".into()),
            record_id: Some(i.to_string()),
            stage: "park".into(),
            outcome: "parked".into(),
            detail: None,
            message_id: Some(format!("bench-{i}")),
            attempt: 1,
            claim: false,
        };
        store.park(&dl, audit).await.expect("park");
    }
    drop(blob);
    let parked_in = t.elapsed();

    let publishers = publishers(&app.topology).await;
    let shutdown = CancellationToken::new();
    let state = AdminState::new(store.clone(), &app.settings).with_publishers(publishers.clone());
    let server = backbone::admin::serve(&app.settings, state, shutdown.clone())
        .await
        .expect("admin API")
        .expect("enabled");
    let base = format!("http://{}", app.admin_addr());
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()
        .unwrap();

    // Every row, page by page, as an operator's tooling would list them.
    let mut listed = 0;
    let (list_growth, list_time) = measure(async {
        let mut after: Option<i64> = None;
        loop {
            let mut url = format!("{base}/admin/dlq?limit=1000");
            if let Some(a) = after {
                url.push_str(&format!("&after_id={a}"));
            }
            let v: Value = http
                .get(&url)
                .bearer_auth(token)
                .send()
                .await
                .expect("list")
                .json()
                .await
                .expect("JSON");
            let page = v["dead_letters"].as_array().cloned().unwrap_or_default();
            listed += page.len();
            match v["next_after_id"].as_i64() {
                Some(a) => after = Some(a),
                None => break,
            }
        }
    })
    .await;
    assert_eq!(listed, rows);

    let mut would = 0;
    let (dry_growth, dry_time) = measure(async {
        let v: Value = http
            .post(format!("{base}/admin/dlq/replay"))
            .bearer_auth(token)
            .json(&json!({"dry_run": true}))
            .send()
            .await
            .expect("dry run")
            .json()
            .await
            .expect("JSON");
        would = v["replayed"].as_array().map_or(0, Vec::len);
    })
    .await;
    assert_eq!(would, rows.min(backbone::dlq::MAX_BATCH as usize));

    let ids: Vec<i64> = store
        .dead_letter_page(&DlqFilter::default(), None, replay_n as i64)
        .await
        .unwrap()
        .iter()
        .map(|d| d.id)
        .collect();
    let mut replayed = 0;
    let (replay_growth, replay_time) = measure(async {
        let f = DlqFilter {
            ids: ids.clone(),
            ..Default::default()
        };
        let r = backbone::dlq::replay(&store, &publishers, &f, false)
            .await
            .expect("replay");
        publishers.flush().await;
        replayed = r.replayed.len();
    })
    .await;
    assert_eq!(replayed, replay_n);

    let (rss, _) = rss_mib();
    println!(
        "{}",
        json!({
            "bench": "dlq",
            "parked_rows": rows,
            "bytes_per_message": bytes,
            "parked_in_s": parked_in.as_secs_f64(),
            "rss_mib_at_end": rss,
            "list_all_pages": {"rows": listed, "peak_rss_growth_mib": list_growth, "s": list_time.as_secs_f64()},
            "dry_run_replay": {"rows": would, "peak_rss_growth_mib": dry_growth, "s": dry_time.as_secs_f64()},
            "replay": {"rows": replayed, "peak_rss_growth_mib": replay_growth, "s": replay_time.as_secs_f64()},
        })
    );
    for (phase, growth) in [
        ("listing", list_growth),
        ("dry-run replay", dry_growth),
        ("replay", replay_growth),
    ] {
        assert!(
            growth <= max_growth,
            "{phase}: peak RSS grew {growth:.0} MiB (at most {max_growth} MiB)"
        );
    }
    shutdown.cancel();
    let _ = server.await;
    app.stop().await;
}
