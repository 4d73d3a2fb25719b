//! The delivery stages (docs/spec.md §4 "deliver.netsuite / deliver.suitex"): one
//! type, parameterised by target. resolve claim check → route → per-target
//! dedupe → signed HTTP POST → claim the fingerprint once the target
//! answered 2xx.
//!
//! One folder per concern: `attempt` (the loop of attempts and the lease),
//! `keeper` (the lease renewed while held),
//! `plan` (what to send), `books` (the bookkeeping), `http_sink` and
//! `auth` (the request), `answer` (what a refusal means), `pacing` and
//! `slots` (how fast, how many).

pub mod answer;
mod attempt;
pub mod auth;
mod books;
pub mod fold;
pub mod http_sink;
mod keeper;
mod known;
mod lease;
pub mod pacing;
mod plan;
pub mod routing;
pub mod slots;
mod takeover;
pub mod turns;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::json;

use self::attempt::Delivery;
use self::auth::Auth;
use self::http_sink::{HttpSink, Signal, SinkFailure, Vocabulary};
use self::pacing::{Answer, Pacer, Stopped};
use self::slots::AccountSlots;
use super::{snapshot_failure, Failure, Incoming, Stage, StageError, StageResult};
use crate::model::fingerprint::fingerprint_bytes;
use crate::model::merged_event::MergedEvent;
use crate::model::raw_event::Source;
use crate::snapshots::claim_check::{ClaimCheck, ClaimCheckError};
use crate::store::delivery_lease;
use crate::store::delivery_log::DeliveryLog;
use crate::store::Store;
use crate::topology::StageName;

/// Writers of each target's delivery bookkeeping (see `store::delivery_log`).
const LOG_WORKERS: usize = 2;

/// What this stage reads, as its store failures name it.
const MERGED_EVENT: &str = "merged event";

/// Between two sends of a request the target throttled without saying for
/// how long.
const AGAIN_MIN: Duration = Duration::from_millis(100);
const AGAIN_MAX: Duration = Duration::from_secs(5);
/// Between two looks at a record another live replica is delivering: its
/// request and bookkeeping take about a round trip, and a dead one's lease
/// runs out within `lease_ttl`, so a look at most this far apart.
const BUSY_MIN: Duration = Duration::from_millis(50);
const BUSY_MAX: Duration = Duration::from_millis(500);

/// The stage name (and audit `stage`) for a target.
pub fn stage_name(target: Source) -> &'static str {
    match target {
        Source::Netsuite => StageName::DeliverNetsuite,
        Source::Suitex => StageName::DeliverSuitex,
    }
    .as_str()
}

pub struct DeliverStage {
    target: Source,
    sink: HttpSink,
    store: Store,
    claim_check: ClaimCheck,
    /// Serialises this target's deliveries per record in this process.
    turns: turns::Turns,
    /// Started on first use, inside the runtime.
    log: std::sync::OnceLock<DeliveryLog>,
    /// The target's pace, shared by the live and retry consumers (docs/spec.md §4.2).
    pacer: Arc<Pacer>,
    /// The account-wide cap on requests in flight, across replicas (docs/spec.md §4.3).
    slots: Option<Arc<AccountSlots>>,
    /// Where this process last left the target, per record.
    known: known::Known,
    /// This process's id on delivery leases, and how long one lasts.
    holder: i64,
    lease_ttl: Duration,
    /// How old a record's merged event must be before its first live
    /// delivery sends: a burst still arriving then goes as one request.
    coalesce: Duration,
    /// `targets.<t>.takeover`.
    takeover: bool,
    /// Deliveries of messages under way in this process, and when the last
    /// one ended (`takeover` looks only after a quiet spell).
    active: std::sync::atomic::AtomicUsize,
    last_active: std::sync::Mutex<Option<tokio::time::Instant>>,
}

