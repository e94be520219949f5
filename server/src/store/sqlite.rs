//! The embedded store: one SQLite file in WAL mode, for a single node.
//!
//! WAL lets readers (connect snapshots, listings) run beside the single writer;
//! `synchronous=NORMAL` keeps commits durable across a process crash (not an OS
//! crash), the usual trade for a notification cache. Times are stored as Unix
//! milliseconds.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{TimeZone, Utc};
use herald_shared::admin::AuditEntry;
use herald_shared::api::NewNotification;
use herald_shared::frames::RawJson;
use herald_shared::{Notification, UserId};
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};

use super::{ListQuery, NewAudit, Store, StoreError, UnreadSnapshot, format_time, now_ms};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    pub async fn connect(url: &str, pool_size: u32) -> Result<Self, StoreError> {
        let opts = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Db(format!("bad sqlite url: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        if let Some(dir) = opts.get_filename().parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Db(format!("creating {}: {e}", dir.display())))?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(pool_size.max(1))
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(opts)
            .await?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| StoreError::Db(format!("sqlite migrations: {e}")))?;
        Ok(Self { pool })
    }
}

fn row_to_notification(r: &SqliteRow) -> Result<Notification, StoreError> {
    let message: String = r.try_get("message")?;
    let ms: i64 = r.try_get("created_at")?;
    Ok(Notification {
        id: r.try_get("id")?,
        user: r.try_get("user_id")?,
        message: RawJson::parse(message)
            .map_err(|e| StoreError::Db(format!("stored message: {e}")))?,
        created_at: format_time(Utc.timestamp_millis_opt(ms).single().unwrap_or_default()),
        read: r.try_get("read")?,
    })
}

fn rows(rs: Vec<SqliteRow>) -> Result<Vec<Notification>, StoreError> {
    rs.iter().map(row_to_notification).collect()
}

#[async_trait]
impl Store for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn insert(&self, items: &[NewNotification]) -> Result<Vec<Notification>, StoreError> {
        let created = now_ms();
        let ms = created.timestamp_millis();
        let mut tx = self.pool.begin().await?;
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO notifications (user_id, message, created_at, read) \
                 VALUES (?, ?, ?, 0) RETURNING id",
            )
            .bind(item.user.as_str())
            .bind(item.message.get())
            .bind(ms)
            .fetch_one(&mut *tx)
            .await?;
            out.push(Notification {
                id,
                user: item.user.to_string(),
                message: RawJson(item.message.clone()),
                created_at: format_time(created),
                read: false,
            });
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn unread(&self, user: &UserId, limit: i64) -> Result<UnreadSnapshot, StoreError> {
        // One read transaction: the count and the page come from the same snapshot.
        let mut tx = self.pool.begin().await?;
        let unread_count: i64 =
            sqlx::query_scalar("SELECT count(*) FROM notifications WHERE user_id = ? AND read = 0")
                .bind(user.as_str())
                .fetch_one(&mut *tx)
                .await?;
        let newest = sqlx::query(
            "SELECT id, user_id, message, created_at, read FROM notifications \
             WHERE user_id = ? AND read = 0 ORDER BY id DESC LIMIT ?",
        )
        .bind(user.as_str())
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        let newest_id: i64 =
            sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM notifications WHERE user_id = ?")
                .bind(user.as_str())
                .fetch_one(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok(UnreadSnapshot {
            unread_count,
            newest: rows(newest)?,
            newest_id,
        })
    }

    async fn after(
        &self,
        user: &UserId,
        after: i64,
        limit: i64,
    ) -> Result<Vec<Notification>, StoreError> {
        let rs = sqlx::query(
            "SELECT id, user_id, message, created_at, read FROM notifications \
             WHERE user_id = ? AND id > ? ORDER BY id ASC LIMIT ?",
        )
        .bind(user.as_str())
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows(rs)
    }

    async fn list(&self, user: &UserId, q: ListQuery) -> Result<Vec<Notification>, StoreError> {
        let rs = sqlx::query(
            "SELECT id, user_id, message, created_at, read FROM notifications \
             WHERE user_id = ?1 AND id < ?2 AND (?3 = 0 OR read = 0) \
             ORDER BY id DESC LIMIT ?4",
        )
        .bind(user.as_str())
        .bind(q.before.unwrap_or(i64::MAX))
        .bind(q.unread_only)
        .bind(q.limit)
        .fetch_all(&self.pool)
        .await?;
        rows(rs)
    }

    async fn mark_read(&self, user: &UserId, ids: &[i64]) -> Result<(Vec<i64>, i64), StoreError> {
        let ids_json = serde_json::to_string(ids).expect("ids serialise");
        let mut tx = self.pool.begin().await?;
        let mut marked: Vec<i64> = sqlx::query_scalar(
            "UPDATE notifications SET read = 1 \
             WHERE user_id = ? AND id IN (SELECT value FROM json_each(?)) RETURNING id",
        )
        .bind(user.as_str())
        .bind(ids_json)
        .fetch_all(&mut *tx)
        .await?;
        let unread: i64 =
            sqlx::query_scalar("SELECT count(*) FROM notifications WHERE user_id = ? AND read = 0")
                .bind(user.as_str())
                .fetch_one(&mut *tx)
                .await?;
        tx.commit().await?;
        marked.sort_unstable();
        Ok((marked, unread))
    }

    async fn mark_all_read(&self, user: &UserId) -> Result<i64, StoreError> {
        sqlx::query("UPDATE notifications SET read = 1 WHERE user_id = ? AND read = 0")
            .bind(user.as_str())
            .execute(&self.pool)
            .await?;
        Ok(0)
    }

    async fn audit(&self, e: &NewAudit) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_log (at, node, action, args, result, caller) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(now_ms().timestamp_millis())
        .bind(&e.node)
        .bind(e.action)
        .bind(e.args.to_string())
        .bind(e.result.to_string())
        .bind(&e.caller)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn audit_log(&self, limit: i64) -> Result<Vec<AuditEntry>, StoreError> {
        let rs = sqlx::query(
            "SELECT id, at, node, action, args, result, caller FROM audit_log ORDER BY id DESC LIMIT ?",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rs.iter()
            .map(|r| {
                let ms: i64 = r.try_get("at")?;
                let args: String = r.try_get("args")?;
                let result: String = r.try_get("result")?;
                Ok(AuditEntry {
                    id: r.try_get("id")?,
                    node: r.try_get("node")?,
                    at: format_time(Utc.timestamp_millis_opt(ms).single().unwrap_or_default()),
                    action: r.try_get("action")?,
                    args: serde_json::from_str(&args).unwrap_or(serde_json::Value::Null),
                    result: serde_json::from_str(&result).unwrap_or(serde_json::Value::Null),
                    caller: r.try_get("caller")?,
                })
            })
            .collect()
    }
}
