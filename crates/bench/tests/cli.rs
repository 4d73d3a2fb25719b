//! The bench binary's command line. Having an integration test also makes
//! `cargo test --workspace` build `target/<profile>/backbone-bench` itself,
//! beside the daemon, where the workspace's tests (tests/it) run it.

use std::process::Command;

#[test]
fn every_bench_has_help_and_a_wrong_one_exits_2() {
    let bin = env!("CARGO_BIN_EXE_backbone-bench");
    for which in ["merge", "history", "mcp", "pipeline", "archive", "storage"] {
        let out = Command::new(bin)
            .args([which, "--help"])
            .output()
            .expect("run backbone-bench");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("Usage"),
            "{which}: {text}"
        );
    }
    let out = Command::new(bin)
        .arg("no-such-bench")
        .output()
        .expect("run backbone-bench");
    assert_eq!(out.status.code(), Some(2));
}
