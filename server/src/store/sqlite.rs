//! The embedded store: one SQLite file in WAL mode, for a single node.
//!
//! WAL lets readers (connect snapshots, listings) run beside the single writer;
//! `synchronous=NORMAL` keeps commits durable across a process crash (not an OS
//! crash), the usual trade for a notification cache. Times are stored as Unix
//! milliseconds.
//!
//! SQLite admits one writer at a time, and a second connection that wants to write
//! does not queue: it gets `SQLITE_BUSY` and sleeps in the busy handler (1, 2, 5, 10
//! ... 100 ms) before it tries again. With writes spread over the read pool, 16
//! concurrent publish batches made p99 publish-to-receive latency 700 ms at 5,000
//! notifications/s (bench/RESULTS.md). So every write goes through [`Writer`], one
//! connection behind a FIFO lock: a writer never meets another writer, and readers
//! never block it. Each write is as few round trips to sqlx's worker thread as it can
//! be: a batch is one multi-row `INSERT`, the connect snapshot one `SELECT`.
//!
//! Checkpoints (copying the WAL back into the database file, with an fsync) run on a
//! connection of their own, ten times a second, instead of inside whichever commit
//! pushed the WAL past 1,000 pages: each row touches a random page of each per-user
//! index, so at thousands of notifications a second SQLite's own auto-checkpoint ran
//! many times a second in the writer's commit and stalled every publish behind it
//! (commit p99 34 ms at 7,000 rows/s). Frequent small checkpoints keep each fsync,
//! and the writes it holds up, short (commit p99 under 4 ms, p999 34 ms; once a
//! second, p999 was 130 ms). The writer keeps an auto-checkpoint at
//! [`WRITER_AUTOCHECKPOINT_PAGES`] as a backstop.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{TimeZone, Utc};
use herald_shared::admin::AuditEntry;
use herald_shared::api::NewNotification;
use herald_shared::frames::RawJson;
use herald_shared::{Notification, UserId};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, Row};
use tokio::sync::{Mutex, MutexGuard};

use super::{
    AfterQuery, ListQuery, NewAudit, Store, StoreError, UnreadSnapshot, format_time, now_ms,
};
use crate::tasks::Tasks;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

pub struct SqliteStore {
    /// Reads: connect snapshots, resumes, listings.
    pool: SqlitePool,
    /// Every write, one at a time (see the module doc).
    writer: Writer,
}

/// The one writer connection, behind a FIFO lock, held by the store itself rather
/// than by a one-connection pool. A pool tests every connection given back to it
/// with a ping (sqlx's `return_to_pool`, on a task it spawns), and on SQLite a ping
/// is a round trip to the connection's worker thread: one more sleep and wake-up of
/// two threads after every write, which doubled the writer thread's context switches
/// under single POSTs (bench/RESULTS.md). What the pool gave besides is kept: a write
/// waits at most [`WRITER_WAIT`] for its turn, and a connection in doubt is replaced
/// by a new one for the next write ([`Turn`]).
struct Writer {
    conn: Mutex<Option<SqliteConnection>>,
    opts: SqliteConnectOptions,
    wait: Duration,
}

/// How long a write waits for its turn at the writer before it fails as unavailable
/// (503: nothing was written), as the pool's acquire timeout did.
const WRITER_WAIT: Duration = Duration::from_secs(5);

impl Writer {
    async fn connect(opts: SqliteConnectOptions) -> Result<Self, StoreError> {
        let conn = opts.connect().await?;
        Ok(Self {
            conn: Mutex::new(Some(conn)),
            opts,
            wait: WRITER_WAIT,
        })
    }

    /// The writer, once it is this caller's turn (connected again if the last turn
    /// left it in doubt).
    async fn turn(&self) -> Result<Turn<'_>, StoreError> {
        let mut slot = tokio::time::timeout(self.wait, self.conn.lock())
            .await
            .map_err(|_| {
                StoreError::Unavailable(format!(
                    "the sqlite writer stayed busy for {:?}",
                    self.wait
                ))
            })?;
        if slot.is_none() {
            *slot = Some(self.opts.connect().await?);
        }
        Ok(Turn { slot, ended: false })
    }
}

/// One write's turn at the writer. Its outcome goes through [`Turn::end`]: a turn
/// that ends in an unavailable error, or is dropped without an end (a cancelled
/// request, an early return), leaves the connection in doubt, so it is closed and the
/// next turn opens a new one.
struct Turn<'a> {
    slot: MutexGuard<'a, Option<SqliteConnection>>,
    ended: bool,
}

