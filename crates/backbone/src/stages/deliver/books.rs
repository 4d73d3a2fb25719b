//! A delivery's bookkeeping: reads and writes through the target's group
//! commit (`store::delivery_log`), the lease, the audit rows.

use crate::model::merged_event::MergedEvent;
use crate::stages::{store_failure, Failure, Incoming};
use crate::store::delivery_lease::Lease;
use crate::store::delivery_log::{DeliveryWrite, PositionRow, View, ViewKey};
use crate::store::ledger::{self, AuditRow};

use super::{stage_name, DeliverStage, MERGED_EVENT};

impl DeliverStage {
    /// Writes through the group commit; a failure is the stage's.
    pub(super) async fn write(&self, w: DeliveryWrite, fp: &str) -> Result<(), Failure> {
        self.log().write(w).await.map_err(|e| Failure {
            error: store_failure(&e, MERGED_EVENT),
            fingerprint: Some(fp.to_string()),
        })
    }

    /// The target stands at position `seq` (version `version`) of `ev`'s record.
    pub(super) fn position_row(
        &self,
        ev: &MergedEvent,
        seq: i64,
        version: i64,
        acked: bool,
    ) -> PositionRow {
        PositionRow {
            target: self.target.as_str().to_string(),
            record_type: ev.record_type.clone(),
            record_id: ev.record_id.clone(),
            seq,
            version,
            acked,
        }
    }

    pub(super) fn lease(&self, ev: &MergedEvent) -> Lease {
        Lease {
            target: self.target.as_str().to_string(),
            record_type: ev.record_type.clone(),
            record_id: ev.record_id.clone(),
            holder: self.holder,
        }
    }

    /// Gives a lease back; if the database does not answer, it expires.
    pub(super) async fn release(&self, lease: Lease) {
        if let Err(e) = self.log().write(DeliveryWrite::Release(lease)).await {
            tracing::debug!(error = %e, "Could not release a delivery lease; it expires on its own.");
        }
    }

    /// Whether this target's claim on `ev` exists (delivered before) and
    /// where the target stands for its record: one read.
    pub(super) async fn view(&self, ev: &MergedEvent) -> Result<View, Failure> {
        let key = ViewKey {
            fingerprint: ev.fingerprint.clone(),
            record_type: ev.record_type.clone(),
            record_id: ev.record_id.clone(),
        };
        self.log().view(key).await.map_err(|e| Failure {
            error: store_failure(&e, MERGED_EVENT),
            fingerprint: Some(ev.fingerprint.clone()),
        })
    }

    pub(super) async fn already_delivered(&self, fp: &str) -> Result<bool, Failure> {
        let claimed = self
            .store
            .timed(async {
                let mut conn = self.store.pool().acquire().await?;
                ledger::claimed(&mut conn, stage_name(self.target), &[fp]).await
            })
            .await
            .map_err(|e| Failure {
                error: store_failure(&e, MERGED_EVENT),
                fingerprint: Some(fp.to_string()),
            })?;
        Ok(claimed.contains(fp))
    }

    /// One audit row per execution; with `claim` it is the per-target dedupe
    /// claim. If it cannot be written the database is down: nack, not lose.
    pub(super) async fn audit(
        &self,
        msg: &Incoming,
        ev: Option<&MergedEvent>,
        fp: &str,
        outcome: &str,
        detail: serde_json::Value,
        claim: bool,
    ) -> Result<(), Failure> {
        let row = self.audit_row(msg, ev, fp, outcome, detail, claim);
        let w = if claim {
            DeliveryWrite::Done(row, None)
        } else {
            DeliveryWrite::Audit(row)
        };
        self.write(w, fp).await
    }

    pub(super) fn audit_row(
        &self,
        msg: &Incoming,
        ev: Option<&MergedEvent>,
        fp: &str,
        outcome: &str,
        detail: serde_json::Value,
        claim: bool,
    ) -> AuditRow {
        AuditRow {
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
        }
    }
}
