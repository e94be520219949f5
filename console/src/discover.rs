//! Where the nodes are: the Redis registry (`{<prefix>}:nodes` + `{<prefix>}:node:<id>`,
//! written by each node's heartbeat), explicit `--node` admin URLs, and Redis INFO
//! for the Redis panel.
//!
//! Reads only: expired ids are skipped, never removed (that is the nodes' job).

use std::collections::BTreeMap;
use std::time::Duration;

use herald_server::{RedisTls, RedisTlsError};
use herald_shared::admin::NodeInfo;
use redis::aio::MultiplexedConnection;

use crate::client::{AdminClient, base_url};

/// A node to poll: keyed by its admin base URL (ids may repeat across restarts).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    /// Admin base URL, `http://host:port`.
    pub admin: String,
    /// Registry id, when known before the first status.
    pub id: Option<String>,
    /// Public address (for `/readyz`), when the registry gave one.
    pub public: Option<String>,
}

impl Target {
    pub fn from_url(url: &str) -> Self {
        Self {
            admin: base_url(url),
            id: None,
            public: None,
        }
    }

    pub fn from_info(i: &NodeInfo) -> Self {
        Self {
            admin: base_url(&i.admin),
            id: Some(i.id.clone()),
            public: Some(i.public.clone()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// `--redis` and the TLS files cannot make a client.
    #[error("redis: {0}")]
    Config(#[from] RedisTlsError),
    #[error("redis: timed out")]
    Timeout,
    #[error("unknown node {0:?} (not in the registry, not a --node)")]
    Unknown(String),
}

const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

async fn timed<T>(f: impl Future<Output = redis::RedisResult<T>>) -> Result<T, DiscoverError> {
    match tokio::time::timeout(REDIS_TIMEOUT, f).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(DiscoverError::Timeout),
    }
}

/// A Redis connection for registry reads and INFO, made as the nodes make theirs
/// (`rediss://` with the same TLS files).
pub async fn connect(url: &str, tls: &RedisTls) -> Result<MultiplexedConnection, DiscoverError> {
    let client = tls.client(url)?;
    timed(client.get_multiplexed_async_connection()).await
}

/// The registry's key schemes: `{<prefix>}:…` (hash-tagged, so a Redis Cluster keeps
/// them in one slot; what nodes write now) and the older untagged `<prefix>:…`.
fn schemes(prefix: &str) -> [String; 2] {
    [format!("{{{prefix}}}"), prefix.to_owned()]
}

/// Every live node in the registry, by id (either key scheme; ids whose
/// announcement expired are skipped).
pub async fn registry(
    con: &mut MultiplexedConnection,
    prefix: &str,
) -> Result<Vec<NodeInfo>, DiscoverError> {
    let mut live: Vec<NodeInfo> = Vec::new();
    for p in schemes(prefix) {
        let ids: Vec<String> = timed(
            redis::cmd("SMEMBERS")
                .arg(format!("{p}:nodes"))
                .query_async(con),
        )
        .await?;
        if ids.is_empty() {
            continue;
        }
        let keys: Vec<String> = ids.iter().map(|id| format!("{p}:node:{id}")).collect();
        let values: Vec<Option<String>> =
            timed(redis::cmd("MGET").arg(&keys).query_async(con)).await?;
        for info in values
            .into_iter()
            .flatten()
            .filter_map(|v| serde_json::from_str::<NodeInfo>(&v).ok())
        {
            if !live.iter().any(|l| l.id == info.id) {
                live.push(info);
            }
        }
    }
    live.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(live)
}

/// The Redis panel's figures from `INFO`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RedisInfo {
    pub fields: BTreeMap<String, String>,
}

impl RedisInfo {
    pub fn parse(text: &str) -> Self {
        let fields = text
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        Self { fields }
    }

    pub fn get(&self, k: &str) -> &str {
        self.fields.get(k).map_or("-", String::as_str)
    }
}

pub async fn info(con: &mut MultiplexedConnection) -> Result<RedisInfo, DiscoverError> {
    let text: String = timed(redis::cmd("INFO").query_async(con)).await?;
    Ok(RedisInfo::parse(&text))
}

/// Where the subcommands look for nodes.
#[derive(Debug, Clone)]
pub struct Sources {
    pub redis: Option<String>,
    /// TLS files for a `rediss://` registry.
    pub redis_tls: RedisTls,
    pub prefix: String,
    pub nodes: Vec<String>,
    /// The one node is the one found on this host (`crate::local`), not a `--node`.
    pub local: bool,
}

impl Sources {
    /// All nodes: the registry's, then the `--node` URLs not already among them.
    pub async fn targets(&self) -> Result<Vec<Target>, DiscoverError> {
        let mut out = Vec::new();
        if let Some(url) = &self.redis {
            let mut con = connect(url, &self.redis_tls).await?;
            out.extend(
                registry(&mut con, &self.prefix)
                    .await?
                    .iter()
                    .map(Target::from_info),
            );
        }
        for n in &self.nodes {
            let t = Target::from_url(n);
            if !out.iter().any(|o| o.admin == t.admin) {
                out.push(t);
            }
        }
        Ok(out)
    }

    /// `NODE` as given to a subcommand: an admin URL (`http://…` or `host:port`), or
    /// an id found in the registry or among the `--node` URLs' statuses.
    pub async fn resolve(&self, node: &str, client: &AdminClient) -> Result<Target, DiscoverError> {
        if node.starts_with("http://") || node.starts_with("https://") || node.contains(':') {
            // An admin URL; the registry may know its public address.
            let mut t = Target::from_url(node);
            if let Ok(all) = self.targets().await
                && let Some(found) = all.into_iter().find(|o| o.admin == t.admin)
            {
                t = found;
            }
            return Ok(t);
        }
        for t in self.targets().await? {
            if t.id.as_deref() == Some(node) {
                return Ok(t);
            }
            if t.id.is_none()
                && let Ok(s) = client.status(&t.admin).await
                && s.node == node
            {
                return Ok(Target {
                    id: Some(s.node),
                    ..t
                });
            }
        }
        Err(DiscoverError::Unknown(node.to_owned()))
    }
}