impl DeliverStage {
    pub fn new(
        target: Source,
        sink: HttpSink,
        store: Store,
        claim_check: ClaimCheck,
        pacer: Arc<Pacer>,
        lease_ttl: Duration,
    ) -> Self {
        Self {
            target,
            sink,
            store,
            claim_check,
            turns: turns::Turns::default(),
            known: known::Known::default(),
            log: std::sync::OnceLock::new(),
            pacer,
            slots: None,
            holder: delivery_lease::new_holder(),
            lease_ttl,
            coalesce: Duration::ZERO,
            takeover: false,
            active: Default::default(),
            last_active: Default::default(),
        }
    }

    /// `targets.<t>.coalesce`.
    pub fn with_coalesce(mut self, coalesce: Duration) -> Self {
        self.coalesce = coalesce;
        self
    }

    /// `targets.<t>.takeover`.
    pub fn with_takeover(mut self, takeover: bool) -> Self {
        self.takeover = takeover;
        self
    }

    /// Whether it takes over, while idle, what nobody is delivering.
    pub fn takes_over(&self) -> bool {
        self.takeover
    }

    /// Caps requests in flight to the target across replicas.
    pub fn with_slots(mut self, slots: Option<Arc<AccountSlots>>) -> Self {
        self.slots = slots;
        self
    }

    pub fn pacer(&self) -> &Arc<Pacer> {
        &self.pacer
    }

    pub fn sink(&self) -> &HttpSink {
        &self.sink
    }

    fn log(&self) -> &DeliveryLog {
        self.log.get_or_init(|| {
            DeliveryLog::start(
                self.store.clone(),
                LOG_WORKERS,
                stage_name(self.target),
                self.target.as_str(),
            )
        })
    }

    async fn run(&self, msg: &Incoming) -> StageResult {
        let _active = Active::enter(&self.active, &self.last_active);
        let (ev, body) = match self.claim_check.resolve(&msg.data).await {
            Ok(v) => v,
            Err(e) => return Err(self.unresolved(msg, e).await),
        };
        let mut steps = crate::metrics::StepTimer::start(stage_name(self.target));
        // One request at a time per record and target in this process, so
        // a retry of an older version never races a newer one (docs/spec.md §4.1 P1);
        // the lease does the same across replicas (docs/spec.md §4.2).
        let _turn = self.turns.lock(&ev.ordering_key()).await;
        steps.mark("turn_wait");
        let seq = self.position(msg, &ev).await?;
        // Where this process last left the target for the record, if this
        // event comes after it; otherwise (or unknown) read it. The claim
        // checks it against the database either way.
        let view = match self.known.view(&ev, seq) {
            Some(v) => v,
            None => self.view(&ev).await?,
        };
        steps.mark("state_read");
        let d = Delivery {
            msg,
            ev,
            body,
            seq,
            steps: std::sync::Mutex::new(steps),
            takeover: false,
        };
        let result = self.deliver(&d, view).await;
        if matches!(&result, Ok(o) if o.label == "delivered") {
            d.steps
                .into_inner()
                .unwrap_or_else(|p| p.into_inner())
                .observe();
        }
        result
    }

    /// A message whose merged event cannot be read: audited unless the
    /// snapshot store is merely unavailable (then it is held).
    async fn unresolved(&self, msg: &Incoming, e: ClaimCheckError) -> Failure {
        let fp = msg
            .attributes
            .get("fingerprint")
            .cloned()
            .unwrap_or_else(|| fingerprint_bytes(&msg.data));
        let error = resolve_failure(e);
        if error.class != super::ErrorClass::Unavailable {
            let detail = json!({"error": error.message});
            if let Err(f) = self
                .audit(msg, None, &fp, outcome_of(&error), detail, false)
                .await
            {
                return f;
            }
        }
        Failure {
            error,
            fingerprint: Some(fp),
        }
    }
}

/// One delivery of a message under way, counted while it lasts; when it
/// ends is kept.
struct Active<'a>(
    &'a std::sync::atomic::AtomicUsize,
    &'a std::sync::Mutex<Option<tokio::time::Instant>>,
);

