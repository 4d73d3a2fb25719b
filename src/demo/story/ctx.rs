//! What the story works with, and the waits and reads its steps share.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use super::{expect, short, target_name, WAIT};
use crate::demo::observer::MergedObserver;
use crate::demo::targets::{Received, StandIn};
use crate::demo::{DemoError, Narrator};
use backbone::model::fingerprint::fingerprint;
use backbone::model::raw_event::{parse_raw_event, Source};
use backbone::pubsub::publisher::Publishers;
use backbone::stages::deliver::stage_name;
use backbone::store::dead_letters::{DeadLetter, DlqFilter};
use backbone::store::Store;
use backbone::topology::{StageName, TopicKind, Topology};

/// One audit row.
pub(super) type Audit = backbone::store::story::StageAudit;

/// What the story works with.
pub struct Ctx<'a> {
    pub store: Store,
    pub publishers: Arc<Publishers>,
    pub netsuite: &'a StandIn,
    pub suitex: &'a StandIn,
    pub observer: &'a MergedObserver,
    pub snapshots_url: String,
    pub threshold: u64,
    pub max_attempts: u32,
    /// The demo's retry schedule, to explain the waits it shows.
    pub retry: backbone::config::RetrySettings,
    pub topology: Topology,
    pub interrupt: &'a CancellationToken,
    pub metrics_addr: String,
}

/// A raw event the story published.
#[derive(Debug, Clone)]
pub(super) struct Sent {
    pub(super) fingerprint: String,
    pub(super) record_type: String,
    pub(super) record_id: String,
}

impl Sent {
    pub(super) fn record(&self) -> String {
        format!("{} {}", self.record_type, self.record_id)
    }
}

/// The persisted event behind a merge.
#[derive(Debug, Clone)]
pub(super) struct Persisted {
    pub(super) event_id: String,
    pub(super) sequence_num: i64,
    pub(super) full_snapshot_ref: Option<String>,
    pub(super) changes_len: i64,
}

