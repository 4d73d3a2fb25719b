//! The delivery stages (SPEC §4 "deliver.netsuite / deliver.suitex"): one
//! type, parameterised by target. resolve claim check → route → per-target
//! dedupe → HTTP POST → claim the fingerprint once the target answered 2xx.

pub mod http_sink;
pub mod routing;

use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::json;

use self::http_sink::HttpSink;
use self::routing::Route;
use super::{Failure, Incoming, Outcome, Stage, StageError, StageResult};
use crate::model::fingerprint::fingerprint_bytes;
use crate::model::merged_event::MergedEvent;
use crate::model::raw_event::Source;
use crate::snapshots::claim_check::{ClaimCheck, ClaimCheckError};
use crate::snapshots::SnapshotError;
use crate::store::ledger::{self, AuditRow};
use crate::store::{Store, StoreError};

/// The stage name (and audit `stage`) for a target.
pub fn stage_name(target: Source) -> &'static str {
    match target {
        Source::Netsuite => "deliver.netsuite",
        Source::Suitex => "deliver.suitex",
    }
}

pub struct DeliverStage {
    target: Source,
    sink: HttpSink,
    store: Store,
    claim_check: ClaimCheck,
}

impl DeliverStage {
    pub fn new(target: Source, sink: HttpSink, store: Store, claim_check: ClaimCheck) -> Self {
        Self {
            target,
            sink,
            store,
            claim_check,
        }
    }

    pub fn target(&self) -> Source {
        self.target
    }

    async fn run(&self, msg: &Incoming) -> StageResult {
        let (ev, body) = match self.claim_check.resolve(&msg.data).await {
            Ok(v) => v,
            Err(e) => {
                let fp = msg
                    .attributes
                    .get("fingerprint")
                    .cloned()
                    .unwrap_or_else(|| fingerprint_bytes(&msg.data));
                let error = resolve_failure(e);
                self.audit(
                    msg,
                    None,
                    &fp,
                    outcome_of(&error),
                    json!({"error": error.message}),
                    false,
                )
                .await?;
                return Err(Failure {
                    error,
                    fingerprint: Some(fp),
                });
            }
        };
        let fp = ev.fingerprint.clone();
        if self.already_delivered(&fp).await? {
            self.audit(msg, Some(&ev), &fp, "duplicate", json!({}), false)
                .await?;
            return Ok(Outcome::ack("duplicate", Some(fp)));
        }
        if let Route::Skip { reason } = routing::route(&ev, self.target) {
            self.audit(
                msg,
                Some(&ev),
                &fp,
                "skipped",
                json!({ "reason": reason }),
                false,
            )
            .await?;
            return Ok(Outcome::ack("skipped", Some(fp)));
        }
        match self.sink.post(&fp, body).await {
            Ok(d) => {
                let detail = json!({"status": d.status, "version": ev.version});
                match self
                    .audit(msg, Some(&ev), &fp, "delivered", detail, true)
                    .await
                {
                    Ok(()) => {
                        tracing::info!(
                            target = self.target.as_str(),
                            status = d.status,
                            version = ev.version,
                            "Merged event delivered."
                        );
                        Ok(Outcome::ack("delivered", Some(fp)))
                    }
                    // Another replica delivered the same fingerprint at the same
                    // time; the target dedupes on Idempotency-Key.
                    Err(_) if self.already_delivered(&fp).await? => {
                        Ok(Outcome::ack("duplicate", Some(fp)))
                    }
                    Err(f) => Err(f),
                }
            }
            Err(error) => {
                self.audit(
                    msg,
                    Some(&ev),
                    &fp,
                    outcome_of(&error),
                    json!({"error": error.message}),
                    false,
                )
                .await?;
                Err(Failure {
                    error,
                    fingerprint: Some(fp),
                })
            }
        }
    }

    async fn already_delivered(&self, fp: &str) -> Result<bool, Failure> {
        let store_fail = |e: StoreError| Failure {
            error: store_failure(&e),
            fingerprint: Some(fp.to_string()),
        };
        let mut conn = self
            .store
            .pool()
            .acquire()
            .await
            .map_err(|e| store_fail(e.into()))?;
        let claimed = ledger::claimed(&mut conn, stage_name(self.target), &[fp])
            .await
            .map_err(store_fail)?;
        Ok(claimed.contains(fp))
    }

    /// One audit row per execution; with `claim` it is the per-target dedupe
    /// claim. If it cannot be written the database is down: nack, not lose.
    async fn audit(
        &self,
        msg: &Incoming,
        ev: Option<&MergedEvent>,
        fp: &str,
        outcome: &str,
        detail: serde_json::Value,
        claim: bool,
    ) -> Result<(), Failure> {
        let row = AuditRow {
            event_id: ev.map(|e| e.event_id.clone()),
            fingerprint: fp.to_string(),
            record_type: ev.map(|e| e.record_type.clone()),
            record_id: ev.map(|e| e.record_id.clone()),
            stage: stage_name(self.target).to_string(),
            outcome: outcome.to_string(),
            detail: Some(detail.to_string()),
            message_id: Some(msg.message_id.clone()),
            attempt: i32::try_from(msg.execution).unwrap_or(i32::MAX),
            claim,
        };
        let _guard = self.store.write_guard().await;
        let result = async {
            let mut conn = self.store.pool().acquire().await?;
            ledger::insert_audit(&mut conn, std::slice::from_ref(&row)).await
        }
        .await;
        result.map_err(|e| Failure {
            error: store_failure(&e),
            fingerprint: Some(fp.to_string()),
        })
    }
}

fn outcome_of(e: &StageError) -> &'static str {
    e.dead_reason().unwrap_or("transient")
}

/// Snapshot problems classified as SPEC §10 says: unreadable → transient,
/// another env's bucket or wrong content → permanent.
fn resolve_failure(e: ClaimCheckError) -> StageError {
    match &e {
        ClaimCheckError::Malformed(_) => StageError::invalid(e.to_string()),
        ClaimCheckError::Snapshot(SnapshotError::Unavailable { .. }) => {
            StageError::transient(e.to_string())
        }
        ClaimCheckError::Snapshot(
            SnapshotError::Refused { .. } | SnapshotError::Corrupt { .. },
        ) => StageError::permanent(e.to_string()),
    }
}

fn store_failure(e: &StoreError) -> StageError {
    super::store_failure(e, "merged event")
}

impl Stage for DeliverStage {
    fn name(&self) -> &'static str {
        stage_name(self.target)
    }

    fn handle<'a>(&'a self, msg: &'a Incoming) -> BoxFuture<'a, StageResult> {
        Box::pin(self.run(msg))
    }
}

/// Builds the stage for `target` when its URL is configured.
pub fn build(
    target: Source,
    settings: &crate::config::Target,
    store: Store,
    claim_check: ClaimCheck,
) -> Result<Option<Arc<DeliverStage>>, http_sink::SinkBuildError> {
    let Some(url) = settings.url.clone() else {
        return Ok(None);
    };
    let sink = HttpSink::new(
        target.as_str(),
        url,
        settings.token.clone(),
        settings.timeout,
    )?;
    Ok(Some(Arc::new(DeliverStage::new(
        target,
        sink,
        store,
        claim_check,
    ))))
}
