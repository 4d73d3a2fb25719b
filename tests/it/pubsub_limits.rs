//! Issue 31, finding 1: what real Pub/Sub refuses, the test bed refuses too
//! (the emulator patch in scripts/emulator-patch/), and the daemon never
//! builds such a message: error envelopes stay within 100 attributes and
//! 1,024-byte values, and a message that still cannot be published is
//! parked straight into `dead_letters` (`unpublishable`), never held.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use backbone::model::envelope;
use backbone::model::message_limits;
use backbone::pubsub::clients;
use backbone::pubsub::publisher::PublishFailure;
use backbone::runtime::consumer::{Action, Holds, Runtime};
use backbone::runtime::outbox_relay::OutboxCompleter;
use backbone::stages::park::ParkStage;
use backbone::stages::{Failure, Incoming, StageError};
use backbone::store::dead_letters::DeadLetter;
use backbone::store::outbox::ConfirmedSet;
use backbone::topology::TopicKind;
use bytes::Bytes;
use google_cloud_pubsub::model::Message;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::deliver::{audit_count, deploy_with, Reply, NS};
use crate::support::*;

const WAIT: Duration = Duration::from_secs(45);

fn attributes(n: usize) -> HashMap<String, String> {
    (0..n)
        .map(|i| (format!("publisher_attr_{i:03}"), format!("value {i}")))
        .collect()
}

/// The parked rows, oldest first.
async fn parked(app: &TestApp) -> Vec<DeadLetter> {
    app.store
        .dead_letters(&Default::default(), 100)
        .await
        .expect("dead letters")
}

fn assert_publishable(dl: &DeadLetter) {
    if let Err(e) = message_limits::check(dl.data.len(), &dl.attributes, "") {
        panic!(
            "dead letter {} was parked over Pub/Sub's limits: {e}",
            dl.id
        );
    }
}

/// The emulator the tests use is as strict as production: a message with
/// 101 attributes or a 1,025-byte value is refused as INVALID_ARGUMENT. If
/// this fails, the emulator on PUBSUB_EMULATOR_HOST was started without
/// scripts/emulator-patch: restart it with scripts/services.sh.
#[tokio::test]
async fn limits_the_test_emulator_refuses_what_pubsub_refuses() {
    let Some(app) = TestApp::prepare(Db::Sqlite, Overrides::new()).await else {
        return;
    };
    app.provision().await;
    let base = clients::base_publisher(&endpoint()).await.expect("client");
    let raw = base
        .publisher(app.topology.topic_path(TopicKind::Raw))
        .build();
    let send = |attrs: HashMap<String, String>| {
        raw.publish(
            Message::new()
                .set_data(Bytes::from_static(b"x"))
                .set_attributes(attrs),
        )
    };
    let code = |r: Result<String, google_cloud_pubsub::error::PublishError>| match r {
        Ok(_) => "OK".to_string(),
        Err(google_cloud_pubsub::error::PublishError::Rpc(e)) => e
            .status()
            .map(|s| format!("{:?}", s.code))
            .unwrap_or_else(|| e.to_string()),
        Err(e) => e.to_string(),
    };
    assert_eq!(code(send(attributes(100)).await), "OK");
    assert_eq!(
        code(send(attributes(101)).await),
        "InvalidArgument",
        "the emulator must refuse 101 attributes as real Pub/Sub does (restart it with scripts/services.sh)"
    );
    let long = HashMap::from([("a".to_string(), "v".repeat(1025))]);
    assert_eq!(code(send(long).await), "InvalidArgument");

    // The daemon's publisher checks the limits itself: nothing is sent.
    let ours = publishers(&app.topology).await;
    let refused = ours
        .publish_to(
            TopicKind::Raw,
            Bytes::from_static(b"x"),
            attributes(101),
            "",
        )
        .await;
    assert!(
        matches!(refused, Err(PublishFailure::Unpublishable { .. })),
        "{refused:?}"
    );
    app.stop().await;
}