impl Ctx<'_> {
    pub(super) fn stand_in(&self, t: Source) -> &StandIn {
        match t {
            Source::Netsuite => self.netsuite,
            Source::Suitex => self.suitex,
        }
    }

    /// Polls `f` every 100 ms until it yields a value, `within` passes or the
    /// demo is interrupted.
    pub(super) async fn wait_for<T, F, Fut>(
        &self,
        what: impl Into<String>,
        within: Duration,
        mut f: F,
    ) -> Result<T, DemoError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Option<T>, DemoError>>,
    {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(v) = f().await? {
                return Ok(v);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(DemoError::Timeout {
                    what: what.into(),
                    after: within,
                });
            }
            tokio::select! {
                _ = self.interrupt.cancelled() => return Err(DemoError::Interrupted),
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }

    pub(super) async fn pause(&self, d: Duration) -> Result<(), DemoError> {
        tokio::select! {
            _ = self.interrupt.cancelled() => Err(DemoError::Interrupted),
            _ = tokio::time::sleep(d) => Ok(()),
        }
    }

    /// Publishes a raw event to `events.raw.{env}` with its ordering key.
    /// `resolved` are the changes behind a `full_snapshot_ref`.
    pub(super) async fn send(
        &self,
        raw: &Value,
        resolved: Option<&Map<String, Value>>,
    ) -> Result<Sent, DemoError> {
        self.send_bytes(Bytes::from(raw.to_string()), resolved)
            .await
    }

    pub(super) async fn send_bytes(
        &self,
        data: Bytes,
        resolved: Option<&Map<String, Value>>,
    ) -> Result<Sent, DemoError> {
        let ev = parse_raw_event(&data)
            .map_err(|e| DemoError::Unexpected(format!("the story's own event is invalid: {e}")))?;
        let changes = resolved.unwrap_or(&ev.changes);
        let sent = Sent {
            fingerprint: fingerprint(&ev, changes),
            record_type: ev.record_type.clone(),
            record_id: ev.record_id.clone(),
        };
        self.publish(data, &ev.ordering_key()).await?;
        Ok(sent)
    }

    pub(super) async fn publish(&self, data: Bytes, ordering_key: &str) -> Result<(), DemoError> {
        self.publishers
            .publish_to(TopicKind::Raw, data, HashMap::new(), ordering_key)
            .await
            .map(|_| ())
            .map_err(|e| DemoError::Unexpected(format!("publishing to the raw topic failed: {e}")))
    }

    pub(super) async fn audit(&self, stage: &str, fp: &str) -> Result<Vec<Audit>, DemoError> {
        Ok(self.store.stage_audit(stage, fp).await?)
    }

    pub(super) async fn version(
        &self,
        record_type: &str,
        record_id: &str,
    ) -> Result<i64, DemoError> {
        Ok(self.store.record_version(record_type, record_id).await?)
    }

    /// Waits for the merge stage to persist `sent`.
    pub(super) async fn persisted(&self, sent: &Sent) -> Result<Persisted, DemoError> {
        let fp = sent.fingerprint.as_str();
        let claim = self
            .wait_for(
                format!("the merge stage to persist {}", sent.record()),
                WAIT,
                || async move {
                    let rows = self.audit(StageName::Merge.as_str(), fp).await?;
                    if let Some(bad) = rows
                        .iter()
                        .find(|a| a.outcome == "invalid" || a.outcome == "permanent")
                    {
                        return Err(DemoError::Unexpected(format!(
                            "the merge stage rejected {fp}: {}",
                            bad.detail.clone().unwrap_or_default()
                        )));
                    }
                    Ok(rows
                        .into_iter()
                        .find(|a| a.outcome == "merged" || a.outcome == "noop"))
                },
            )
            .await?;
        let event_id = claim.event_id.unwrap_or_default();
        let row = self
            .store
            .persisted_event(&event_id)
            .await?
            .ok_or_else(|| {
                DemoError::Unexpected(format!(
                    "the audit log names event {event_id}, which is not in `events`"
                ))
            })?;
        Ok(Persisted {
            event_id,
            sequence_num: row.sequence_num,
            full_snapshot_ref: row.full_snapshot_ref,
            changes_len: row.changes_len,
        })
    }

    /// Waits until the delivery stage for `target` finished with `sent`
    /// (delivered, skipped, refused, or covered: an earlier request of the
    /// record carried it, docs/spec.md §4.1) and returns its audit rows and whether
    /// it was covered.
    pub(super) async fn delivery(
        &self,
        target: Source,
        sent: &Sent,
    ) -> Result<(Vec<Audit>, bool), DemoError> {
        let stage = stage_name(target);
        let fp = sent.fingerprint.as_str();
        let seq = self.persisted(sent).await?.sequence_num;
        self.wait_for(
            format!("{} to handle {}", stage, sent.record()),
            WAIT,
            || async move {
                let rows = self.audit(stage, fp).await?;
                let done = rows.iter().any(|a| {
                    matches!(
                        a.outcome.as_str(),
                        "delivered" | "skipped" | "permanent" | "invalid"
                    )
                });
                if done {
                    return Ok(Some((rows, false)));
                }
                let at = self
                    .store
                    .delivery_position(target.as_str(), &sent.record_type, &sent.record_id)
                    .await?;
                if at.is_none_or(|p| p.acked < seq) {
                    return Ok(None);
                }
                // The position and a delivery's audit row commit together:
                // read the rows again, they may have come in between.
                let rows = self.audit(stage, fp).await?;
                let delivered = rows.iter().any(|a| a.outcome == "delivered");
                Ok(Some((rows, !delivered)))
            },
        )
        .await
    }

    /// Waits until `sent` reached `target` and returns the requests made
    /// for it (none when an earlier request of the record carried it).
    pub(super) async fn expect_delivered(
        &self,
        target: Source,
        sent: &Sent,
    ) -> Result<Vec<Received>, DemoError> {
        let (rows, covered) = self.delivery(target, sent).await?;
        if covered {
            return Ok(Vec::new());
        }
        let last = rows.last().map(|a| a.outcome.as_str()).unwrap_or("");
        expect(last == "delivered", || {
            format!(
                "{} was not delivered to {} (audit: {last})",
                sent.record(),
                target_name(target)
            )
        })?;
        Ok(self.stand_in(target).received_for(&sent.fingerprint))
    }

    /// Waits until the delivery stage for `target` passed `sent` by without
    /// a request: a skip writes no audit row, it raises the target's
    /// position for the record (the target is up to date through it).
    pub(super) async fn expect_skipped(
        &self,
        target: Source,
        sent: &Sent,
    ) -> Result<(), DemoError> {
        let seq = self.persisted(sent).await?.sequence_num;
        let stage = stage_name(target);
        self.wait_for(
            format!("{} to pass {} by", stage, sent.record()),
            WAIT,
            || async move {
                let at = self
                    .store
                    .delivery_position(target.as_str(), &sent.record_type, &sent.record_id)
                    .await?;
                Ok(at.filter(|p| p.acked >= seq).map(|_| ()))
            },
        )
        .await?;
        let rows = self.audit(stage, &sent.fingerprint).await?;
        let received = self.stand_in(target).received_for(&sent.fingerprint);
        expect(
            received.is_empty() && !rows.iter().any(|a| a.outcome == "delivered"),
            || {
                format!(
                    "{} should not go back to {} ({} requests received)",
                    sent.record(),
                    target_name(target),
                    received.len()
                )
            },
        )
    }

    pub(super) async fn dead_letter(&self, fp: &str) -> Result<Option<DeadLetter>, DemoError> {
        let all = self
            .store
            .dead_letters(
                &DlqFilter {
                    include_replayed: true,
                    ..Default::default()
                },
                1000,
            )
            .await?;
        Ok(all
            .into_iter()
            .find(|d| d.fingerprint.as_deref() == Some(fp)))
    }

    /// "persisted … (sequence n); <record> is now vN".
    pub(super) async fn narrate_persisted(
        &self,
        n: &mut Narrator,
        sent: &Sent,
        p: &Persisted,
    ) -> Result<i64, DemoError> {
        let v = self.version(&sent.record_type, &sent.record_id).await?;
        n.fact(
            "persisted",
            format!(
                "event {} (sequence {}, fingerprint {}…); {} is now v{v}",
                p.event_id,
                p.sequence_num,
                short(&sent.fingerprint),
                sent.record()
            ),
        );
        Ok(v)
    }

    /// Narrates a creation that goes to the other system only.
    pub(super) async fn new_record(
        &self,
        n: &mut Narrator,
        sent: &Sent,
        origin: Source,
    ) -> Result<(), DemoError> {
        let p = self.persisted(sent).await?;
        let v = self.narrate_persisted(n, sent, &p).await?;
        expect(v == 1, || {
            format!("{} should be v1, is v{v}", sent.record())
        })?;
        let other = match origin {
            Source::Netsuite => Source::Suitex,
            Source::Suitex => Source::Netsuite,
        };
        let got = self.expect_delivered(other, sent).await?;
        n.fact(
            "delivered",
            format!(
                "to {}: HTTP {} on attempt 1 (bearer token and Idempotency-Key sent)",
                target_name(other),
                got.last().map(|r| r.status).unwrap_or(0)
            ),
        );
        self.expect_skipped(origin, sent).await?;
        n.fact(
            "skipped",
            format!(
                "{}: it is the origin, so nothing is echoed back",
                target_name(origin)
            ),
        );
        Ok(())
    }
}
