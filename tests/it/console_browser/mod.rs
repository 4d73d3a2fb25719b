//! The operator console in a real browser (docs/spec.md §7.1): headless
//! chromium driven through chromedriver. A target that answers 400 parks
//! deliveries; the operator logs in (a wrong token first), sees the issue,
//! opens it and one dead letter, fixes the target, replays the issue and
//! sees it resolved; opens a record's timeline and a field's explanation;
//! the targets page; logs out. Every page is saved as a screenshot in
//! target/console-screenshots/ (docs/console.md shows one of each).
//!
//! The CSRF refusals are checked with a plain HTTP client in
//! tests/it/console.rs (a browser always sends the token).

mod webdriver;

use std::path::PathBuf;
use std::time::Duration;

use self::webdriver::{Browser, Chromedriver};
use crate::support::*;
use crate::targets::{publish_flow, Behaviour, Target};

const TOKEN: &str = "console-browser-token";
const WAIT: Duration = Duration::from_secs(90);

fn shots_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots")
}

async fn open_dead_letters(app: &TestApp) -> i64 {
    app.store.pending_dead_letters().await.unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread")]
async fn console_browser_login_issue_replay_record_targets_logout() {
    let Some(driver) = Chromedriver::start().await else {
        return;
    };
    let ns = Target::start(
        0,
        Behaviour {
            reject: true,
            ..Default::default()
        },
    )
    .await;
    let sx = Target::start(0, Behaviour::default()).await;
    let o = Overrides::new()
        .targets(&ns.url(), &sx.url())
        .local_snapshots()
        .vars(&crate::targets::vars())
        .admin(TOKEN);
    let Some(app) = TestApp::spawn(Db::Sqlite, o).await else {
        return;
    };
    // Three records from SuiteX: NetSuite refuses each for good (400).
    publish_flow(&app, 3, 1, false, Duration::ZERO).await;
    let parked = eventually(WAIT, || async { open_dead_letters(&app).await == 3 }).await;
    assert!(parked, "three deliveries parked");

    let base = format!("http://{}", app.admin_addr());
    let b = Browser::open(&driver, shots_dir()).await;

    // Not logged in: the login page. A wrong token is refused.
    b.goto(&format!("{base}/console")).await;
    assert!(b.url().await.ends_with("/console/login"));
    b.screenshot("login").await;
    b.type_into("#token", "not-the-token").await;
    b.click("form.login button").await;
    let text = b.wait_text("That is not the admin token.").await;
    assert!(text.contains("That is not the admin token."), "{text}");
    b.screenshot("login-refused").await;

    // The admin token logs in: the overview.
    b.type_into("#token", TOKEN).await;
    b.type_into("#operator", "Ana (on call)").await;
    b.click("form.login button").await;
    let text = b.wait_text("Logged in as").await;
    assert!(text.contains("Logged in as Ana (on call)"), "{text}");
    assert!(
        text.contains("3 open dead letter(s) in 1 issue(s)"),
        "{text}"
    );
    b.screenshot("overview").await;

    // The issue: NetSuite answered 400.
    b.goto(&format!("{base}/console/dead-letters")).await;
    let text = b.text().await;
    assert!(text.contains("deliver.netsuite"), "{text}");
    assert!(text.contains("permanent"), "{text}");
    assert!(text.contains("answered HTTP # "), "{text}");
    b.screenshot("dead-letters").await;
    b.click("table.groups td.msg a").await;
    let text = b.wait_text("The whole issue").await;
    assert!(text.contains("The whole issue"), "{text}");
    b.screenshot("issue").await;
    let issue = b.url().await;

    // One dead letter: envelope, attempts, error history.
    b.click("table.dead-letters tbody tr td:nth-child(2) a")
        .await;
    let text = b.wait_text("Error history").await;
    assert!(text.contains("Error history"), "{text}");
    assert!(text.contains("answered HTTP 400"), "{text}");
    b.screenshot("dead-letter").await;

    // The preview says what a replay would send; one is discarded with a
    // reason; the rest are replayed once the target is fixed.
    b.goto(&issue).await;
    b.click("#preview-all").await;
    let text = b.wait_text("Preview: a replay would send").await;
    assert!(
        text.contains("a replay would send 3 dead letter(s) of 3 record(s)"),
        "{text}"
    );
    assert!(text.contains("deliver.netsuite 3"), "{text}");
    b.screenshot("preview").await;
    b.click("table.dead-letters tbody tr:first-child input[type=checkbox]")
        .await;
    b.type_into(
        "#discard-selected-reason",
        "a test record NetSuite must not get",
    )
    .await;
    b.click("#discard-selected").await;
    let text = b.wait_text("Discarded").await;
    assert!(text.contains("Discarded 1 dead letter(s)"), "{text}");
    b.screenshot("discarded").await;
    let discarded = count(
        &app.store,
        "SELECT COUNT(*) FROM dead_letters WHERE status = 'discarded' \
         AND status_actor = 'console:Ana (on call)' \
         AND status_reason = 'a test record NetSuite must not get'",
    )
    .await;
    assert_eq!(discarded, 1, "discarded, with who and why");
    ns.set(|bh| bh.reject = false);
    b.click("#replay-all").await;
    let text = b.wait_text("Replayed").await;
    assert!(text.contains("Replayed 2 dead letter(s)"), "{text}");
    b.screenshot("replayed").await;
    let delivered = eventually(WAIT, || async {
        ns.acked().len() == 2 && open_dead_letters(&app).await == 0
    })
    .await;
    assert!(delivered, "{}", ns.summary("netsuite"));
    b.goto(&format!("{base}/console/dead-letters")).await;
    assert!(b.text().await.contains("0 open dead letter(s)"));
    // A record NetSuite has (the discarded one's never went).
    let rid = ["p0000", "p0001", "p0002"]
        .into_iter()
        .find(|r| ns.acked().keys().any(|k| k.ends_with(r)))
        .expect("a delivered record");

    // A record's timeline, and why a field has its value.
    b.goto(&format!("{base}/console/records")).await;
    b.type_into("input[name=record_type]", "project").await;
    b.type_into("input[name=record_id]", rid).await;
    b.click("form.filters button").await;
    let text = b.wait_text(&format!("Record project/{rid}")).await;
    assert!(text.contains(&format!("Record project/{rid}")), "{text}");
    assert!(text.contains("Delivery positions per target"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("netsuite") && l.contains('1') && !l.contains("never")),
        "netsuite's acknowledged position: {text}"
    );
    b.screenshot("record").await;
    b.click("a[aria-label='Explain name']").await;
    let text = b.wait_text(&format!("Why project/{rid}")).await;
    assert!(
        text.contains(&format!("Why project/{rid} has its name")),
        "{text}"
    );
    b.screenshot("explain").await;

    // Targets: pacing, circuit, last answers.
    b.goto(&format!("{base}/console/targets")).await;
    let text = b.text().await;
    assert!(text.contains("Last answers of netsuite"), "{text}");
    assert!(
        text.contains("HTTP 400") || text.contains("permanent"),
        "{text}"
    );
    b.screenshot("targets").await;

    // Pause NetSuite while events flow: held, nothing sent, nothing
    // dead-lettered; resumed, everything goes out.
    b.click("#controls-netsuite summary").await;
    b.type_into("#pause-reason-netsuite", "NetSuite maintenance window")
        .await;
    b.click("#pause-netsuite").await;
    let text = b.wait_text("is paused").await;
    assert!(
        text.contains("netsuite is paused on every replica"),
        "{text}"
    );
    // Every replica (this one too) reads the pause within 2 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    b.goto(&format!("{base}/console/targets")).await;
    b.screenshot("target-paused").await;
    let sent = ns.hits().len();
    publish_flow(&app, 3, 2, false, Duration::ZERO).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(ns.hits().len(), sent, "nothing sent to a paused target");
    assert_eq!(open_dead_letters(&app).await, 0, "nothing dead-lettered");
    b.click("#controls-netsuite summary").await;
    b.click("#resume-netsuite").await;
    let text = b.wait_text("is resumed").await;
    assert!(text.contains("netsuite is resumed"), "{text}");
    let caught_up = eventually(WAIT, || async {
        let acked = ns.acked();
        acked.len() == 3 && acked.values().all(|v| *v == 2)
    })
    .await;
    assert!(caught_up, "{}", ns.summary("netsuite"));
    assert_eq!(open_dead_letters(&app).await, 0);

    // Resync a record NetSuite already has: one request, resync header.
    let sent = ns.hits().len();
    b.goto(&format!("{base}/console/targets")).await;
    b.click("#controls-netsuite summary").await;
    b.type_into(
        "#controls-netsuite input[name=records]",
        &format!("project:{rid}"),
    )
    .await;
    b.click("#resync-netsuite").await;
    let text = b.wait_text("Resynced").await;
    assert!(
        text.contains("Resynced 1 of 1 record(s) to netsuite"),
        "{text}"
    );
    let hits = ns.hits();
    assert_eq!(hits.len(), sent + 1, "one request");
    assert!(hits[sent].resync, "with X-Backbone-Resync: true");
    b.screenshot("resynced").await;

    // Logout: back to the login page, and the console asks again.
    b.click("form.logout button").await;
    let url = b.wait_url("/console/login").await;
    assert!(url.ends_with("/console/login"), "{url}");
    b.goto(&format!("{base}/console")).await;
    assert!(b.url().await.ends_with("/console/login"));
    b.close().await;
    println!("screenshots in {}", shots_dir().display());
    app.stop().await;
}