async fn many_attributes_invalid_body(db: Db) {
    let Some(app) = TestApp::spawn(db, Overrides::new()).await else {
        return;
    };
    let p = publishers(&app.topology).await;
    // The most a publisher can send (100 attributes) and a body that is
    // not JSON: dead-lettered `invalid` with our envelope on top.
    p.publish_to(
        TopicKind::Raw,
        Bytes::from_static(b"{not json"),
        attributes(100),
        "",
    )
    .await
    .expect("publish");
    assert!(
        eventually(WAIT, || async { parked(&app).await.len() == 1 }).await,
        "the invalid message was parked (holding: {:?})",
        app.health().holding()
    );
    // The merge consumer moved on: what comes next is merged.
    for i in 0..3 {
        let ev = raw_event(
            "suitex",
            "project",
            &format!("after-{i}"),
            0,
            "2026-03-13T20:00:00Z",
            json!({"name": i}),
        );
        publish_raw(&p, &ev).await;
    }
    assert!(
        eventually(WAIT, || async {
            count(&app.store, "SELECT COUNT(*) FROM events").await == 3
        })
        .await,
        "the next messages were merged"
    );
    let dl = parked(&app).await.remove(0);
    assert_eq!(dl.reason, "invalid");
    assert_eq!(dl.data, b"{not json", "the original data, unchanged");
    assert_publishable(&dl);
    let dropped: usize = dl.attributes[envelope::ATTRIBUTES_DROPPED]
        .parse()
        .expect("a count");
    let carried = dl
        .attributes
        .keys()
        .filter(|k| k.starts_with("publisher_attr_"))
        .count();
    assert_eq!(carried + dropped, 100, "{:?}", dl.attributes);
    assert_eq!(app.health().holding(), None, "nothing held");
    app.stop().await;
}

#[tokio::test]
async fn limits_raw_message_with_100_attributes_and_invalid_body_is_parked_and_merge_moves_on_sqlite(
) {
    many_attributes_invalid_body(Db::Sqlite).await;
}

#[tokio::test]
async fn limits_raw_message_with_100_attributes_and_invalid_body_is_parked_and_merge_moves_on_mariadb(
) {
    many_attributes_invalid_body(Db::Mariadb).await;
}

/// The daemon's runtime, built by hand on `app`'s database and topics, to
/// hand it a message the broker could not deliver to a consumer (101
/// attributes) or one whose envelope cannot fit (10 MB).
async fn runtime(app: &TestApp) -> (Runtime, Holds) {
    let built = app.build().await;
    let (outbox, _task) = OutboxCompleter::start(app.store.clone(), ConfirmedSet::default());
    let rt = Runtime {
        publishers: built.publishers.clone(),
        outbox,
        max_attempts: 5,
        health: built.health.clone(),
        park: Arc::new(ParkStage::new(app.store.clone(), app.topology.clone())),
    };
    let holds = Holds::new(
        "limits-test",
        built.health.clone(),
        CancellationToken::new(),
    );
    (rt, holds)
}

fn invalid(msg: &str) -> Failure {
    Failure {
        error: StageError::invalid(msg),
        fingerprint: None,
    }
}

/// A raw message with 101 attributes (which only a lenient broker delivers)
/// and an invalid body: its dead letter is built within the limits and
/// published; the runtime acks it at once.
#[tokio::test]
async fn limits_101_attribute_invalid_raw_message_gets_an_envelope_within_limits() {
    let Some(app) = TestApp::spawn(Db::Sqlite, Overrides::new()).await else {
        return;
    };
    let (rt, holds) = runtime(&app).await;
    let msg = Incoming {
        data: Bytes::from_static(b"{not json"),
        attributes: attributes(101),
        message_id: "m-101".into(),
        publish_time: None,
        ordering_key: String::new(),
        execution: 1,
        turn: Default::default(),
    };
    let routed = tokio::time::timeout(
        Duration::from_secs(30),
        rt.route_failure(
            "merge",
            &msg,
            invalid("invalid raw event: not JSON"),
            &holds,
        ),
    )
    .await;
    assert_eq!(
        routed.ok(),
        Some((Action::Ack, "dead_lettered")),
        "routed at once, not held (holding: {:?})",
        app.health().holding()
    );
    assert!(
        eventually(WAIT, || async { parked(&app).await.len() == 1 }).await,
        "the park consumer parked it"
    );
    let dl = parked(&app).await.remove(0);
    assert_eq!(dl.reason, "invalid");
    assert_publishable(&dl);
    assert!(dl.attributes.contains_key(envelope::ATTRIBUTES_DROPPED));
    app.stop().await;
}

