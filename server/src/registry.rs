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
//! tag. The commands run on either connection kind ([`RedisConnection`]).

use std::sync::{Arc, Weak};
use std::time::Duration;

use herald_shared::admin::NodeInfo;
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::node::{Node, VERSION};

/// How often a node announces itself.
pub const BEAT: Duration = Duration::from_secs(2);
/// How long an announcement lives: three missed beats and the node is gone.
pub const TTL: Duration = Duration::from_secs(6);

pub fn node_key(prefix: &str, id: &str) -> String {
    format!("{{{prefix}}}:node:{id}")
}

pub fn nodes_key(prefix: &str) -> String {
    format!("{{{prefix}}}:nodes")
}

/// A command connection to a single Redis or to a Redis Cluster; both reconnect by
/// themselves. Cloning is shallow.
#[derive(Clone)]
pub enum RedisConnection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConnection::Single(c) => c.req_packed_command(cmd),
            RedisConnection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConnection::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConnection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConnection::Single(c) => c.get_db(),
            RedisConnection::Cluster(c) => c.get_db(),
        }
    }
}

/// Where this node can be reached, as announced.
#[derive(Debug, Clone)]
pub struct Addresses {
    pub public: String,
    pub admin: String,
}

/// Announces `node` every beat until it is dropped, then removes its entry.
pub fn spawn_heartbeat(
    node: &Arc<Node>,
    con: RedisConnection,
    prefix: String,
    addrs: Addresses,
) -> tokio::task::JoinHandle<()> {
    let weak: Weak<Node> = Arc::downgrade(node);
    let started_at = crate::auth::now_unix();
    tokio::spawn(async move {
        let mut con = con;
        loop {
            let Some(node) = weak.upgrade() else { return };
            let info = NodeInfo {
                id: node.id.clone(),
                public: addrs.public.clone(),
                admin: addrs.admin.clone(),
                version: VERSION.to_owned(),
                state: node.lifecycle.state(),
                started_at,
                connections: node.hub.connections() as u64,
            };
            let key = node_key(&prefix, &node.id);
            let presence = crate::presence::node_hash(&prefix, &node.id);
            drop(node);
            let res: redis::RedisResult<()> = redis::pipe()
                .cmd("SET")
                .arg(&key)
                .arg(serde_json::to_string(&info).expect("plain data"))
                .arg("PX")
                .arg(TTL.as_millis() as u64)
                .ignore()
                .cmd("SADD")
                .arg(nodes_key(&prefix))
                .arg(&info.id)
                .ignore()
                .cmd("PEXPIRE")
                .arg(nodes_key(&prefix))
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
            tokio::time::sleep(BEAT).await;
        }
    })
}

/// Removes this node's entry at once (clean shutdown).
pub async fn deregister<C: ConnectionLike + Send>(con: &mut C, prefix: &str, id: &str) {
    let _: redis::RedisResult<()> = redis::pipe()
        .cmd("DEL")
        .arg(node_key(prefix, id))
        .arg(crate::presence::node_hash(prefix, id))
        .ignore()
        .cmd("SREM")
        .arg(nodes_key(prefix))
        .arg(id)
        .ignore()
        .query_async(con)
        .await;
}

/// Every live node, by id; forgets ids whose announcement expired.
pub async fn list<C: ConnectionLike + Send>(
    con: &mut C,
    prefix: &str,
) -> redis::RedisResult<Vec<NodeInfo>> {
    let ids: Vec<String> = redis::cmd("SMEMBERS")
        .arg(nodes_key(prefix))
        .query_async(con)
        .await?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<String> = ids.iter().map(|id| node_key(prefix, id)).collect();
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
            .arg(nodes_key(prefix))
            .arg(&gone)
            .query_async(con)
            .await;
    }
    live.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(live)
}
