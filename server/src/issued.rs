//! The newest notification id the store is known to have issued: one cache for
//! every check that an id is real.
//!
//! Two places must refuse ids the store never issued: a client's resume point
//! (`after`, [`crate::upgrade::check_after`]), and a notification id read from Redis
//! ([`crate::broker`]), which would otherwise move a session's catch-up baseline
//! past everything it could still miss. Both ask [`IssuedIds`], so the cache and the
//! store query cannot drift apart. The cache is a lower bound of the store's newest,
//! raised by every insert through this node, by authenticated ids from other nodes,
//! and by every query; an id at or below it costs nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::outbox::unix_micros;
use crate::store::{Store, StoreError};

/// Reads the store's newest issued id ([`Store::newest_issued_id`]).
type Source = Box<dyn Fn() -> BoxFuture<'static, Result<i64, StoreError>> + Send + Sync>;

/// The least time between two store queries made for ids read from Redis
/// ([`IssuedIds::plausible`]): a flood of forged ids costs at most 20 queries a
/// second, not one per message.
pub const REFRESH_EVERY: Duration = Duration::from_millis(50);

/// How far beyond the last confirmed newest an id read from Redis may be without a
/// query: the ids the cluster can issue between two refreshes (50 ms) and the
/// round trip, with room to spare (that is 200,000 inserts a second). A node
/// receiving other nodes' notifications sees ids above its cache all the time; this
/// keeps those free.
pub const ISSUE_SLACK: i64 = 10_000;

/// How long a refresh may take before the id is let through (as `after` is when the
/// store cannot answer): Redis input must not stall on a slow store.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(1);

pub struct IssuedIds {
    store: Source,
    /// A lower bound of the store's newest issued id.
    known: AtomicI64,
    /// When [`IssuedIds::plausible`] last queried the store (Unix µs).
    refreshed_us: AtomicU64,
}

/// What [`IssuedIds::plausible`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plausible {
    Yes,
    No,
    /// The store could not answer: let through, like a resume point.
    Unchecked,
}

impl IssuedIds {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self::with_source(Box::new(move || {
            let store = store.clone();
            Box::pin(async move { store.newest_issued_id().await })
        }))
    }

    fn with_source(store: Source) -> Self {
        Self {
            store,
            known: AtomicI64::new(0),
            refreshed_us: AtomicU64::new(0),
        }
    }

    /// The store has issued `id` (an insert through this node, or an id a Herald
    /// node vouched for with its signature).
    pub fn raise(&self, id: i64) {
        self.known.fetch_max(id, Ordering::Relaxed);
    }

    /// The newest issued id, from the cache when `id` is at or below it, else from
    /// the store (which then raises the cache).
    pub async fn newest_at_least(&self, id: i64) -> Result<i64, StoreError> {
        let known = self.known.load(Ordering::Relaxed);
        if id <= known {
            return Ok(known);
        }
        let newest = (self.store)().await?;
        self.raise(newest);
        Ok(newest)
    }

    /// Whether a notification id read from Redis can be one the store issued.
    ///
    /// Ids up to the cache plus [`ISSUE_SLACK`] pass without a query: that is
    /// every id another node can have issued since this one last looked. Beyond
    /// that the store is asked, at most once per [`REFRESH_EVERY`]; between
    /// refreshes such an id is refused. A forged id far ahead (the harm: a session's
    /// catch-up would start past it and return nothing) is refused, and a flood of
    /// them costs a few queries a second. A forged id within the slack passes:
    /// only a signature ([`crate::broker`], `HERALD_BROKER_KEY`) rules that out.
    pub async fn plausible(&self, id: i64) -> Plausible {
        if id <= 0 {
            return Plausible::No;
        }
        if id
            <= self
                .known
                .load(Ordering::Relaxed)
                .saturating_add(ISSUE_SLACK)
        {
            return Plausible::Yes;
        }
        let now = unix_micros();
        let last = self.refreshed_us.load(Ordering::Relaxed);
        if now.saturating_sub(last) < REFRESH_EVERY.as_micros() as u64
            || self
                .refreshed_us
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return Plausible::No;
        }
        match tokio::time::timeout(REFRESH_TIMEOUT, (self.store)()).await {
            Ok(Ok(newest)) => {
                self.raise(newest);
                if id <= newest.saturating_add(ISSUE_SLACK) {
                    Plausible::Yes
                } else {
                    Plausible::No
                }
            }
            _ => Plausible::Unchecked,
        }
    }
}

#[cfg(test)]
impl IssuedIds {
    /// A store whose newest issued id is `newest`, counting the queries in `queries`.
    pub fn fixed(newest: i64, queries: Arc<AtomicU64>) -> Self {
        Self::with_source(Box::new(move || {
            queries.fetch_add(1, Ordering::Relaxed);
            Box::pin(async move { Ok(newest) })
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ids_up_to_the_cache_and_slack_cost_no_query() {
        let queries = Arc::new(AtomicU64::new(0));
        let issued = IssuedIds::fixed(100, queries.clone());
        issued.raise(50);
        assert_eq!(issued.plausible(1).await, Plausible::Yes);
        assert_eq!(issued.plausible(50 + ISSUE_SLACK).await, Plausible::Yes);
        assert_eq!(queries.load(Ordering::Relaxed), 0);
        assert_eq!(issued.plausible(0).await, Plausible::No);
        assert_eq!(issued.plausible(-5).await, Plausible::No);
        assert_eq!(queries.load(Ordering::Relaxed), 0);
    }

    /// Beyond the slack the store is asked, and a flood of forged ids costs one
    /// query per REFRESH_EVERY, not one per id.
    #[tokio::test]
    async fn forged_ids_are_refused_with_few_queries() {
        let queries = Arc::new(AtomicU64::new(0));
        let issued = IssuedIds::fixed(100, queries.clone());
        // Beyond the cache's slack but within the store's: one query, then free.
        assert_eq!(issued.plausible(100 + ISSUE_SLACK).await, Plausible::Yes);
        assert_eq!(queries.load(Ordering::Relaxed), 1);
        for _ in 0..1000 {
            assert_eq!(issued.plausible(i64::MAX).await, Plausible::No);
        }
        assert_eq!(
            queries.load(Ordering::Relaxed),
            1,
            "within REFRESH_EVERY of the last"
        );
        tokio::time::sleep(REFRESH_EVERY).await;
        assert_eq!(issued.plausible(i64::MAX).await, Plausible::No);
        assert_eq!(queries.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn newest_at_least_asks_the_store_only_above_the_cache() {
        let queries = Arc::new(AtomicU64::new(0));
        let issued = IssuedIds::fixed(100, queries.clone());
        issued.raise(10);
        assert_eq!(issued.newest_at_least(5).await.unwrap(), 10);
        assert_eq!(queries.load(Ordering::Relaxed), 0);
        assert_eq!(issued.newest_at_least(11).await.unwrap(), 100);
        assert_eq!(issued.newest_at_least(99).await.unwrap(), 100);
        assert_eq!(queries.load(Ordering::Relaxed), 1);
    }
}
