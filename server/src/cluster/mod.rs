//! Cluster mode's home: what a node shares with the others through Redis beyond
//! pub/sub (the broker's): the command connection, the key names, the node
//! [`registry`] and cluster-wide [`presence`].
//!
//! One answer to "are we clustered?": `REDIS_URL` decides
//! ([`crate::config::Config::cluster_mode`]) before the node exists; once it does, a
//! [`Cluster`] is present on the node exactly when it is clustered
//! ([`crate::node::Node::cluster`]), and everything else asks that.

pub mod presence;
pub mod registry;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

pub use registry::deregister;

/// What a clustered node keeps to talk to Redis outside pub/sub.
#[derive(Clone)]
pub struct Cluster {
    /// A single Redis or a Redis Cluster, whichever `REDIS_URL` names.
    pub redis: RedisConnection,
    /// `HERALD_REDIS_PREFIX`: nodes that share it form one cluster.
    pub prefix: String,
}

/// Every Redis key of the registry and presence. Each carries the hash tag
/// `{<prefix>}`, so they share one slot on a Redis Cluster and multi-key commands
/// over them are legal.
pub mod keys {
    /// A node's announcement (`NodeInfo` as JSON).
    pub fn node(prefix: &str, id: &str) -> String {
        format!("{{{prefix}}}:node:{id}")
    }

    /// The set of announced node ids.
    pub fn nodes(prefix: &str) -> String {
        format!("{{{prefix}}}:nodes")
    }

    /// A node's presence hash: user -> connections on that node.
    pub fn presence(prefix: &str, node: &str) -> String {
        format!("{{{prefix}}}:presence:{node}")
    }

    /// Where a node writes its next full presence hash before swapping it in.
    pub fn presence_next(prefix: &str, node: &str) -> String {
        format!("{{{prefix}}}:presence-next:{node}")
    }
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
