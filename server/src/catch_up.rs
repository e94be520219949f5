//! Catch-up reads, combined: sessions that must read what they missed from the store
//! share one query.
//!
//! Catch-up reads come in bursts. A broker resync (Redis reconnected, dropped
//! messages, or any node announcing that it could not publish) asks every session of
//! the node to read the store at once, and a drain sends thousands of clients to
//! resume (`after`) on the other nodes within seconds. Read one by one, each session
//! would take a pooled connection of its own: a node holding tens of thousands of
//! connections then queues them on a pool of a few, where they time out (and the
//! sessions close, and reconnect, and read again) while the backend API's inserts
//! starve behind them. Here they queue in a [`Combiner`] instead, and one flusher reads
//! for up to [`GROUP_USERS`] sessions in one [`Store::after_many`] round trip, on one
//! pooled connection, leaving the rest of the pool to writes and openings.
//!
//! A lone read, on an idle node, is served at once: no timer, the first request starts
//! the flusher (see [`crate::combine`]).

use std::sync::Arc;

use herald_shared::config::OPENING_MAX_BYTES;
use herald_shared::{Notification, UserId};
use tokio::sync::oneshot;

use crate::combine::{Combiner, Flusher};
use crate::store::{AfterQuery, Store, StoreError};

/// Sessions read for in one query at most.
const GROUP_USERS: usize = 500;

/// The node's queue of catch-up reads.
pub struct CatchUps {
    store: Arc<dyn Store>,
    combiner: Arc<Combiner<Ask>>,
}

/// One waiting read and where its page goes.
struct Ask {
    user: UserId,
    after: i64,
    limit: i64,
    reply: Reply,
}

impl CatchUps {
    /// One flusher: a burst is served one group after another, on one pooled
    /// connection, however large it is.
    pub fn new(store: Arc<dyn Store>) -> Arc<Self> {
        Arc::new(Self {
            store,
            combiner: Arc::new(Combiner::new(1)),
        })
    }

    /// Up to `limit` of `user`'s notifications with id greater than `after`, oldest
    /// first, read together with whatever other sessions are waiting.
    pub async fn after(
        self: &Arc<Self>,
        user: &UserId,
        after: i64,
        limit: i64,
    ) -> Result<Vec<Notification>, StoreError> {
        let (reply, page) = oneshot::channel();
        let ask = Ask {
            user: user.clone(),
            after,
            limit,
            reply,
        };
        if let Some(flusher) = self.combiner.push(ask) {
            // A task of its own: a session that goes away mid-read cannot strand the
            // others' answers.
            tokio::spawn(self.clone().flush(flusher));
        }
        page.await
            .map_err(|_| StoreError::Db("the catch-up read ended without an answer".into()))?
    }

    async fn flush(self: Arc<Self>, mut flusher: Flusher<Ask>) {
        while let Some(group) = flusher.next_group(|_| 1, GROUP_USERS) {
            let mut users = Vec::with_capacity(group.len());
            let mut bounds = Vec::with_capacity(group.len());
            let mut replies = Vec::with_capacity(group.len());
            // A session that went away while it waited needs no read.
            for ask in group.into_iter().filter(|a| !a.reply.is_closed()) {
                users.push(ask.user);
                bounds.push((ask.after, ask.limit));
                replies.push(Some(ask.reply));
            }
            if users.is_empty() {
                continue;
            }
            let queries: Vec<AfterQuery<'_>> = users
                .iter()
                .zip(&bounds)
                .map(|(user, &(after, limit))| AfterQuery { user, after, limit })
                .collect();
            let mut pages = Pages {
                replies,
                open: None,
            };
            let read = self
                .store
                .after_many(&queries, &mut |i, n| pages.row(i, n))
                .await;
            pages.finish(read);
        }
    }
}

type Reply = oneshot::Sender<Result<Vec<Notification>, StoreError>>;

/// A group's answers, sent page by page as the rows stream in (a page is whole once
/// the next query's rows begin), so the flusher holds one page at a time.
struct Pages {
    /// `None` once answered.
    replies: Vec<Option<Reply>>,
    open: Option<Page>,
}

struct Page {
    query: usize,
    rows: Vec<Notification>,
    /// The messages' bytes so far.
    bytes: usize,
}

impl Pages {
    /// Adds one row to its query's page. A page stops growing past
    /// [`OPENING_MAX_BYTES`] of messages, as its reader will cut it there anyway: it
    /// keeps the first row past the budget, and at least two, so the reader's own cut
    /// (by the JSON it writes, never shorter than the message) falls inside what is
    /// kept, and the reader still sees that there was more.
    fn row(&mut self, query: usize, n: Notification) {
        if self.open.as_ref().is_some_and(|p| p.query != query) {
            self.send_open();
        }
        let page = self.open.get_or_insert_with(|| Page {
            query,
            rows: Vec::new(),
            bytes: 0,
        });
        if page.rows.len() < 2 || page.bytes <= OPENING_MAX_BYTES {
            page.bytes += n.message.get().len();
            page.rows.push(n);
        }
    }

    fn send_open(&mut self) {
        if let Some(page) = self.open.take()
            && let Some(reply) = self.replies[page.query].take()
        {
            let _ = reply.send(Ok(page.rows));
        }
    }

    /// Answers every query not yet answered: the last page and the users with nothing
    /// new; or, if the read failed, the error (a page cut short by it included).
    fn finish(mut self, read: Result<(), StoreError>) {
        match read {
            Ok(()) => {
                self.send_open();
                for reply in self.replies.iter_mut().filter_map(Option::take) {
                    let _ = reply.send(Ok(Vec::new()));
                }
            }
            Err(e) => {
                for reply in self.replies.iter_mut().filter_map(Option::take) {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}