impl Turn<'_> {
    fn conn(&mut self) -> &mut SqliteConnection {
        self.slot.as_mut().expect("a turn starts connected")
    }

    fn end<T>(mut self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        self.ended = !matches!(result, Err(StoreError::Unavailable(_)));
        result
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if !self.ended {
            tracing::warn!("a sqlite write ended in doubt; the writer reconnects for the next");
            *self.slot = None;
        }
    }
}

/// The writer checkpoints in its own commit only once the WAL holds this many pages
/// (64 MiB): the checkpointer normally keeps it far shorter.
const WRITER_AUTOCHECKPOINT_PAGES: u32 = 16_384;
/// How often the checkpointer copies the WAL into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);
/// The WAL file is truncated back to this after a checkpoint let it restart.
const WAL_SIZE_LIMIT: u64 = 64 << 20;

/// Rows per `INSERT` statement: full chunks of a large batch share one prepared
/// statement, and 100 rows × 3 parameters stay far below SQLite's variable limit.
const INSERT_CHUNK: usize = 100;

impl SqliteStore {
    /// Opens the database, runs the migrations, and starts the checkpointer as one of
    /// `tasks`.
    pub async fn connect(url: &str, pool_size: u32, tasks: &Tasks) -> Result<Self, StoreError> {
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
        // No test before acquire: a connection to a local file does not go stale,
        // and the test is one more round trip to sqlx's worker thread per query.
        let pool = SqlitePoolOptions::new()
            .max_connections(pool_size.max(1))
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(opts.clone())
            .await?;
        // The migrations run on the read pool, before anything reads: `Migrator::run`
        // takes a pool (given the writer's one connection it would need a lifetime
        // that the node's spawned start-up future cannot name).
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| StoreError::Db(format!("sqlite migrations: {e}")))?;
        let writer = Writer::connect(
            opts.clone()
                .pragma(
                    "wal_autocheckpoint",
                    WRITER_AUTOCHECKPOINT_PAGES.to_string(),
                )
                .pragma("journal_size_limit", WAL_SIZE_LIMIT.to_string()),
        )
        .await?;
        let checkpoints = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .connect_with(opts)
            .await?;
        tasks.spawn(
            "sqlite checkpoints",
            checkpoint_every(checkpoints, CHECKPOINT_EVERY),
        );
        Ok(Self { pool, writer })
    }
}

/// Copies the WAL into the database file every `every`, without blocking readers or
/// the writer (`PASSIVE`: it copies what no reader still needs and stops there).
async fn checkpoint_every(conn: SqlitePool, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&conn)
            .await
        {
            tracing::warn!(error = %e, "sqlite checkpoint failed; retrying");
        }
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

/// A LIMIT written into the SQL instead of bound. SQLite (3.51, as bundled) plans
/// with the value of a bound LIMIT, so every execution of a statement with `LIMIT ?`
/// re-prepares it (`SQLITE_STMTSTATUS_REPREPARE`): that was a third of the node's CPU
/// while clients connected (bench/RESULTS.md). The connect snapshot and the resume use
/// fixed limits, so each stays one cached statement (a listing, one per limit asked
/// for). An integer cannot inject SQL.
fn literal_limit(limit: i64) -> i64 {
    limit.max(0)
}

fn rows(rs: Vec<SqliteRow>) -> Result<Vec<Notification>, StoreError> {
    rs.iter().map(row_to_notification).collect()
}

/// Inserts `items` in one transaction on the writer: one statement (in autocommit, so
/// a group that fits skips `BEGIN` and `COMMIT`, two of its three trips to sqlx's
/// worker thread), or chunks of [`INSERT_CHUNK`] rows in a transaction.
async fn insert_on(
    conn: &mut SqliteConnection,
    items: &[NewNotification],
    ms: i64,
    created_at: &str,
) -> Result<Vec<Notification>, StoreError> {
    let mut out = Vec::with_capacity(items.len());
    if items.len() <= INSERT_CHUNK {
        insert_chunk(conn, items, ms, created_at, &mut out).await?;
        return Ok(out);
    }
    let mut tx = conn.begin().await?;
    for chunk in items.chunks(INSERT_CHUNK) {
        insert_chunk(&mut tx, chunk, ms, created_at, &mut out).await?;
    }
    tx.commit().await?;
    Ok(out)
}