/// A message whose envelope cannot fit at all (its data alone is at the
/// 10 MB limit) is parked straight into dead_letters as `unpublishable`,
/// its original attributes kept whole, and acked: never held.
#[tokio::test]
async fn limits_message_whose_envelope_cannot_fit_is_parked_unpublishable_not_held() {
    let Some(app) = TestApp::spawn(Db::Sqlite, Overrides::new()).await else {
        return;
    };
    let (rt, holds) = runtime(&app).await;
    let original = attributes(3);
    let msg = Incoming {
        data: Bytes::from(vec![b'x'; message_limits::MESSAGE_MAX_BYTES - 100]),
        attributes: original.clone(),
        message_id: "m-huge".into(),
        publish_time: None,
        ordering_key: "project:1".into(),
        execution: 1,
        turn: Default::default(),
    };
    let routed = tokio::time::timeout(
        Duration::from_secs(30),
        rt.route_failure(
            "merge",
            &msg,
            invalid("invalid raw event: not JSON"),
            &holds,
        ),
    )
    .await;
    assert_eq!(routed.ok(), Some((Action::Ack, "dead_lettered")));
    let rows = parked(&app).await;
    assert_eq!(rows.len(), 1);
    let dl = &rows[0];
    assert_eq!(dl.reason, "unpublishable");
    assert_eq!(dl.stage, "merge");
    assert_eq!(dl.data.len(), msg.data.len(), "the original data, whole");
    assert_eq!(dl.attributes, original, "the original attributes, whole");
    assert!(
        dl.last_error
            .as_deref()
            .is_some_and(|e| e.contains("Pub/Sub accepts at most")),
        "{:?}",
        dl.last_error
    );
    assert_eq!(app.health().holding(), None);
    // The same message again (a redelivery) is not parked twice.
    let again = rt
        .route_failure(
            "merge",
            &msg,
            invalid("invalid raw event: not JSON"),
            &holds,
        )
        .await;
    assert_eq!(again, (Action::Ack, "dead_lettered"));
    assert_eq!(parked(&app).await.len(), 1);
    app.stop().await;
}

async fn long_502_page_five_times(db: Db) {
    let Some(d) = deploy_with(
        db,
        &[
            ("BACKBONE__RETRY__INITIAL_BACKOFF", "100ms"),
            ("BACKBONE__RETRY__MAX_BACKOFF", "300ms"),
            // One record fails while the target is fine: no circuit.
            ("BACKBONE__TARGETS__NETSUITE__CIRCUIT_FAILURES", "100"),
        ],
        async |_| {},
    )
    .await
    else {
        return;
    };
    // A proxy's ~900-byte error page, five times over.
    let page = format!(
        "<html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1><p>{}</p></body></html>",
        "The upstream server did not answer in time. ".repeat(18)
    );
    assert!((850..1000).contains(&page.len()), "{}", page.len());
    d.sink.script(NS, &vec![Reply::Body(502, page); 5]);
    let p = publishers(&d.app.topology).await;
    let ev = |rid: &str| {
        raw_event(
            "suitex",
            "project",
            rid,
            0,
            "2026-03-13T20:00:00Z",
            json!({"name": rid}),
        )
    };
    publish_raw(&p, &ev("7")).await;
    assert!(
        eventually(Duration::from_secs(60), || async {
            parked(&d.app).await.len() == 1
        })
        .await,
        "dead-lettered after five executions (holding: {:?})",
        d.app.health().holding()
    );
    let dl = parked(&d.app).await.remove(0);
    assert_eq!(
        (dl.stage.as_str(), dl.reason.as_str()),
        ("deliver.netsuite", "exhausted")
    );
    assert_eq!(dl.attempts, 5);
    assert_publishable(&dl);
    let history = &dl.attributes[envelope::ERROR_HISTORY];
    assert!(history.len() <= 1024, "{}", history.len());
    assert_eq!(
        dl.errors.len(),
        5,
        "one line per execution: {:?}",
        dl.errors
    );
    // The retry consumer moved on: a record that fails once is delivered
    // on its retry, and the live consumer delivers the next record.
    d.sink.script(NS, &[Reply::Status(500)]);
    publish_raw(&p, &ev("8")).await;
    assert!(
        eventually(WAIT, || async {
            audit_count(&d.app.store, "deliver.netsuite", "delivered").await == 1
        })
        .await,
        "record 8 was delivered on its retry"
    );
    publish_raw(&p, &ev("9")).await;
    assert!(
        eventually(WAIT, || async {
            audit_count(&d.app.store, "deliver.netsuite", "delivered").await == 2
        })
        .await
    );
    assert_eq!(d.app.health().holding(), None);
    d.app.stop().await;
}

#[tokio::test]
async fn limits_long_502_page_five_times_is_dead_lettered_within_limits_sqlite() {
    long_502_page_five_times(Db::Sqlite).await;
}

#[tokio::test]
async fn limits_long_502_page_five_times_is_dead_lettered_within_limits_mariadb() {
    long_502_page_five_times(Db::Mariadb).await;
}
