//! A key's messages whose stages finished together publish their outputs
//! together (`runtime::consumer`, `end_run`): one request for a burst
//! instead of one confirmation after another. When the broker refuses one
//! of them, the client fails the rest of the key's run; the consumer resumes
//! the key and goes on one at a time (docs/spec.md §2: a failed publish never
//! stops a record), and nothing is lost, doubled beyond at-least-once or
//! published out of order.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backbone::model::message_limits::MESSAGE_MAX_BYTES;
use backbone::pubsub::clients;
use backbone::runtime::consumer::{self, ConsumerSpec, Runtime};
use backbone::runtime::outbox_relay::OutboxCompleter;
use backbone::stages::park::ParkStage;
use backbone::stages::{Direct, Incoming, Outbound, Outcome, Stage, StageResult};
use backbone::store::outbox::ConfirmedSet;
use backbone::topology::{ConsumerKind, TopicKind};
use bytes::Bytes;
use futures::future::BoxFuture;
use google_cloud_pubsub::model::Message;
use tokio_util::sync::CancellationToken;

use crate::faults_support::merged_order;
use crate::support::*;

const KEYS: usize = 6;
const VERSIONS: i64 = 12;
/// The version of `k0` whose output the broker refuses.
const POISON: i64 = 6;

/// Each raw message (data: its version) becomes one output on the merged
/// topic under the same key; `k0`'s version [`POISON`] becomes one the
/// broker refuses as INVALID_ARGUMENT although it passes the daemon's own
/// check (its serialized size is over 10 MB, its counted size exactly at it).
struct Echo;

impl Stage for Echo {
    fn name(&self) -> &'static str {
        "merge"
    }

    fn handle<'a>(&'a self, msg: &'a Incoming) -> BoxFuture<'a, StageResult> {
        Box::pin(async move {
            // Like the merge engine: the key's next messages start once this
            // one entered, so a round of them finishes together.
            msg.turn.wait_to_enter().await;
            msg.turn.pass();
            tokio::time::sleep(Duration::from_millis(30)).await;
            let version = String::from_utf8_lossy(&msg.data).to_string();
            let key = msg.ordering_key.clone();
            let attributes = HashMap::from([
                ("record_id".to_string(), key.clone()),
                ("version".to_string(), version.clone()),
            ]);
            let data = if key == "k0" && version == POISON.to_string() {
                let counted: usize = attributes.iter().map(|(k, v)| k.len() + v.len()).sum();
                Bytes::from(vec![b'x'; MESSAGE_MAX_BYTES - counted - key.len()])
            } else {
                Bytes::from(version.clone())
            };
            Ok(Outcome {
                label: "merged",
                fingerprint: None,
                publish: vec![Outbound {
                    topic: TopicKind::Merged,
                    ordering_key: key.clone(),
                    data,
                    attributes,
                    outbox_id: Some(format!("{key}/{version}")),
                }],
            })
        })
    }
}

/// The log lines the test's thread writes (the runtime is current-thread,
/// so every task of the consumer logs here).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn count(&self, needle: &str) -> usize {
        let text = String::from_utf8_lossy(&self.0.lock().expect("log buffer")).to_string();
        text.matches(needle).count()
    }
}

#[tokio::test]
async fn lane_runs_publish_together_and_a_refused_one_keeps_order() {
    let log = Captured::default();
    let writer = log.clone();
    let _logs = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish(),
    );
    let Some(app) = TestApp::prepare(Db::Sqlite, Overrides::new()).await else {
        return;
    };
    app.provision().await;
    let merged = tap_ordered(&app.topology, TopicKind::Merged).await;
    let built = app.build().await;
    let (outbox, _relay) = OutboxCompleter::start(app.store.clone(), ConfirmedSet::default());
    let rt = Arc::new(Runtime {
        publishers: built.publishers.clone(),
        outbox,
        max_attempts: 5,
        health: built.health.clone(),
        park: Arc::new(ParkStage::new(app.store.clone(), app.topology.clone())),
    });
    let spec = ConsumerSpec {
        subscription: app.topology.subscription_path(ConsumerKind::Merge),
        label: "lane-runs".into(),
        router: Arc::new(Direct(Arc::new(Echo))),
        max_outstanding: 1000,
        lanes: KEYS,
        ahead: 4,
    };
    let subscriber = clients::subscriber(&endpoint()).await.expect("subscriber");
    let stop = CancellationToken::new();
    let consumer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            consumer::run(&subscriber, &spec, rt, stop, Duration::from_secs(5)).await
        })
    };

    // Every key's versions at once, in order: its lane finds several done
    // together and publishes them as a run.
    let raw = clients::base_publisher(&endpoint())
        .await
        .expect("publisher")
        .publisher(app.topology.topic_path(TopicKind::Raw))
        .build();
    let mut sent = Vec::new();
    for v in 1..=VERSIONS {
        for k in 0..KEYS {
            sent.push(
                raw.publish(
                    Message::new()
                        .set_data(Bytes::from(v.to_string()))
                        .set_ordering_key(format!("k{k}")),
                ),
            );
        }
    }
    for s in sent {
        s.await.expect("publish raw");
    }

    let want = KEYS * VERSIONS as usize - 1;
    let got = merged.collect(want, Duration::from_secs(60)).await;
    let extra = merged.drain(Duration::from_secs(2)).await;
    let parked = eventually(Duration::from_secs(30), || async {
        app.store
            .dead_letters(&Default::default(), 10)
            .await
            .is_ok_and(|d| d.len() == 1)
    })
    .await;
    stop.cancel();
    let _ = consumer.await;

    let all: Vec<Message> = got.into_iter().chain(extra).collect();
    let finals: BTreeMap<String, i64> = (0..KEYS).map(|k| (format!("k{k}"), VERSIONS)).collect();
    let order = merged_order(&all, &finals);
    let runs_refused = log.count("A run's publish failed");
    println!(
        "LANE RUNS: {} merged messages for {want} outputs; out of order: {:?}; missing {}; \
         runs refused {runs_refused}; dead letter parked: {parked}",
        all.len(),
        order.out_of_order,
        order.missing,
    );
    assert!(
        order.out_of_order.is_empty(),
        "a key's output overtook an earlier one: {:?}",
        order.out_of_order
    );
    assert_eq!(
        order.missing, 1,
        "only k0's refused version may be missing from the merged topic"
    );
    assert!(parked, "the refused output is parked as a dead letter");
    let dl = app
        .store
        .dead_letters(&Default::default(), 10)
        .await
        .expect("dead letters");
    assert_eq!(dl[0].reason, "unpublishable", "{:?}", dl[0].reason);
    assert!(
        runs_refused >= 1,
        "the refused output was never part of a run published together (the case under test)"
    );
}