/// Inserts one chunk (at most [`INSERT_CHUNK`] rows) in one multi-row statement on
/// the writer, appending the stored notifications to `out` in `chunk`'s order.
async fn insert_chunk(
    conn: &mut sqlx::SqliteConnection,
    chunk: &[NewNotification],
    ms: i64,
    created_at: &str,
    out: &mut Vec<Notification>,
) -> Result<(), StoreError> {
    let sql = format!(
        "INSERT INTO notifications (user_id, message, created_at, read) VALUES {} RETURNING id",
        vec!["(?, ?, ?, 0)"; chunk.len()].join(", ")
    );
    let mut q = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql));
    for item in chunk {
        q = q.bind(item.user.as_str()).bind(item.message.get()).bind(ms);
    }
    // RETURNING gives no order guarantee, but one statement on the only writer
    // inserts its rows in VALUES order under increasing ids.
    let mut ids = q.fetch_all(&mut *conn).await?;
    ids.sort_unstable();
    out.extend(chunk.iter().zip(ids).map(|(item, id)| Notification {
        id,
        user: item.user.to_string(),
        message: RawJson(item.message.clone()),
        created_at: created_at.to_owned(),
        read: false,
    }));
    Ok(())
}

/// Marks `ids_json` (a JSON array of ids) of `user` read in one transaction on the
/// writer: the ids it marked, and the user's unread count after.
async fn mark_read_on(
    conn: &mut SqliteConnection,
    user: &UserId,
    ids_json: String,
) -> Result<(Vec<i64>, i64), StoreError> {
    let mut tx = conn.begin().await?;
    let marked: Vec<i64> = sqlx::query_scalar(
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
    Ok((marked, unread))
}

#[async_trait]
impl Store for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    /// Every write goes through the one writer connection.
    fn write_slots(&self) -> usize {
        1
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn newest_issued_id(&self) -> Result<i64, StoreError> {
        // AUTOINCREMENT keeps the highest id ever issued in sqlite_sequence.
        Ok(sqlx::query_scalar(
            "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'notifications'), 0)",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    async fn insert(&self, items: &[NewNotification]) -> Result<Vec<Notification>, StoreError> {
        let created = now_ms();
        let ms = created.timestamp_millis();
        let created_at = format_time(created);
        let mut turn = self.writer.turn().await?;
        let stored = insert_on(turn.conn(), items, ms, &created_at).await;
        turn.end(stored)
    }

    async fn unread(&self, user: &UserId, limit: i64) -> Result<UnreadSnapshot, StoreError> {
        // One statement, so one read snapshot: the count, the newest id and the page
        // agree. The one-row `head` keeps the counts when the user has no unread row.
        let sql = format!(
            "WITH head AS (SELECT \
                 (SELECT count(*) FROM notifications WHERE user_id = ?1 AND read = 0) AS unread_count, \
                 (SELECT coalesce(max(id), 0) FROM notifications WHERE user_id = ?1) AS newest_id), \
             page AS (SELECT id, user_id, message, created_at, read FROM notifications \
                 WHERE user_id = ?1 AND read = 0 ORDER BY id DESC LIMIT {}) \
             SELECT head.unread_count, head.newest_id, page.* FROM head LEFT JOIN page ORDER BY page.id DESC",
            literal_limit(limit)
        );
        let rs = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(user.as_str())
            .fetch_all(&self.pool)
            .await?;
        let head = rs
            .first()
            .ok_or_else(|| StoreError::Db("unread snapshot returned no row".into()))?;
        let unread_count: i64 = head.try_get("unread_count")?;
        let newest_id: i64 = head.try_get("newest_id")?;
        let mut newest = Vec::with_capacity(rs.len());
        for r in &rs {
            if r.try_get::<Option<i64>, _>("id")?.is_some() {
                newest.push(row_to_notification(r)?);
            }
        }
        Ok(UnreadSnapshot {
            unread_count,
            newest,
            newest_id,
        })
    }

    /// One read after another: SQLite answers in-process, so a round trip saves
    /// nothing, and each user's page is held only until it is handed over.
    async fn after_many(
        &self,
        queries: &[AfterQuery<'_>],
        row: &mut (dyn FnMut(usize, Notification) + Send),
    ) -> Result<(), StoreError> {
        for (i, q) in queries.iter().enumerate() {
            let sql = format!(
                "SELECT id, user_id, message, created_at, read FROM notifications \
                 WHERE user_id = ? AND id > ? ORDER BY id ASC LIMIT {}",
                literal_limit(q.limit)
            );
            let rs = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(q.user.as_str())
                .bind(q.after)
                .fetch_all(&self.pool)
                .await?;
            for n in rows(rs)? {
                row(i, n);
            }
        }
        Ok(())
    }

    async fn list(&self, user: &UserId, q: ListQuery) -> Result<Vec<Notification>, StoreError> {
        let sql = format!(
            "SELECT id, user_id, message, created_at, read FROM notifications \
             WHERE user_id = ?1 AND id < ?2 AND (?3 = 0 OR read = 0) \
             ORDER BY id DESC LIMIT {}",
            literal_limit(q.limit)
        );
        let rs = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(user.as_str())
            .bind(q.before.unwrap_or(i64::MAX))
            .bind(q.unread_only)
            .fetch_all(&self.pool)
            .await?;
        rows(rs)
    }

    async fn mark_read(&self, user: &UserId, ids: &[i64]) -> Result<(Vec<i64>, i64), StoreError> {
        let ids_json = serde_json::to_string(ids).expect("ids serialise");
        let mut turn = self.writer.turn().await?;
        let marked = mark_read_on(turn.conn(), user, ids_json).await;
        let (mut marked, unread) = turn.end(marked)?;
        marked.sort_unstable();
        Ok((marked, unread))
    }

    async fn mark_all_read(&self, user: &UserId) -> Result<i64, StoreError> {
        let mut turn = self.writer.turn().await?;
        let marked =
            sqlx::query("UPDATE notifications SET read = 1 WHERE user_id = ? AND read = 0")
                .bind(user.as_str())
                .execute(turn.conn())
                .await;
        turn.end(marked.map_err(StoreError::from))?;
        Ok(0)
    }

    async fn audit(&self, e: &NewAudit) -> Result<(), StoreError> {
        let mut turn = self.writer.turn().await?;
        let written = sqlx::query(
            "INSERT INTO audit_log (at, node, action, args, result, caller) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(now_ms().timestamp_millis())
        .bind(&e.node)
        .bind(e.action)
        .bind(e.args.to_string())
        .bind(e.result.to_string())
        .bind(&e.caller)
        .execute(turn.conn())
        .await;
        turn.end(written.map(drop).map_err(StoreError::from))
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

#[cfg(test)]
mod tests {
    use serde_json::value::RawValue;

    use super::*;

    async fn store(dir: &tempfile::TempDir) -> SqliteStore {
        let url = format!("sqlite://{}", dir.path().join("herald.db").display());
        SqliteStore::connect(&url, 2, &Tasks::new())
            .await
            .expect("sqlite store")
    }

    fn one(user: &str) -> Vec<NewNotification> {
        vec![NewNotification {
            user: UserId::parse(user).expect("user id"),
            message: RawValue::from_string(r#"{"n":1}"#.to_owned()).expect("json"),
        }]
    }

    /// The pool's acquire timeout, kept: a write that cannot get its turn fails as
    /// unavailable (503, nothing written) instead of waiting for ever.
    #[tokio::test]
    async fn a_write_waits_for_its_turn_at_most_the_writer_wait() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = store(&dir).await;
        store.writer.wait = Duration::from_millis(100);
        let held = store.writer.conn.lock().await;
        match store.insert(&one("u1")).await {
            Err(StoreError::Unavailable(why)) => assert!(why.contains("stayed busy"), "{why}"),
            other => panic!("expected unavailable, got {other:?}"),
        }
        drop(held);
        let stored = store
            .insert(&one("u1"))
            .await
            .expect("the writer is free again");
        assert_eq!(stored.len(), 1);
    }

    /// The pool's replacement of a broken connection, kept: a write that failed as
    /// unavailable, or was dropped half done, closes the connection, and the next
    /// write opens a new one.
    #[tokio::test]
    async fn a_writer_left_in_doubt_reconnects_for_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let turn = store.writer.turn().await.expect("turn");
        let failed = turn.end(Err::<(), _>(StoreError::Unavailable("worker gone".into())));
        assert!(matches!(failed, Err(StoreError::Unavailable(_))));
        assert!(
            store.writer.conn.lock().await.is_none(),
            "a failed connection is not used again"
        );
        let turn = store.writer.turn().await.expect("turn");
        assert!(turn.end(Ok(())).is_ok());
        assert!(
            store.writer.conn.lock().await.is_some(),
            "a turn that ended well keeps its connection"
        );
        drop(store.writer.turn().await.expect("turn"));
        assert!(
            store.writer.conn.lock().await.is_none(),
            "a turn dropped without an end (a cancelled write) leaves it in doubt"
        );
        let stored = store.insert(&one("u2")).await.expect("a new connection");
        assert!(store.writer.conn.lock().await.is_some());
        let listed = store
            .list(
                &UserId::parse("u2").unwrap(),
                ListQuery {
                    before: None,
                    limit: 10,
                    unread_only: false,
                },
            )
            .await
            .expect("list");
        assert_eq!(
            listed.iter().map(|n| n.id).collect::<Vec<_>>(),
            vec![stored[0].id]
        );
    }
}
