//! One message's way through a consumer: route it and run its stage
//! (`begin`), then carry out the result and tell the broker (`end`), with
//! its span, in-flight gauge and processing time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use google_cloud_pubsub::model::Message;
use google_cloud_pubsub::subscriber::handler::Handler;
use tracing::Instrument;

use super::executor::{Recent, Settled};
use super::{Action, Ctx};
use crate::internal_events::{emit, MessageProcessed};
use crate::metrics;
use crate::pubsub::trace_context::trace_context;
use crate::stages::lane_turn::LaneTurn;
use crate::stages::{Failure, Incoming, Outcome, Route, Stage, StageResult};

/// A message whose stage has run (or that was settled before it could).
pub(super) struct Begun {
    span: tracing::Span,
    started: Instant,
    ran: Ran,
}

enum Ran {
    /// The stage ran; its result is still to be carried out.
    Stage {
        stage: Arc<dyn Stage>,
        msg: Incoming,
        result: StageResult,
    },
    /// The router refused the message without running a stage.
    Rejected {
        stage: String,
        msg: Incoming,
        failure: Failure,
    },
    /// Nothing more to do but tell the broker.
    Done(Action, &'static str),
}

pub(super) async fn handle_one(ctx: &Ctx, m: Message, h: Handler) {
    let begun = begin(ctx, &m, LaneTurn::default()).await;
    end(ctx, begun, h, &Recent::default(), 0).await;
}

impl Begun {
    /// What its stage decided, when it ran and succeeded.
    pub(super) fn outcome(&self) -> Option<&Outcome> {
        match &self.ran {
            Ran::Stage {
                result: Ok(outcome),
                ..
            } => Some(outcome),
            _ => None,
        }
    }
}

/// Routes the message and runs its stage (holding it through an outage).
pub(super) async fn begin(ctx: &Ctx, m: &Message, turn: LaneTurn) -> Begun {
    let stop = &ctx.holds.stop;
    let span = tracing::info_span!(
        "message",
        message_id = %m.message_id,
        subscription = %ctx.label,
        ordering_key = %m.ordering_key,
        fingerprint = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    if let Some((trace, span_id)) = trace_context(&m.attributes) {
        span.record("trace_id", trace.as_str());
        span.record("span_id", span_id.as_str());
    }
    metrics::inflight_started(&ctx.label);
    // Processing time starts after a retry's scheduled wait (below).
    let mut started = Instant::now();
    let ran = async {
        let msg = Incoming {
            turn,
            ..Incoming::from(m)
        };
        match ctx.router.route(msg) {
            Route::Reject {
                stage,
                msg,
                failure,
            } => Ran::Rejected {
                stage,
                msg,
                failure,
            },
            Route::Run {
                stage,
                msg,
                not_before,
            } => {
                if let Some(at) = not_before {
                    let wait = (at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
                    if !wait.is_zero() {
                        tracing::debug!(wait = ?wait, "Holding the message until its retry is due.");
                        // The client keeps extending the lease while we hold it.
                        tokio::select! {
                            _ = stop.cancelled() => return Ran::Done(Action::Nack, "nacked"),
                            _ = tokio::time::sleep(wait) => {}
                        }
                        started = Instant::now();
                    }
                }
                match ctx.rt.run_held(stage.as_ref(), &msg, &ctx.holds).await {
                    Some(result) => Ran::Stage { stage, msg, result },
                    None => Ran::Done(Action::Nack, "nacked"),
                }
            }
        }
    }
    .instrument(span.clone())
    .await;
    Begun { span, started, ran }
}

/// Carries out what the stage decided, then acks or nacks; its first `skip`
/// outputs went out already (with a run, `end_run`).
pub(super) async fn end(
    ctx: &Ctx,
    b: Begun,
    h: Handler,
    published: &Recent,
    skip: usize,
) -> Settled {
    let settled = async {
        match b.ran {
            Ran::Done(action, label) => Settled {
                action,
                label,
                confirmed: Vec::new(),
            },
            Ran::Rejected {
                stage,
                msg,
                failure,
            } => {
                let (action, label) = ctx
                    .rt
                    .route_failure(&stage, &msg, failure, &ctx.holds)
                    .await;
                Settled {
                    action,
                    label,
                    confirmed: Vec::new(),
                }
            }
            Ran::Stage { stage, msg, result } => {
                ctx.rt
                    .settle(stage.name(), &msg, result, &ctx.holds, published, skip)
                    .await
            }
        }
    }
    .instrument(b.span)
    .await;
    tell_broker(ctx, h, settled.action, settled.label, b.started).await;
    settled
}

/// Carries out a run of one key's messages (in order): the outputs of those
/// whose stages succeeded are published together, then each is acked in
/// order. From the first output that did not go out, the one-at-a-time path
/// (`end`: retries, holds through an outage) takes over; once a message is
/// handed back, so are the ones after it (their outputs must not overtake).
/// Confirmed outbox ids join `published`.
pub(super) async fn end_run(
    ctx: &Ctx,
    run: Vec<(Begun, Handler)>,
    published: &mut Recent,
) -> Action {
    let outcomes: Vec<&Outcome> = run.iter().map_while(|(b, _)| b.outcome()).collect();
    let span = run.first().map(|(b, _)| b.span.clone());
    let sent = ctx
        .rt
        .publish_together(&outcomes, published)
        .instrument(span.unwrap_or_else(tracing::Span::none))
        .await;
    published.extend(sent.confirmed);
    let mut run = run.into_iter();
    for (b, h) in run.by_ref().take(sent.done) {
        let (label, fp) = b
            .outcome()
            .map_or(("processed", None), |o| (o.label, o.fingerprint.as_deref()));
        if let Some(fp) = fp {
            b.span.record("fingerprint", fp);
        }
        b.span
            .in_scope(|| tracing::debug!(outcome = label, "Message processed."));
        tell_broker(ctx, h, Action::Ack, label, b.started).await;
    }
    let mut skip = sent.next_output;
    while let Some((b, h)) = run.next() {
        let settled = end(ctx, b, h, published, std::mem::take(&mut skip)).await;
        published.extend(settled.confirmed);
        if settled.action == Action::Nack {
            for (b, h) in run {
                end_early(ctx, b, h, "nacked");
            }
            return Action::Nack;
        }
    }
    Action::Ack
}

/// Hands back a message whose stage ran but whose predecessor was handed
/// back: its outputs must not leave first. Its work is committed; the
/// redelivery finds it a duplicate and publishes what it left.
pub(super) fn end_early(ctx: &Ctx, b: Begun, h: Handler, label: &'static str) {
    h.nack();
    finish_metrics(ctx, label, b.started);
}

async fn tell_broker(ctx: &Ctx, h: Handler, action: Action, label: &'static str, started: Instant) {
    match action {
        Action::Ack => h.ack(),
        Action::Nack => {
            h.nack();
            if !ctx.holds.stop.is_cancelled() {
                // Something we depend on is down: slow this lane down rather
                // than spin on redeliveries.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    finish_metrics(ctx, label, started);
}

fn finish_metrics(ctx: &Ctx, label: &'static str, started: Instant) {
    metrics::inflight_ended(&ctx.label);
    emit(MessageProcessed {
        subscription: &ctx.label,
        outcome: label,
        elapsed: started.elapsed(),
    });
}
