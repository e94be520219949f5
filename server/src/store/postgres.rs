//! The cluster store: PostgreSQL through a sqlx pool.
//!
//! Messages are stored as `json` (validated, kept byte-for-byte, unlike `jsonb`
//! which reorders keys) and read back as text, so they go to clients untouched.
//! Migrations run under sqlx's advisory lock, so nodes starting together against
//! one database take turns instead of failing.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use herald_shared::admin::AuditEntry;
use herald_shared::api::NewNotification;
use herald_shared::frames::RawJson;
use herald_shared::{Notification, UserId};
use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow, PgSslMode};

use super::{
    AfterQuery, ListQuery, NewAudit, OrderGuard, Store, StoreError, UnreadSnapshot, format_time,
    now_ms, order_key,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// The most a pooled connection may take to be handed out, opening it included.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    pub async fn connect(url: &str, pool_size: u32) -> Result<Self, StoreError> {
        let opts: PgConnectOptions = url
            .parse()
            .map_err(|e| StoreError::Db(format!("bad postgres url: {e}")))?;
        // The acquire timeout bounds every new connection too, connect and
        // handshake, at start-up and on reconnect: a server that accepts and never
        // answers fails the attempt instead of hanging it.
        let pool = PgPoolOptions::new()
            .max_connections(pool_size.max(1))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(opts.clone().application_name("herald"))
            .await
            .map_err(|e| match e {
                sqlx::Error::PoolTimedOut => StoreError::Unavailable(format!(
                    "no connection within {ACQUIRE_TIMEOUT:?} (connect and handshake)"
                )),
                other => tls_refusal(&other, &opts).unwrap_or_else(|| other.into()),
            })?;
        MIGRATOR.run(&pool).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::Execute(inner) => StoreError::from(inner),
            other => StoreError::Db(format!("postgres migrations: {other}")),
        })?;
        Ok(Self { pool })
    }
}

/// A TLS failure while connecting, as a configuration error ([`StoreError::Db`], so
/// start-up fails at once instead of retrying): a server without TLS under
/// `sslmode=require` or stricter, a certificate that `sslrootcert` (or the system's
/// CAs) does not vouch for or that names another host under `verify-full`, a client
/// certificate the server refused.
/// Later, on a reconnect, the same failure counts as the store being unavailable
/// (through `From<sqlx::Error>`), like any connection that fails.
fn tls_refusal(e: &sqlx::Error, opts: &PgConnectOptions) -> Option<StoreError> {
    let why = match e {
        sqlx::Error::Tls(why) => why.to_string(),
        other => crate::tls::refusal(other)?,
    };
    let mode = match opts.get_ssl_mode() {
        PgSslMode::Disable => "disable",
        PgSslMode::Allow => "allow",
        PgSslMode::Prefer => "prefer",
        PgSslMode::Require => "require",
        PgSslMode::VerifyCa => "verify-ca",
        PgSslMode::VerifyFull => "verify-full",
    };
    Some(StoreError::Db(format!(
        "PostgreSQL TLS (sslmode={mode}) with {}:{} failed: {why}; check sslmode, \
         sslrootcert, sslcert and sslkey in DATABASE_URL",
        opts.get_host(),
        opts.get_port()
    )))
}

/// Inserts `items` in one statement (one transaction) on `conn`. Rows are inserted,
/// and ids drawn from the identity sequence, in array order, so sorted ids line up
/// with `items`.
///
/// With `lock` (sorted, deduplicated order keys), the same statement first takes
/// those session advisory locks: a one-time filter (an uncorrelated subquery, which
/// PostgreSQL runs once, before the first row) waits for every lock before any row
/// reaches the insert, so no id is drawn before the lock is held. One round trip
/// instead of a lock query and an insert.
async fn insert_on(
    conn: &mut sqlx::PgConnection,
    items: &[NewNotification],
    lock: Option<&[i64]>,
) -> Result<Vec<Notification>, StoreError> {
    let created = now_ms();
    let users: Vec<&str> = items.iter().map(|i| i.user.as_str()).collect();
    let messages: Vec<&str> = items.iter().map(|i| i.message.get()).collect();
    let sql = if lock.is_some() {
        LOCK_AND_INSERT
    } else {
        INSERT
    };
    let mut query = sqlx::query_scalar(sql)
        .bind(&users)
        .bind(&messages)
        .bind(created);
    if let Some(keys) = lock {
        query = query.bind(keys);
    }
    let mut ids: Vec<i64> = query.fetch_all(&mut *conn).await?;
    ids.sort_unstable();
    let created_at = format_time(created);
    Ok(items
        .iter()
        .zip(ids)
        .map(|(item, id)| Notification {
            id,
            user: item.user.to_string(),
            message: RawJson(item.message.clone()),
            created_at: created_at.clone(),
            read: false,
        })
        .collect())
}

