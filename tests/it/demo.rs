//! `event-backbone demo` as a library call against the running emulator:
//! the whole scripted story must complete as expected.

use event_backbone::demo::{self, DemoOptions, RunFiles};
use tokio_util::sync::CancellationToken;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn demo_story_completes_against_the_emulator() {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let files = RunFiles::new(dir.path()).expect("demo files");
    let database = files.database.clone();
    let outcome = demo::run(
        DemoOptions {
            files,
            emulator_host: Some(emulator_host()),
            // Any free port: other tests may hold 9090.
            metrics_port: 0,
            admin_port: 0,
            echo: false,
            keep_running: false,
        },
        CancellationToken::new(),
    )
    .await;
    let text = outcome.transcript.join("\n");
    if let Err(e) = &outcome.result {
        panic!("the demo failed: {e}\n--- transcript ---\n{text}");
    }
    assert!(database.is_file(), "the demo keeps its database file");
    for expected in [
        "duplicate      recognised by its fingerprint",
        "winner netsuite by last_writer_wins",
        "claim check    the merged event went out as a",
        "dead-lettered  reason invalid at stage merge",
        "delivered      to SuiteX: HTTP 200 on attempt 3",
        "dead-lettered  reason exhausted after 5 attempts at stage deliver.netsuite",
        // The waits it shows are explained by the schedule it runs.
        "schedule       0.20 s, 0.40 s, 0.80 s, 1.00 s by the retry schedule (200ms doubling, capped at 1s, plus up to 20 % jitter)",
        "is marked replayed",
        "event-backbone events list --record-type project --record-id 42",
        "The story completed as expected",
    ] {
        assert!(text.contains(expected), "missing `{expected}` in\n{text}");
    }
}