impl<'a> Active<'a> {
    fn enter(
        n: &'a std::sync::atomic::AtomicUsize,
        last: &'a std::sync::Mutex<Option<tokio::time::Instant>>,
    ) -> Self {
        n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(n, last)
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        *self.1.lock().unwrap_or_else(|p| p.into_inner()) = Some(tokio::time::Instant::now());
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The message goes back to the broker at shutdown (nack), never failed.
fn stopped(e: Stopped, fp: &str) -> Failure {
    Failure {
        error: StageError::unavailable(e.to_string()),
        fingerprint: Some(fp.to_string()),
    }
}

/// What a failed request says about the target, for pacing.
fn pacing_answer(f: &SinkFailure) -> Answer {
    use self::pacing::circuit::Failure as Kind;
    let failed = |kind, back_pressure| Answer::Failed {
        kind,
        back_pressure,
    };
    match f.signal {
        Signal::Throttled {
            status,
            retry_after,
        } => Answer::Throttled {
            status,
            retry_after,
        },
        Signal::Rejected(_) => Answer::Rejected,
        Signal::Unreachable => failed(Kind::Unreachable, true),
        Signal::Timeout => failed(Kind::Failed, true),
        Signal::Server(503) => failed(Kind::Unavailable, true),
        Signal::Server(s) => failed(Kind::Failed, s == 408),
        Signal::Broken => failed(Kind::Failed, false),
        Signal::Auth { fresh, .. } => failed(Kind::Auth { fresh }, false),
        Signal::Misconfigured(_) => failed(Kind::Config, false),
    }
}

/// The circuit tells records apart by this.
fn record_hash(ev: &MergedEvent) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (&ev.record_type, &ev.record_id).hash(&mut h);
    h.finish()
}

/// A jittered exponential backoff between `min` and `max`, without end.
fn delays(min: Duration, max: Duration) -> backon::ExponentialBackoff {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max)
        .without_max_times()
        .with_jitter()
        .build()
}

fn outcome_of(e: &StageError) -> &'static str {
    e.dead_reason().unwrap_or("transient")
}

/// A message that is not a merged event is invalid; snapshot problems are
/// classified as for every stage.
fn resolve_failure(e: ClaimCheckError) -> StageError {
    match &e {
        ClaimCheckError::Malformed(_) => StageError::invalid(e.to_string()),
        ClaimCheckError::Snapshot(s) => snapshot_failure(s),
    }
}

impl Stage for DeliverStage {
    fn name(&self) -> &'static str {
        stage_name(self.target)
    }

    fn handle<'a>(&'a self, msg: &'a Incoming) -> BoxFuture<'a, StageResult> {
        Box::pin(self.run(msg))
    }

    /// Nothing new is pulled for a target whose circuit is open or that
    /// asked us to wait (docs/spec.md §4.2); what is held waits in the pacer.
    fn accepting(&self) -> bool {
        self.pacer.accepting()
    }
}

/// Where and how one target is delivered to (the composition root fills it
/// from `targets.*`; a target without a URL gets no stage).
#[derive(Debug, Clone)]
pub struct DeliverSettings {
    pub url: url::Url,
    pub auth: Arc<Auth>,
    pub vocabulary: Vocabulary,
    pub timeout: Duration,
    pub lease_ttl: Duration,
    /// `targets.<t>.coalesce`.
    pub coalesce: Duration,
    /// `targets.<t>.takeover`.
    pub takeover: bool,
    /// The target's HTTP client (shared with its OAuth 2.0 token endpoint).
    pub client: reqwest::Client,
}

/// Builds the stage for `target`.
pub fn build(
    target: Source,
    settings: DeliverSettings,
    store: Store,
    claim_check: ClaimCheck,
    pacer: Arc<Pacer>,
    slots: Option<Arc<AccountSlots>>,
) -> Arc<DeliverStage> {
    let sink = HttpSink::new(
        target.as_str(),
        settings.url,
        settings.auth,
        settings.vocabulary,
        settings.timeout,
        settings.client,
    );
    Arc::new(
        DeliverStage::new(target, sink, store, claim_check, pacer, settings.lease_ttl)
            .with_slots(slots)
            .with_coalesce(settings.coalesce)
            .with_takeover(settings.takeover),
    )
}
