//! Durable state: notifications and their read flags (and, from the admin plane, the
//! audit log).
//!
//! [`Store`] has two real implementations, chosen by `DATABASE_URL`: [`SqliteStore`]
//! (the embedded single-node default) and [`PgStore`] (clusters). The store is the
//! source of truth; the broker only carries copies, so anything a broker loses is
//! recovered from here by id (`after`).
//!
//! Every query is a range scan on `(user_id, id)`: the 50 newest unread walk the
//! partial index of unread rows backwards, `after X` walks the user's index forwards.
//! Neither sorts and neither reads another user's rows.

mod postgres;
mod sqlite;
mod timed;

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use herald_shared::admin::AuditEntry;
use herald_shared::api::NewNotification;
use herald_shared::{Notification, UserId};

pub use postgres::PgStore;
pub use sqlite::SqliteStore;
pub use timed::{Answers, Timed};

/// What went wrong, in the terms callers branch on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached (refused, timed out, pool exhausted). The API
    /// answers 503; nothing was written.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Anything else the database said.
    #[error("store error: {0}")]
    Db(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e.to_string()),
            sqlx::Error::Database(ref d) if is_unavailable_code(d.code().as_deref()) => {
                StoreError::Unavailable(e.to_string())
            }
            sqlx::Error::Database(ref d) => StoreError::Db(format!(
                "{e} (SQLSTATE {})",
                d.code().as_deref().unwrap_or("none")
            )),
            other => StoreError::Db(other.to_string()),
        }
    }
}

/// PostgreSQL SQLSTATEs meaning "the server is going away or refuses us" (admin
/// shutdown, crash, starting up, too many connections, connection failures, the
/// database missing or not accepting connections), and SQLite's busy/locked (5, 6).
fn is_unavailable_code(code: Option<&str>) -> bool {
    matches!(
        code,
        Some(
            "57P01"
                | "57P02"
                | "57P03"
                | "53300"
                | "08000"
                | "08001"
                | "08003"
                | "08004"
                | "08006"
                | "3D000"
                | "55000"
                | "5"
                | "6"
        )
    )
}

/// A page request for the user listing API.
#[derive(Debug, Clone, Copy)]
pub struct ListQuery {
    pub unread_only: bool,
    /// Only ids strictly below this one.
    pub before: Option<i64>,
    pub limit: i64,
}

/// The notifications a connecting client is sent first.
#[derive(Debug, Clone, Default)]
pub struct UnreadSnapshot {
    pub unread_count: i64,
    /// Newest first.
    pub newest: Vec<Notification>,
    /// The user's highest notification id, read or not (0 for none): where a later
    /// catch-up starts.
    pub newest_id: i64,
}

/// One user's part of [`Store::after_many`].
#[derive(Debug, Clone, Copy)]
pub struct AfterQuery<'a> {
    pub user: &'a UserId,
    pub after: i64,
    pub limit: i64,
}

