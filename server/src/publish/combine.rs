//! Write combining: concurrent publishes share one store transaction.
//!
//! Backends mostly create notifications one at a time, each its own `POST`, from many
//! workers at once. Stored one by one, each pays a transaction, a trip through the
//! store's writer and a broker hand-off of its own, and the requests queue behind each
//! other instead of sharing that work. So every publish joins the node's
//! [`Combiner`](crate::combine::Combiner) queue, and a flusher takes whatever has
//! queued up at that moment as one group: one transaction, one multi-row insert, one
//! broker pipeline ([`Publisher::notify`]), then each request is answered with its own
//! stored notifications. Group commit, as databases do it for their own log.
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

use std::sync::Arc;

use herald_shared::Notification;
use herald_shared::api::NewNotification;
use tokio::sync::oneshot;

use super::Publisher;
use crate::combine::Flusher;
use crate::store::StoreError;

/// Rows in one group at most: one request is never split, so a group may pass this
/// by one request's rows (a batch is at most 1,000).
const GROUP_ROWS: usize = 1_000;

type Reply = oneshot::Sender<Result<Vec<Notification>, StoreError>>;

/// One waiting publish: its notifications and where its answer goes.
pub(super) struct Pending {
    items: Vec<NewNotification>,
    reply: Reply,
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
        if let Some(flusher) = self.combiner.push(Pending { items, reply }) {
            let this = self.clone();
            tokio::spawn(async move { this.flush(flusher).await });
        }
        answer
            .await
            .map_err(|_| StoreError::Db("the publish ended without an answer".into()))?
    }

    /// One flusher: stores groups until the queue is empty.
    ///
    /// It yields to the runtime before it takes each group, so the requests whose
    /// bytes have already arrived (a backend's workers often post in bursts) are parsed
    /// and queued first and join this group rather than the next. That is no timer: on
    /// an idle node the yield returns at once. It matters where the store answers
    /// without an `.await` that waits (SQLite's writer runs on the worker itself): with
    /// no yield a flusher took its first request alone, and groups shrank from 4.6
    /// requests to 1.6 at 4,000 POSTs/s (bench/RESULTS.md, "SQLite's writer on the
    /// tokio worker").
    async fn flush(self: Arc<Self>, mut flusher: Flusher<Pending>) {
        loop {
            tokio::task::yield_now().await;
            let Some(group) = flusher.next_group(|p| p.items.len(), GROUP_ROWS) else {
                break;
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
