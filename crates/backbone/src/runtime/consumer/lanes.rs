//! Per-ordering-key lanes: a record's messages run one after the other, in
//! order, and records in parallel; unordered messages run on their own.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use google_cloud_pubsub::model::Message;
use google_cloud_pubsub::subscriber::handler::Handler;
use tokio::task::JoinSet;

use super::executor::Recent;
use super::message::{begin, end, end_early, handle_one, Begun};
use super::{Action, Ctx};
use crate::internal_events::{emit, MessageReceived};

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

/// Runs a key's messages in order until its queue is empty, one step
/// ahead: message n+1 runs its stage while message n's outputs are being
/// published (their confirmation is the slow part of a lane), but n+1
/// publishes nothing before n's publishes are confirmed, so outputs leave
/// in order. If n is handed back, n+1 is too: its outputs must not overtake.
async fn key_worker(ctx: Arc<Ctx>, key: String, first: (Message, Handler)) {
    let mut next = Some(first);
    let mut ran: Option<(Begun, Handler)> = None;
    let mut published = Recent::default();
    loop {
        while let Some((m, h)) = next.take() {
            if ctx.stop.is_cancelled() {
                // Not started before the drain: hand it back.
                h.nack();
            } else {
                let _permit = ctx.permits.clone().acquire_owned().await;
                let begun = match ran.take() {
                    None => begin(&ctx, &m).await,
                    Some((prev, prev_h)) => {
                        let (settled, begun) =
                            tokio::join!(end(&ctx, prev, prev_h, &published), begin(&ctx, &m));
                        if settled.action == Action::Nack {
                            end_early(&ctx, begun, h, "nacked");
                            next = pop(&ctx, &key);
                            continue;
                        }
                        published.extend(settled.confirmed);
                        begun
                    }
                };
                ran = Some((begun, h));
            }
            next = pop(&ctx, &key);
        }
        // The queue is empty: settle the last message before giving up the
        // key, so that a new worker for it cannot overtake its publishes.
        if let Some((prev, prev_h)) = ran.take() {
            let settled = end(&ctx, prev, prev_h, &published).await;
            published.extend(settled.confirmed);
            next = pop(&ctx, &key);
            if next.is_some() {
                continue;
            }
        }
        let mut q = ctx.queues.lock().unwrap_or_else(|p| p.into_inner());
        next = q.get_mut(&key).and_then(VecDeque::pop_front);
        if next.is_some() {
            ctx.queued.fetch_sub(1, Ordering::AcqRel);
        }
        if next.is_none() {
            q.remove(&key);
            return;
        }
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