/// Durable notification state. Implementations must be safe to share across tasks.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `"sqlite"` or `"postgres"`, for logs and status.
    fn kind(&self) -> &'static str;

    /// How many writes the store runs at once: what client writes may take only a
    /// share of, so the backend API keeps its own ([`crate::client_writes::ClientWrites`]).
    fn write_slots(&self) -> usize;

    /// A cheap round trip, for readiness.
    async fn ping(&self) -> Result<(), StoreError>;

    /// The highest notification id the store has issued, to any user through any
    /// node (0 for none): read from the id sequence, so a deleted newest row does not
    /// lower it. A client's resume point can be no higher.
    async fn newest_issued_id(&self) -> Result<i64, StoreError>;

    /// Stores all of `items` in one transaction, returning them with their ids in
    /// the same order. Ids increase in that order.
    async fn insert(&self, items: &[NewNotification]) -> Result<Vec<Notification>, StoreError>;

    /// The unread count and up to `limit` newest unread notifications.
    async fn unread(&self, user: &UserId, limit: i64) -> Result<UnreadSnapshot, StoreError>;

    /// For each of `queries`, up to `limit` of its user's notifications with id
    /// greater than `after`: hands each notification to `row` with the index of its
    /// query, query by query in the order of `queries`, each query's oldest first.
    /// Every read of what a session missed comes through here, in groups
    /// ([`crate::catch_up`]): a broker resync asks every session at once, and one
    /// query for hundreds of users costs the store about what a few single reads do.
    /// Rows are handed over as they are read, never all held at once: a burst of
    /// resumes may ask for a thousand large notifications each.
    async fn after_many(
        &self,
        queries: &[AfterQuery<'_>],
        row: &mut (dyn FnMut(usize, Notification) + Send),
    ) -> Result<(), StoreError>;

    /// A page of the user's notifications, newest first.
    async fn list(&self, user: &UserId, q: ListQuery) -> Result<Vec<Notification>, StoreError>;

    /// Marks those of `ids` that belong to `user` as read; returns them (ascending)
    /// and the user's remaining unread count. Other users' ids are left alone.
    async fn mark_read(&self, user: &UserId, ids: &[i64]) -> Result<(Vec<i64>, i64), StoreError>;

    /// Marks every notification of `user` read; returns the unread count (0).
    async fn mark_all_read(&self, user: &UserId) -> Result<i64, StoreError>;

    /// The cluster-wide publish order lock of `users` (see [`crate::publish`]): a
    /// guard whose first insert takes the lock, before it draws any id, and holds it
    /// until the guard is released or dropped. `None` where the store cannot
    /// be shared by several nodes (SQLite), so the in-process lock is enough.
    async fn order_lock(
        &self,
        users: &[&UserId],
    ) -> Result<Option<Box<dyn OrderGuard>>, StoreError> {
        let _ = users;
        Ok(None)
    }

    /// Appends one admin action to the audit log.
    async fn audit(&self, entry: &NewAudit) -> Result<(), StoreError>;

    /// The newest `limit` audit entries, newest first.
    async fn audit_log(&self, limit: i64) -> Result<Vec<AuditEntry>, StoreError>;
}

/// A publish-order lock, with the connection that holds it: inserts made under the
/// lock go through the guard, and the first one takes it (in the same round trip).
/// `release` unlocks; dropping the guard without it frees the lock too (the store
/// closes the holding connection).
#[async_trait]
pub trait OrderGuard: Send {
    /// Stores `items` like [`Store::insert`], under the lock: the first insert
    /// waits for it before drawing an id.
    async fn insert(&mut self, items: &[NewNotification]) -> Result<Vec<Notification>, StoreError>;

    async fn release(self: Box<Self>);
}

/// A user's order-lock key: the same on every node (FNV-1a, not the process-seeded
/// std hasher).
pub fn order_key(user: &UserId) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in user.as_str().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}

/// An admin action to record. `args` and `result` are JSON.
#[derive(Debug, Clone)]
pub struct NewAudit {
    pub node: String,
    pub action: &'static str,
    pub args: serde_json::Value,
    pub result: serde_json::Value,
    pub caller: String,
}

/// Opens the store named by `url`, runs its migrations, and retries with backoff
/// while the database is unreachable (start-up must not fail on a slow database).
/// Its background work (SQLite's checkpoints) runs as one of `tasks`.
pub async fn connect(
    url: &str,
    pool_size: u32,
    tasks: &crate::tasks::Tasks,
) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    let postgres = url.starts_with("postgres://") || url.starts_with("postgresql://");
    let service = if postgres { "PostgreSQL" } else { "SQLite" };
    let mut delay = Duration::from_millis(200);
    loop {
        let attempt: Result<std::sync::Arc<dyn Store>, StoreError> = if postgres {
            PgStore::connect(url, pool_size)
                .await
                .map(|s| std::sync::Arc::new(s) as _)
        } else if url.starts_with("sqlite:") {
            SqliteStore::connect(url, pool_size, tasks)
                .await
                .map(|s| std::sync::Arc::new(s) as _)
        } else {
            return Err(StoreError::Db(format!(
                "DATABASE_URL must start with sqlite:// or postgres:// (got {url:?})"
            )));
        };
        match attempt {
            Err(StoreError::Unavailable(why)) => {
                tracing::warn!(%why, retry_in = ?delay, "store ({service}) unreachable at start-up; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
            other => return other,
        }
    }
}

/// Creation time as stored: UTC, millisecond precision (what clients see).
pub(crate) fn now_ms() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(3)
}

/// `2026-11-25T19:21:08.123Z`.
pub(crate) fn format_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn times_have_milliseconds_and_z() {
        let t = Utc.timestamp_millis_opt(1_764_098_468_123).unwrap();
        assert_eq!(format_time(t), "2025-11-25T19:21:08.123Z");
        let t = Utc.timestamp_millis_opt(1_764_098_468_000).unwrap();
        assert_eq!(format_time(t), "2025-11-25T19:21:08.000Z");
    }
}
