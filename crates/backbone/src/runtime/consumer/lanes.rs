//! Per-ordering-key lanes: a record's messages run one after the other, in
//! order, and records in parallel; unordered messages run on their own.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use google_cloud_pubsub::model::Message;
use google_cloud_pubsub::subscriber::handler::Handler;
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinSet;
use tokio_util::task::AbortOnDropHandle;

use super::executor::Recent;
use super::message::{begin, end, end_early, end_run, handle_one, Begun};
use super::{Action, Ctx};
use crate::internal_events::{emit, MessageReceived};
use crate::stages::lane_turn::LaneTurn;

/// Hands a message to its worker: unordered ones run on their own (held
/// retries must not block each other; the broker's flow control bounds how
/// many there are), ordered ones queue behind their key's worker, so a
/// record's messages run in order and records in parallel.
pub(super) fn dispatch(
    ctx: &Arc<Ctx>,
    tasks: &mut JoinSet<()>,
    unordered: bool,
    m: Message,
    h: Handler,
) {
    emit(MessageReceived {
        subscription: &ctx.label,
    });
    if unordered || m.ordering_key.is_empty() {
        let ctx = ctx.clone();
        tasks.spawn(async move {
            handle_one(&ctx, m, h).await;
        });
        return;
    }
    let key = m.ordering_key.clone();
    let start_worker = {
        let mut q = ctx.queues.lock().unwrap_or_else(|p| p.into_inner());
        match q.get_mut(&key) {
            Some(queue) => {
                queue.push_back((m, h));
                ctx.queued.fetch_add(1, Ordering::AcqRel);
                None
            }
            None => {
                q.insert(key.clone(), VecDeque::new());
                Some((m, h))
            }
        }
    };
    if let Some(first) = start_worker {
        tasks.spawn(key_worker(ctx.clone(), key, first));
    }
}

/// Runs a key's messages in order until its queue is empty. Up to `ahead`
/// later messages run their stage while the earliest one's outputs are
/// published (their confirmation is the slow part of a lane), and those
/// done by then are published with it, in one go; each starts
/// once the one before it passed its turn (`stages::lane_turn`: when its
/// stage returned, or earlier if the stage says its order-sensitive part
/// began). Outputs leave in order: a message is settled only after every
/// earlier one was. If one is handed back, the ones begun behind it are too:
/// their outputs must not overtake.
async fn key_worker(ctx: Arc<Ctx>, key: String, first: (Message, Handler)) {
    let mut next = Some(first);
    let mut begun: VecDeque<(AbortOnDropHandle<Begun>, Handler)> = VecDeque::new();
    let mut last_turn: Option<LaneTurn> = None;
    let mut published = Recent::default();
    let mut permit: Option<OwnedSemaphorePermit> = None;
    loop {
        while begun.len() <= ctx.ahead {
            let Some((m, h)) = next.take().or_else(|| pop(&ctx, &key)) else {
                break;
            };
            if ctx.stop.is_cancelled() {
                // Not started before the drain: hand it back.
                h.nack();
                continue;
            }
            if permit.is_none() {
                permit = ctx.permits.clone().acquire_owned().await.ok();
            }
            let turn = LaneTurn::behind(last_turn.as_ref());
            last_turn = Some(turn.clone());
            let task_ctx = ctx.clone();
            let task = tokio::spawn(async move {
                turn.wait_to_start().await;
                let b = begin(&task_ctx, &m, turn.clone()).await;
                turn.finish();
                b
            });
            begun.push_back((AbortOnDropHandle::new(task), h));
        }
        let Some((task, h)) = begun.pop_front() else {
            // Nothing begun and nothing queued: give up the key, unless a
            // message arrived since the queue was last looked at.
            drop(permit.take());
            let mut q = ctx.queues.lock().unwrap_or_else(|p| p.into_inner());
            next = q.get_mut(&key).and_then(VecDeque::pop_front);
            if next.is_some() {
                ctx.queued.fetch_sub(1, Ordering::AcqRel);
                continue;
            }
            q.remove(&key);
            return;
        };
        // The ones behind it whose stages are done already settle with it:
        // their outputs go out together (`end_run`).
        let mut run = vec![(joined(task).await, h)];
        let mut yielded = false;
        while run.last().is_some_and(|(b, _)| b.outcome().is_some()) {
            let Some((next, _)) = begun.front() else {
                break;
            };
            if !next.is_finished() {
                if yielded {
                    break;
                }
                // Woken with it (one merge batch), it may be done after one turn.
                yielded = true;
                tokio::task::yield_now().await;
                continue;
            }
            if let Some((task, h)) = begun.pop_front() {
                run.push((joined(task).await, h));
            }
        }
        let action = if run.len() == 1 {
            let (b, h) = run.remove(0);
            let settled = end(&ctx, b, h, &published, 0).await;
            published.extend(settled.confirmed);
            settled.action
        } else {
            end_run(&ctx, run, &mut published).await
        };
        if action == Action::Nack {
            while let Some((task, h)) = begun.pop_front() {
                end_early(&ctx, joined(task).await, h, "nacked");
            }
            last_turn = None;
        }
    }
}

/// A begun message's stage result; a panic in it is the lane's own.
async fn joined(task: AbortOnDropHandle<Begun>) -> Begun {
    match task.await {
        Ok(b) => b,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// The next queued message of `key`, leaving the key registered.
fn pop(ctx: &Ctx, key: &str) -> Option<(Message, Handler)> {
    let mut q = ctx.queues.lock().unwrap_or_else(|p| p.into_inner());
    let next = q.get_mut(key).and_then(VecDeque::pop_front);
    if next.is_some() {
        ctx.queued.fetch_sub(1, Ordering::AcqRel);
    }
    next
}