const INSERT: &str = "INSERT INTO notifications (user_id, message, created_at) \
     SELECT u, m::json, $3 FROM UNNEST($1::text[], $2::text[]) WITH ORDINALITY AS t(u, m, o) \
     ORDER BY o RETURNING id";

/// [`INSERT`] behind the order locks of `$4` (see [`insert_on`]); the keys come
/// sorted, and `unnest` keeps their order, so every node takes locks in one order.
const LOCK_AND_INSERT: &str = "INSERT INTO notifications (user_id, message, created_at) \
     SELECT u, m::json, $3 FROM UNNEST($1::text[], $2::text[]) WITH ORDINALITY AS t(u, m, o) \
     WHERE (SELECT count(*) FROM (SELECT pg_advisory_lock(k) FROM unnest($4::bigint[]) AS k) AS l) >= 0 \
     ORDER BY o RETURNING id";

/// Session advisory locks on one pooled connection, which also runs the insert: a
/// publish needs one connection, not two (two per publish starve the pool under a
/// burst: every connection holds a lock and waits for a second one). The locks are
/// taken by the insert's own statement ([`insert_on`]), held until `release`.
///
/// Released with `pg_advisory_unlock_all()` before the connection goes back to the
/// pool. A guard dropped without `release` (an error, a cancelled task) closes its
/// connection instead, which frees the locks on the server: a lock can never leak
/// into the pool.
struct PgOrderGuard {
    conn: Option<sqlx::pool::PoolConnection<sqlx::Postgres>>,
    /// The order keys, sorted and deduplicated.
    keys: Vec<i64>,
    /// Whether an insert has asked for the locks: the next one then needs none.
    locked: bool,
}

#[async_trait]
impl OrderGuard for PgOrderGuard {
    async fn insert(&mut self, items: &[NewNotification]) -> Result<Vec<Notification>, StoreError> {
        let conn = self.conn.as_mut().expect("held until release");
        let lock = (!self.locked).then_some(self.keys.as_slice());
        self.locked = true;
        insert_on(conn, items, lock).await
    }

    async fn release(mut self: Box<Self>) {
        let mut conn = self.conn.take().expect("released once");
        if !self.locked {
            drop(conn);
            return;
        }
        match sqlx::query("SELECT pg_advisory_unlock_all()")
            .execute(&mut *conn)
            .await
        {
            Ok(_) => drop(conn),
            Err(e) => {
                tracing::warn!(error = %e, "unlocking failed; closing the connection instead");
                drop(conn.detach());
            }
        }
    }
}

impl Drop for PgOrderGuard {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            drop(conn.detach());
        }
    }
}

fn row_to_notification(r: &PgRow) -> Result<Notification, StoreError> {
    let message: String = r.try_get("message")?;
    let created: DateTime<Utc> = r.try_get("created_at")?;
    Ok(Notification {
        id: r.try_get("id")?,
        user: r.try_get("user_id")?,
        message: RawJson::parse(message)
            .map_err(|e| StoreError::Db(format!("stored message: {e}")))?,
        created_at: format_time(created),
        read: r.try_get("read")?,
    })
}

fn rows(rs: Vec<PgRow>) -> Result<Vec<Notification>, StoreError> {
    rs.iter().map(row_to_notification).collect()
}

