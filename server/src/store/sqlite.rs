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
//! never block it. A batch is one multi-row `INSERT`.
//!
//! Reads go through sqlx's pool, where each statement is a round trip to the
//! connection's worker thread; the connect snapshot is one `SELECT`. Writes do not:
//! the writer is a rusqlite connection whose statements run on the calling tokio
//! worker (see [`Writer`]).
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

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{TimeZone, Utc};
use herald_shared::admin::AuditEntry;
use herald_shared::api::NewNotification;
use herald_shared::frames::RawJson;
use herald_shared::{Notification, UserId};
use rusqlite::ErrorCode;
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use tokio::sync::Mutex;

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

/// The one writer connection, behind a FIFO lock.
///
/// It is rusqlite's, and its statements run on the tokio worker that takes the turn.
/// sqlx runs each SQLite connection on a thread of its own, so every statement was a
/// round trip to that thread, two thread wake-ups per write (one each way): under
/// single POSTs, running the writes here instead cut the node's CPU per notification
/// by a sixth (bench/RESULTS.md, "SQLite's writer on the tokio worker"). A write here
/// is one append to the WAL with no fsync (`synchronous=NORMAL`), tens of
/// microseconds, so the worker runs it itself. What can make it longer: the backstop
/// checkpoint ([`WRITER_AUTOCHECKPOINT_PAGES`]), and another process holding SQLite's
/// write lock, which the busy timeout bounds.
///
/// A write waits at most [`WRITER_WAIT`] for its turn, and a write that fails as
/// unavailable leaves the connection in doubt, so the next write opens a new one.
struct Writer {
    conn: Mutex<Option<rusqlite::Connection>>,
    path: PathBuf,
    wait: Duration,
}

/// How long a write waits for its turn at the writer before it fails as unavailable
/// (503: nothing was written).
const WRITER_WAIT: Duration = Duration::from_secs(5);
/// How long SQLite retries a busy database before a statement fails (on the writer,
/// only another process writing to the file can make it busy).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Prepared statements the writer keeps: one multi-row `INSERT` per group size up to
/// [`INSERT_CHUNK`], and the few other writes.
const WRITER_STATEMENTS: usize = INSERT_CHUNK + 16;

impl Writer {
    fn new(path: PathBuf) -> Result<Self, StoreError> {
        let conn = Self::open(&path)?;
        Ok(Self {
            conn: Mutex::new(Some(conn)),
            path,
            wait: WRITER_WAIT,
        })
    }

    /// The writer's connection. The database is already in WAL mode (a property of
    /// the file, set by the read pool's connections); the rest is per connection.
    fn open(path: &Path) -> Result<rusqlite::Connection, StoreError> {
        let conn = rusqlite::Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", true)?;
        conn.pragma_update(None, "wal_autocheckpoint", WRITER_AUTOCHECKPOINT_PAGES)?;
        conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
        conn.set_prepared_statement_cache_capacity(WRITER_STATEMENTS);
        Ok(conn)
    }

    /// Runs `write` on the writer once it is this caller's turn (on a new connection
    /// if the last write left the old one in doubt).
    async fn write<T>(
        &self,
        write: impl FnOnce(&mut rusqlite::Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut slot = tokio::time::timeout(self.wait, self.conn.lock())
            .await
            .map_err(|_| {
                StoreError::Unavailable(format!(
                    "the sqlite writer stayed busy for {:?}",
                    self.wait
                ))
            })?;
        let conn = match &mut *slot {
            Some(conn) => conn,
            None => slot.insert(Self::open(&self.path)?),
        };
        let result = write(conn);
        if matches!(result, Err(StoreError::Unavailable(_))) {
            tracing::warn!(
                "a sqlite write failed as unavailable; the writer reconnects for the next"
            );
            *slot = None;
        }
        result
    }
}

/// The writer's errors in the store's terms: SQLite's busy and locked are unavailable
/// (503, nothing written), the rule the read pool's sqlx errors follow by their codes
/// (5, 6) in `store::is_unavailable_code`.
impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
                StoreError::Unavailable(e.to_string())
            }
            _ => StoreError::Db(e.to_string()),
        }
    }
}

/// The writer checkpoints in its own commit only once the WAL holds this many pages
/// (64 MiB): the checkpointer normally keeps it far shorter.
const WRITER_AUTOCHECKPOINT_PAGES: u32 = 16_384;
/// How often the checkpointer copies the WAL into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);
/// The WAL file is truncated back to this after a checkpoint let it restart.
const WAL_SIZE_LIMIT: i64 = 64 << 20;

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
        let writer = Writer::new(opts.get_filename().to_owned())?;
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

/// Inserts `items` in one transaction on the writer: one statement in autocommit when
/// they fit, or chunks of [`INSERT_CHUNK`] rows between `BEGIN` and `COMMIT`. A lone
/// statement is atomic by itself, and outside a transaction it needs no statement
/// journal either (one of the costs a profile of single POSTs showed).
fn insert_on(
    conn: &mut rusqlite::Connection,
    items: &[NewNotification],
    ms: i64,
    created_at: &str,
) -> Result<Vec<Notification>, StoreError> {
    let mut out = Vec::with_capacity(items.len());
    if items.len() <= INSERT_CHUNK {
        insert_chunk(conn, items, ms, created_at, &mut out)?;
        return Ok(out);
    }
    let tx = conn.transaction()?;
    for chunk in items.chunks(INSERT_CHUNK) {
        insert_chunk(&tx, chunk, ms, created_at, &mut out)?;
    }
    tx.commit()?;
    Ok(out)
}

