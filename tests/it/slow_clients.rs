//! Issue 31, finding 5 (docs/spec.md §10 "slow or idle HTTP clients"): the metrics
//! and admin ports close connections that do not send a request's headers
//! in time, cap how many are open, and keep answering meanwhile.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

const TOKEN: &str = "slow-clients-token";

/// `n` connections to `addr`: every other one idle (nothing sent), the rest
/// half-sent (a request line and a header, never the blank line).
async fn hold_open(addr: &str, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        if i % 2 == 1 {
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: slow\r\n")
                .await
                .expect("half a request");
        }
        held.push(s);
    }
    held
}

/// Whether the server closed `s` within `within` (EOF or reset).
async fn closed_by_server(mut s: TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // A 408 or similar before closing: keep reading to the end.
            Ok(Ok(_)) => continue,
        }
    }
}

async fn get(url: &str, token: Option<&str>) -> Option<u16> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .ok()?;
    let mut req = client.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.ok().map(|r| r.status().as_u16())
}

#[tokio::test]
async fn slow_clients_1000_idle_or_half_sent_connections_do_not_silence_metrics_or_admin() {
    let Some(app) = TestApp::spawn(Db::Sqlite, Overrides::new().admin(TOKEN)).await else {
        return;
    };
    let metrics = app.metrics_addr().to_string();
    let admin = app.admin_addr().to_string();
    let opened = Instant::now();
    let mut held = hold_open(&metrics, 1000).await;
    held.extend(hold_open(&admin, 1000).await);

    // Both ports answer at once, with the 2,000 connections open.
    let metrics_url = format!("http://{metrics}/metrics");
    let admin_url = format!("http://{admin}/admin/dlq");
    let t = Instant::now();
    assert_eq!(get(&metrics_url, None).await, Some(200), "/metrics answers");
    assert_eq!(
        get(&admin_url, Some(TOKEN)).await,
        Some(200),
        "the admin API answers"
    );
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());

    // Every one of them is closed by the server within the header-read
    // timeout (5 s), counted from when it opened.
    let within = Duration::from_secs(9).saturating_sub(opened.elapsed());
    let checks: Vec<_> = held
        .into_iter()
        .map(|s| tokio::spawn(closed_by_server(s, within)))
        .collect();
    let mut still_open = 0;
    for c in checks {
        if !c.await.unwrap_or(false) {
            still_open += 1;
        }
    }
    assert_eq!(
        still_open, 0,
        "connections the server left open past the header-read timeout"
    );
    assert_eq!(get(&metrics_url, None).await, Some(200));
    let (_, text) = crate::faults_support::http_get(app.metrics_addr(), "/metrics").await;
    assert!(
        text.lines().any(|l| l.starts_with(
            "backbone_http_connections_shed_total{action=\"evicted_idle\",listener=\"metrics\"}"
        ) && !l.ends_with(" 0")),
        "the cap made room by closing idle connections"
    );
    app.stop().await;
}