#[async_trait]
impl Store for PgStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    /// One write a pooled connection.
    fn write_slots(&self) -> usize {
        self.pool.options().get_max_connections() as usize
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn newest_issued_id(&self) -> Result<i64, StoreError> {
        // The identity's sequence: NULL until its first id. It may be past the
        // newest committed id (a rolled-back insert), which is harmless to accept.
        Ok(sqlx::query_scalar(
            "SELECT COALESCE(pg_sequence_last_value(pg_get_serial_sequence('notifications', 'id')), 0)",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    async fn insert(&self, items: &[NewNotification]) -> Result<Vec<Notification>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        insert_on(&mut conn, items, None).await
    }

    async fn unread(&self, user: &UserId, limit: i64) -> Result<UnreadSnapshot, StoreError> {
        // One statement, one snapshot, one round trip: the count and the newest id
        // ride on a one-row head that the page is joined to, so they are there when
        // the user has no unread row (a reconnect storm was bound by the pool's
        // round trips).
        let rs = sqlx::query(
            "SELECT head.unread_count, head.newest_id, page.id, page.user_id, page.message, \
                    page.created_at, page.read \
             FROM (SELECT \
                     (SELECT count(*) FROM notifications WHERE user_id = $1 AND NOT read) AS unread_count, \
                     (SELECT coalesce(max(id), 0) FROM notifications WHERE user_id = $1) AS newest_id) AS head \
             LEFT JOIN LATERAL (SELECT id, user_id, message::text AS message, created_at, read \
                     FROM notifications WHERE user_id = $1 AND NOT read ORDER BY id DESC LIMIT $2) AS page ON true \
             ORDER BY page.id DESC",
        )
        .bind(user.as_str())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let head = rs
            .first()
            .ok_or_else(|| StoreError::Db("unread snapshot returned no row".into()))?;
        let unread_count: i64 = head.try_get("unread_count")?;
        let newest_id: i64 = head.try_get("newest_id")?;
        let page: Vec<PgRow> = rs
            .into_iter()
            .filter(|r| matches!(r.try_get::<Option<i64>, _>("id"), Ok(Some(_))))
            .collect();
        Ok(UnreadSnapshot {
            unread_count,
            newest: rows(page)?,
            newest_id,
        })
    }

    /// One query for every user: each query row's `after` and `limit` applied to its
    /// own index range (`LATERAL`), tagged with the row's place, and streamed.
    async fn after_many(
        &self,
        queries: &[AfterQuery<'_>],
        row: &mut (dyn FnMut(usize, Notification) + Send),
    ) -> Result<(), StoreError> {
        let users: Vec<&str> = queries.iter().map(|q| q.user.as_str()).collect();
        let afters: Vec<i64> = queries.iter().map(|q| q.after).collect();
        let limits: Vec<i64> = queries.iter().map(|q| q.limit).collect();
        let mut rows = sqlx::query(
            "SELECT q.i, n.id, n.user_id, n.message::text AS message, n.created_at, n.read \
             FROM unnest($1::text[], $2::bigint[], $3::bigint[]) WITH ORDINALITY AS q(u, a, l, i) \
             CROSS JOIN LATERAL (SELECT id, user_id, message, created_at, read FROM notifications \
                 WHERE user_id = q.u AND id > q.a ORDER BY id ASC LIMIT q.l) n \
             ORDER BY q.i, n.id",
        )
        .bind(&users)
        .bind(&afters)
        .bind(&limits)
        .fetch(&self.pool);
        while let Some(r) = rows.try_next().await? {
            let i: i64 = r.try_get("i")?;
            let i = usize::try_from(i - 1)
                .ok()
                .filter(|i| *i < queries.len())
                .ok_or_else(|| StoreError::Db(format!("after_many: no query row {i}")))?;
            row(i, row_to_notification(&r)?);
        }
        Ok(())
    }

    async fn list(&self, user: &UserId, q: ListQuery) -> Result<Vec<Notification>, StoreError> {
        let rs = sqlx::query(
            "SELECT id, user_id, message::text AS message, created_at, read FROM notifications \
             WHERE user_id = $1 AND id < $2 AND (NOT $3 OR NOT read) ORDER BY id DESC LIMIT $4",
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
        let mut marked: Vec<i64> = sqlx::query_scalar(
            "UPDATE notifications SET read = true WHERE user_id = $1 AND id = ANY($2) RETURNING id",
        )
        .bind(user.as_str())
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        marked.sort_unstable();
        let unread: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM notifications WHERE user_id = $1 AND NOT read",
        )
        .bind(user.as_str())
        .fetch_one(&self.pool)
        .await?;
        Ok((marked, unread))
    }

    async fn mark_all_read(&self, user: &UserId) -> Result<i64, StoreError> {
        sqlx::query("UPDATE notifications SET read = true WHERE user_id = $1 AND NOT read")
            .bind(user.as_str())
            .execute(&self.pool)
            .await?;
        Ok(0)
    }

    async fn order_lock(
        &self,
        users: &[&UserId],
    ) -> Result<Option<Box<dyn OrderGuard>>, StoreError> {
        let mut keys: Vec<i64> = users.iter().map(|u| order_key(u)).collect();
        // One order for every node: two publishers can never wait on each other.
        keys.sort_unstable();
        keys.dedup();
        // The locks are taken by the insert's statement: one round trip fewer.
        let conn = self.pool.acquire().await?;
        Ok(Some(Box::new(PgOrderGuard {
            conn: Some(conn),
            keys,
            locked: false,
        })))
    }

    async fn audit(&self, e: &NewAudit) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_log (at, node, action, args, result, caller) \
             VALUES ($1, $2, $3, $4::json, $5::json, $6)",
        )
        .bind(now_ms())
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
            "SELECT id, at, node, action, args::text AS args, result::text AS result, caller \
             FROM audit_log ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rs.iter()
            .map(|r| {
                let at: DateTime<Utc> = r.try_get("at")?;
                let args: String = r.try_get("args")?;
                let result: String = r.try_get("result")?;
                Ok(AuditEntry {
                    id: r.try_get("id")?,
                    node: r.try_get("node")?,
                    at: format_time(at),
                    action: r.try_get("action")?,
                    args: serde_json::from_str(&args).unwrap_or(serde_json::Value::Null),
                    result: serde_json::from_str(&result).unwrap_or(serde_json::Value::Null),
                    caller: r.try_get("caller")?,
                })
            })
            .collect()
    }
}