/// Inserts one chunk (at most [`INSERT_CHUNK`] rows) in one multi-row statement,
/// appending the stored notifications to `out` in `chunk`'s order.
fn insert_chunk(
    conn: &rusqlite::Connection,
    chunk: &[NewNotification],
    ms: i64,
    created_at: &str,
    out: &mut Vec<Notification>,
) -> Result<(), StoreError> {
    let sql = format!(
        "INSERT INTO notifications (user_id, message, created_at, read) VALUES {}",
        vec!["(?, ?, ?, 0)"; chunk.len()].join(", ")
    );
    let mut insert = conn.prepare_cached(&sql)?;
    for (i, item) in chunk.iter().enumerate() {
        insert.raw_bind_parameter(3 * i + 1, item.user.as_str())?;
        insert.raw_bind_parameter(3 * i + 2, item.message.get())?;
        insert.raw_bind_parameter(3 * i + 3, ms)?;
    }
    let inserted = insert.raw_execute()?;
    assert_eq!(inserted, chunk.len(), "an INSERT inserts every row");
    // AUTOINCREMENT gives each row one more than the highest id ever issued, so one
    // statement on the only writer inserts its rows in VALUES order under consecutive
    // ids, ending at the last one it inserted.
    let last = conn.last_insert_rowid();
    let ids = last - chunk.len() as i64 + 1..=last;
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
fn mark_read_on(
    conn: &mut rusqlite::Connection,
    user: &UserId,
    ids_json: &str,
) -> Result<(Vec<i64>, i64), StoreError> {
    let tx = conn.transaction()?;
    let marked = tx
        .prepare_cached(
            "UPDATE notifications SET read = 1 \
             WHERE user_id = ? AND id IN (SELECT value FROM json_each(?)) RETURNING id",
        )?
        .query_map((user.as_str(), ids_json), |row| row.get::<_, i64>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    let unread = tx
        .prepare_cached("SELECT count(*) FROM notifications WHERE user_id = ? AND read = 0")?
        .query_row([user.as_str()], |row| row.get::<_, i64>(0))?;
    tx.commit()?;
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
        self.writer
            .write(|conn| insert_on(conn, items, ms, &created_at))
            .await
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
        let (mut marked, unread) = self
            .writer
            .write(|conn| mark_read_on(conn, user, &ids_json))
            .await?;
        marked.sort_unstable();
        Ok((marked, unread))
    }

    async fn mark_all_read(&self, user: &UserId) -> Result<i64, StoreError> {
        self.writer
            .write(|conn| {
                conn.prepare_cached(
                    "UPDATE notifications SET read = 1 WHERE user_id = ? AND read = 0",
                )?
                .execute([user.as_str()])?;
                Ok(())
            })
            .await?;
        Ok(0)
    }

    async fn audit(&self, e: &NewAudit) -> Result<(), StoreError> {
        let at = now_ms().timestamp_millis();
        let (args, result) = (e.args.to_string(), e.result.to_string());
        self.writer
            .write(|conn| {
                conn.prepare_cached(
                    "INSERT INTO audit_log (at, node, action, args, result, caller) \
                     VALUES (?, ?, ?, ?, ?, ?)",
                )?
                .execute((at, &e.node, e.action, &args, &result, &e.caller))?;
                Ok(())
            })
            .await
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
    /// unavailable closes the connection, and the next write opens a new one; any
    /// other outcome keeps it.
    #[tokio::test]
    async fn a_writer_left_in_doubt_reconnects_for_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let failed = store
            .writer
            .write(|_| Err::<(), _>(StoreError::Unavailable("disk gone".into())))
            .await;
        assert!(matches!(failed, Err(StoreError::Unavailable(_))));
        assert!(
            store.writer.conn.lock().await.is_none(),
            "a connection in doubt is not used again"
        );
        let refused = store
            .writer
            .write(|conn| {
                conn.execute_batch("INSERT INTO no_such_table VALUES (1)")
                    .map_err(StoreError::from)
            })
            .await;
        assert!(
            matches!(refused, Err(StoreError::Db(ref why)) if why.contains("no_such_table")),
            "{refused:?}"
        );
        assert!(
            store.writer.conn.lock().await.is_some(),
            "a write the database refused leaves the connection as it was"
        );
        *store.writer.conn.lock().await = None;
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

    /// Another process holding SQLite's write lock makes the writer's statement busy,
    /// and a busy database is unavailable (503, nothing written), not an error of the
    /// request's.
    #[tokio::test]
    async fn a_database_another_process_holds_is_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let other = rusqlite::Connection::open(dir.path().join("herald.db")).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        store
            .writer
            .conn
            .lock()
            .await
            .as_ref()
            .unwrap()
            .busy_timeout(Duration::from_millis(50))
            .unwrap();
        match store.insert(&one("u3")).await {
            Err(StoreError::Unavailable(why)) => assert!(why.contains("locked"), "{why}"),
            other => panic!("expected unavailable, got {other:?}"),
        }
        other.execute_batch("ROLLBACK").unwrap();
        let stored = store.insert(&one("u3")).await.expect("the lock is gone");
        let snapshot = store
            .unread(&UserId::parse("u3").unwrap(), 50)
            .await
            .unwrap();
        assert_eq!(
            snapshot.newest.iter().map(|n| n.id).collect::<Vec<_>>(),
            vec![stored[0].id],
            "only the second insert was written"
        );
    }
}
