//! A `Store` that measures another: latency and failures per operation, and when an
//! operation last succeeded ([`Answers`]), in one place instead of at every call site.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use herald_shared::admin::AuditEntry;
use herald_shared::api::NewNotification;
use herald_shared::{Notification, UserId};

use super::{AfterQuery, ListQuery, NewAudit, OrderGuard, Store, StoreError, UnreadSnapshot};
use crate::metrics::{Metrics, StoreOp};

pub struct Timed {
    inner: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    answers: Arc<Answers>,
}

impl Timed {
    pub fn new(inner: Arc<dyn Store>, metrics: Arc<Metrics>) -> Self {
        Self {
            inner,
            metrics,
            answers: Arc::new(Answers::new()),
        }
    }

    /// When an operation through this store last succeeded, for the store probe.
    pub fn answers(&self) -> Arc<Answers> {
        self.answers.clone()
    }

    async fn time<T>(
        &self,
        op: StoreOp,
        f: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        timed(&self.metrics, &self.answers, op, f).await
    }
}

/// When the store last answered an operation with success: the store probe's
/// evidence that the store is up.
///
/// A probe query of its own waits for a pooled connection like any other query, so
/// on a pool that legitimate load keeps busy it can time out while every query
/// still completes, and readiness would take a busy, healthy node out of its load
/// balancer. The queries that complete say the store is up better than the probe's
/// own can; the probe only needs to ask when nothing has completed lately.
pub struct Answers {
    /// What `last_us` counts from.
    epoch: Instant,
    /// Microseconds from `epoch` to the end of the latest successful operation, plus
    /// one; 0 until there is one.
    last_us: AtomicU64,
}

impl Answers {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            last_us: AtomicU64::new(0),
        }
    }

    /// Records an operation that succeeded now.
    fn record(&self) {
        let us = u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.last_us
            .fetch_max(us.saturating_add(1), Ordering::Relaxed);
    }

    /// When the latest successful operation ended, if any has.
    fn last(&self) -> Option<Instant> {
        match self.last_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(self.epoch + Duration::from_micros(us - 1)),
        }
    }

    /// Whether an operation succeeded within the last `window`.
    pub fn within(&self, window: Duration) -> bool {
        self.last().is_some_and(|t| t.elapsed() <= window)
    }

    /// Whether an operation succeeded at or after `since`.
    pub fn since(&self, since: Instant) -> bool {
        self.last().is_some_and(|t| t >= since)
    }
}

/// Runs one store operation, recording its latency and, if it fails, its error, or
/// else that the store answered.
async fn timed<T>(
    metrics: &Metrics,
    answers: &Answers,
    op: StoreOp,
    f: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let started = Instant::now();
    let out = f.await;
    metrics
        .store_latency
        .get(op)
        .observe(started.elapsed().as_secs_f64());
    match out {
        Ok(_) => answers.record(),
        Err(_) => {
            metrics.store_errors.get(op).inc();
        }
    }
    out
}

#[async_trait]
impl Store for Timed {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn write_slots(&self) -> usize {
        self.inner.write_slots()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.time(StoreOp::Ping, self.inner.ping()).await
    }

    async fn newest_issued_id(&self) -> Result<i64, StoreError> {
        self.time(StoreOp::NewestIssuedId, self.inner.newest_issued_id())
            .await
    }

    async fn insert(&self, items: &[NewNotification]) -> Result<Vec<Notification>, StoreError> {
        self.time(StoreOp::Insert, self.inner.insert(items)).await
    }

    async fn unread(&self, user: &UserId, limit: i64) -> Result<UnreadSnapshot, StoreError> {
        self.time(StoreOp::Unread, self.inner.unread(user, limit))
            .await
    }

    async fn after_many(
        &self,
        queries: &[AfterQuery<'_>],
        row: &mut (dyn FnMut(usize, Notification) + Send),
    ) -> Result<(), StoreError> {
        self.time(StoreOp::AfterMany, self.inner.after_many(queries, row))
            .await
    }

    async fn list(&self, user: &UserId, q: ListQuery) -> Result<Vec<Notification>, StoreError> {
        self.time(StoreOp::List, self.inner.list(user, q)).await
    }

    async fn mark_read(&self, user: &UserId, ids: &[i64]) -> Result<(Vec<i64>, i64), StoreError> {
        self.time(StoreOp::MarkRead, self.inner.mark_read(user, ids))
            .await
    }

    async fn mark_all_read(&self, user: &UserId) -> Result<i64, StoreError> {
        self.time(StoreOp::MarkAllRead, self.inner.mark_all_read(user))
            .await
    }

    async fn order_lock(
        &self,
        users: &[&UserId],
    ) -> Result<Option<Box<dyn OrderGuard>>, StoreError> {
        let guard = self
            .time(StoreOp::OrderLock, self.inner.order_lock(users))
            .await?;
        Ok(guard.map(|inner| {
            Box::new(TimedGuard {
                inner,
                metrics: self.metrics.clone(),
                answers: self.answers.clone(),
            }) as Box<dyn OrderGuard>
        }))
    }

    async fn audit(&self, entry: &NewAudit) -> Result<(), StoreError> {
        self.time(StoreOp::Audit, self.inner.audit(entry)).await
    }

    async fn audit_log(&self, limit: i64) -> Result<Vec<AuditEntry>, StoreError> {
        self.time(StoreOp::AuditLog, self.inner.audit_log(limit))
            .await
    }
}

/// Measures inserts made through an order lock like any other insert.
struct TimedGuard {
    inner: Box<dyn OrderGuard>,
    metrics: Arc<Metrics>,
    answers: Arc<Answers>,
}

#[async_trait]
impl OrderGuard for TimedGuard {
    async fn insert(&mut self, items: &[NewNotification]) -> Result<Vec<Notification>, StoreError> {
        timed(
            &self.metrics,
            &self.answers,
            StoreOp::Insert,
            self.inner.insert(items),
        )
        .await
    }

    async fn release(self: Box<Self>) {
        self.inner.release().await
    }
}
