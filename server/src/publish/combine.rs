//! Write combining: concurrent publishes share one store transaction.
//!
//! Backends mostly create notifications one at a time, each its own `POST`, from many
//! workers at once. Stored one by one, each pays a transaction, a trip through the
//! store's writer and a broker hand-off of its own, and the requests queue behind each
//! other instead of sharing that work. So every publish joins a queue, and a *flusher*
//! takes whatever has queued up at that moment as one group: one transaction, one
//! multi-row insert, one broker pipeline ([`Publisher::notify`]), then each request is
//! answered with its own stored notifications.
//!
//! There is no timer. A publish that finds fewer than [`Combiner::flushers`] flushers
//! at work starts one, which takes the queue as it finds it, so an idle node stores a
//! lone publish at once; under load the flushers are busy and what arrives meanwhile
//! waits for the next group, which grows with the load. Group commit, as databases do
//! it for their own log.
//!
//! What a group keeps of the single-publish rules:
//! - a group is one transaction: it is stored whole or not at all, and its requests
//!   are answered only after the commit and the broker hand-off;
//! - per-user id order and the order lock are [`Publisher::notify`]'s, unchanged;
//! - a group the store refuses as unreachable fails each of its requests with that
//!   error (503: nothing was written); any other refusal (one request's content, say)
//!   is retried request by request, so one bad request cannot fail the others;
//! - a flusher runs on a task of its own: a caller that goes away cannot cancel a
//!   commit or a fan-out half done.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use herald_shared::Notification;
use herald_shared::api::NewNotification;
use tokio::sync::oneshot;

use super::Publisher;
use crate::store::StoreError;

/// Rows in one group at most: one request is never split, so a group may pass this
/// by one request's rows (a batch is at most 1,000).
const GROUP_ROWS: usize = 1_000;

type Reply = oneshot::Sender<Result<Vec<Notification>, StoreError>>;

/// One waiting publish: its notifications and where its answer goes.
struct Pending {
    items: Vec<NewNotification>,
    reply: Reply,
}

/// The queue of waiting publishes and the flushers working on it.
pub(super) struct Combiner {
    state: Mutex<Queue>,
    /// Groups in flight at most. SQLite writes one at a time, and a second group
    /// there only waits for the writer; PostgreSQL takes several at once, on its
    /// pooled connections, and concurrent groups overlap one's broker hand-off with
    /// the next one's commit.
    flushers: usize,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Pending>,
    flushing: usize,
}

impl Combiner {
    pub(super) fn new(flushers: usize) -> Self {
        Self {
            state: Mutex::default(),
            flushers: flushers.max(1),
        }
    }
}

impl Publisher {
    /// Stores `items` and publishes them, sharing the transaction with whatever
    /// other publishes are waiting (see the module doc). Returns the stored
    /// notifications in the order of `items`, once they are with the broker.
    pub async fn notify_combined(
        self: &Arc<Self>,
        items: Vec<NewNotification>,
    ) -> Result<Vec<Notification>, StoreError> {
        let (reply, answer) = oneshot::channel();
        let start_flusher = {
            let mut q = self.combiner.state.lock().expect("combiner lock");
            q.waiting.push_back(Pending { items, reply });
            let start = q.flushing < self.combiner.flushers;
            if start {
                q.flushing += 1;
            }
            start
        };
        if start_flusher {
            let this = self.clone();
            tokio::spawn(async move { this.flush().await });
        }
        answer
            .await
            .map_err(|_| StoreError::Db("the publish ended without an answer".into()))?
    }

    /// One flusher: stores groups until the queue is empty.
    async fn flush(self: Arc<Self>) {
        let mut leaving = Leaving {
            combiner: &self.combiner,
            counted: true,
        };
        loop {
            let group = {
                let mut q = self.combiner.state.lock().expect("combiner lock");
                let mut group = Vec::new();
                let mut rows = 0;
                while rows < GROUP_ROWS
                    && let Some(p) = q.waiting.pop_front()
                {
                    rows += p.items.len();
                    group.push(p);
                }
                if group.is_empty() {
                    // Decided under the lock: a publish queued after this sees one
                    // flusher fewer and starts its own.
                    q.flushing -= 1;
                    leaving.counted = false;
                    return;
                }
                group
            };
            self.store_group(group).await;
        }
    }

    /// Stores and publishes one group, and answers each of its requests.
    async fn store_group(&self, group: Vec<Pending>) {
        self.metrics
            .publish_group_requests
            .observe(group.len() as f64);
        if let [_] = group.as_slice() {
            let Pending { items, reply } = group.into_iter().next().expect("one");
            let _ = reply.send(self.notify(&items).await);
            return;
        }
        let mut items = Vec::with_capacity(group.iter().map(|p| p.items.len()).sum());
        let mut replies = Vec::with_capacity(group.len());
        for p in group {
            replies.push((p.reply, p.items.len()));
            items.extend(p.items);
        }
        match self.notify(&items).await {
            Ok(stored) => {
                let mut stored = stored.into_iter();
                for (reply, n) in replies {
                    let _ = reply.send(Ok(stored.by_ref().take(n).collect()));
                }
            }
            Err(e @ StoreError::Unavailable(_)) => {
                for (reply, _) in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, requests = replies.len(), "a combined publish was refused; storing its requests one by one");
                let mut start = 0;
                for (reply, n) in replies {
                    let own = &items[start..start + n];
                    start += n;
                    let _ = reply.send(self.notify(own).await);
                }
            }
        }
    }
}

/// Counts a flusher out if it ends without doing so itself (a panic in a group):
/// the queue must never wait for a flusher that is gone. Requests still queued
/// then go with the next publish's flusher.
struct Leaving<'a> {
    combiner: &'a Combiner,
    counted: bool,
}

impl Drop for Leaving<'_> {
    fn drop(&mut self) {
        if self.counted
            && let Ok(mut q) = self.combiner.state.lock()
        {
            q.flushing -= 1;
        }
    }
}
