//! The node registry in Redis: how the console (and anyone) finds every live node.
//!
//! Each node writes `{<prefix>}:node:<id>` (its [`NodeInfo`] as JSON, expiring after
//! [`TTL`]) and adds its id to the set `{<prefix>}:nodes` every [`BEAT`]. A node that
//! stops heart-beating disappears when its key expires; readers drop ids whose key
//! is gone. The same beat refreshes the expiry of the node's presence hash and of the
//! set itself (so nothing outlives the last node by more than [`TTL`]).
//!
//! Every registry and presence key carries the hash tag `{<prefix>}`: on a Redis
//! Cluster they all live in one slot, so the multi-key commands and pipelines here
//! (MGET, DEL of two keys, a beat's pipeline) are legal. A single Redis ignores the
//! tag. The commands run on either connection kind ([`super::RedisConnection`]).

use std::time::Duration;

use herald_shared::admin::NodeInfo;
use redis::aio::ConnectionLike;

use super::{RedisConnection, keys};
use crate::tasks::Tasks;

/// How often a node announces itself.
pub const BEAT: Duration = Duration::from_secs(2);
/// How long an announcement lives: three missed beats and the node is gone.
pub const TTL: Duration = Duration::from_secs(6);

/// Announces the node every beat while `announce` has something to say (it answers
/// `None` once the node is gone) and the node's tasks run, and at once whenever
/// `again` changes (the node's advertised addresses did). Deregistration at
/// shutdown is [`deregister`]'s.
pub fn spawn_heartbeat<T: Send + Sync + 'static>(
    tasks: &Tasks,
    con: RedisConnection,
    prefix: String,
    mut again: tokio::sync::watch::Receiver<T>,
    announce: impl Fn() -> Option<NodeInfo> + Send + 'static,
) {
    tasks.spawn("registry heartbeat", async move {
        let mut con = con;
        loop {
            let Some(info) = announce() else { return };
            let key = keys::node(&prefix, &info.id);
            let presence = keys::presence(&prefix, &info.id);
            let res: redis::RedisResult<()> = redis::pipe()
                .cmd("SET")
                .arg(&key)
                .arg(serde_json::to_string(&info).expect("plain data"))
                .arg("PX")
                .arg(TTL.as_millis() as u64)
                .ignore()
                .cmd("SADD")
                .arg(keys::nodes(&prefix))
                .arg(&info.id)
                .ignore()
                .cmd("PEXPIRE")
                .arg(keys::nodes(&prefix))
                .arg(TTL.as_millis() as u64)
                .ignore()
                .cmd("PEXPIRE")
                .arg(&presence)
                .arg(TTL.as_millis() as u64)
                .ignore()
                .query_async(&mut con)
                .await;
            if let Err(e) = res {
                tracing::warn!(error = %e, "registry heartbeat failed");
            }
            again.borrow_and_update();
            tokio::select! {
                () = tokio::time::sleep(BEAT) => {}
                changed = again.changed() => {
                    if changed.is_err() {
                        // Nobody can change the addresses any more: beat on.
                        tokio::time::sleep(BEAT).await;
                    }
                }
            }
        }
    });
}

/// Removes this node's entry at once (clean shutdown).
pub async fn deregister<C: ConnectionLike + Send>(con: &mut C, prefix: &str, id: &str) {
    let _: redis::RedisResult<()> = redis::pipe()
        .cmd("DEL")
        .arg(keys::node(prefix, id))
        .arg(keys::presence(prefix, id))
        .arg(keys::presence_next(prefix, id))
        .ignore()
        .cmd("SREM")
        .arg(keys::nodes(prefix))
        .arg(id)
        .ignore()
        .query_async(con)
        .await;
}

/// Every live node of the cluster whose `HERALD_REDIS_PREFIX` is `prefix`, sorted by
/// id, as the registry has them (on a single Redis or a Redis Cluster connection);
/// forgets ids whose announcement expired. What `herald-console` and ops tools read.
pub async fn list<C: ConnectionLike + Send>(
    con: &mut C,
    prefix: &str,
) -> redis::RedisResult<Vec<NodeInfo>> {
    let ids: Vec<String> = redis::cmd("SMEMBERS")
        .arg(keys::nodes(prefix))
        .query_async(con)
        .await?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<String> = ids.iter().map(|id| keys::node(prefix, id)).collect();
    let values: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(con).await?;
    let mut live = Vec::new();
    let mut gone = Vec::new();
    for (id, v) in ids.into_iter().zip(values) {
        match v.and_then(|v| serde_json::from_str::<NodeInfo>(&v).ok()) {
            Some(info) => live.push(info),
            None => gone.push(id),
        }
    }
    if !gone.is_empty() {
        let _: redis::RedisResult<()> = redis::cmd("SREM")
            .arg(keys::nodes(prefix))
            .arg(&gone)
            .query_async(con)
            .await;
    }
    live.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(live)
}
