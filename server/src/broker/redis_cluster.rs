//! The transport for a Redis Cluster: sharded pub/sub (SPUBLISH and SSUBSCRIBE,
//! Redis 7).
//!
//! Routing, health and resyncs are the shared pub/sub broker's ([`super::pubsub`]),
//! exactly as on a single Redis ([`super::RedisBroker`]); this file connects,
//! publishes and (un)subscribes.
//!
//! Selected when `REDIS_URL` is `redis+cluster://host:port[,host:port...]` or several
//! comma-separated `redis://` URLs (the seed nodes; the rest of the cluster is
//! discovered). Each group is one sharded channel, `<prefix>:g:<group>`, so the
//! groups' channels spread over the shards by hash slot: a publish is one SPUBLISH
//! to the one shard that owns the channel, which forwards it only to the clients
//! subscribed there, never to the whole cluster bus (as plain PUBLISH would). A node
//! SSUBSCRIBEs a group's channel when the group gets its first local member and
//! SUNSUBSCRIBEs after the last one leaves. Frames use the format of [`super::wire`].
//!
//! The subscriber is a cluster connection of its own, in RESP3 with a push sender
//! (redis-rs 1.8 has sharded pub/sub on the cluster client only). The push sender is
//! synchronous and has no backpressure, so it feeds a bounded queue: when the queue
//! overflows, the dropped messages are counted as a loss and sessions catch up from
//! the store. When any node connection of the subscriber drops, the broker discards
//! the whole subscriber, reconnects with backoff, resubscribes every group the hub
//! holds and announces a *resync*, exactly as the single-Redis broker does; so it does
//! when the server drops a subscription the node still needs (Redis sends an
//! unrequested `sunsubscribe` when a slot moves to another master). The probe and
//! the resync announcements travel by SPUBLISH too.
//!
//! Limits: the probe channel lives on one shard, so a failed master is seen at once
//! only through its dropped connection (health `down`), and otherwise once the
//! cluster leaves `cluster_state:ok`. Django interop is not available here:
//! channels_redis does not support Redis Cluster (with several hosts it shards by its
//! own CRC32, not by hash slot), so its pub/sub layer cannot share a cluster with
//! Herald; use a single Redis ([`super::RedisBroker`]) for Django interop.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::{StreamExt, stream};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, ProtocolVersion, PushInfo, PushKind, Value};
use tokio::sync::{Notify, mpsc};

use super::BrokerError;
use super::pubsub::{self, Inbox, Message, NodeSide, PubSubCore, Received, Transport};
use crate::redis_client::RedisTls;
use crate::tasks::Tasks;

/// Messages received but not yet handed to the hub; beyond this they are dropped
/// and counted as a loss (sessions catch up from the store).
const PUSH_QUEUE: usize = 65_536;
/// How many (un)subscriptions are in flight at once in a batch.
const RESUBSCRIBE_CONCURRENCY: usize = 64;

/// The seed node URLs when `url` names a Redis Cluster, `None` for a single Redis.
///
/// `redis+cluster://[user:pass@]h1:p1,h2:p2[/...]` (or `rediss+cluster://`) gives one
/// `redis://` URL per host, each with the credentials and the tail; several
/// comma-separated `redis://` URLs are taken as they are.
pub fn cluster_seeds(url: &str) -> Result<Option<Vec<String>>, BrokerError> {
    let url = url.trim();
    let bad = |why: &str| BrokerError::Config(format!("REDIS_URL {url:?}: {why}"));
    for (scheme, plain) in [
        ("redis+cluster://", "redis"),
        ("rediss+cluster://", "rediss"),
    ] {
        let Some(rest) = url.strip_prefix(scheme) else {
            continue;
        };
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let (userinfo, hosts) = match authority.rfind('@') {
            Some(at) => (&authority[..=at], &authority[at + 1..]),
            None => ("", authority),
        };
        let seeds: Vec<String> = hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(|h| format!("{plain}://{userinfo}{h}{tail}"))
            .collect();
        if seeds.is_empty() {
            return Err(bad("no host"));
        }
        return Ok(Some(seeds));
    }
    if !url.contains(',') {
        return Ok(None);
    }
    let seeds: Vec<String> = url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect();
    if let Some(u) = seeds
        .iter()
        .find(|u| !u.starts_with("redis://") && !u.starts_with("rediss://"))
    {
        return Err(bad(&format!(
            "{u:?} is not a redis:// URL (several URLs name a Redis Cluster's seed nodes)"
        )));
    }
    Ok(Some(seeds))
}

/// What the push sender (called synchronously inside redis-rs) tells the reader.
struct Signals {
    /// A node connection of the subscriber dropped.
    lost: Notify,
    /// The queue was full and at least one message was dropped.
    overflowed: AtomicBool,
}

pub struct RedisClusterBroker {
    seeds: Vec<String>,
    /// Each subscriber connection is built anew from the seeds and these (so a
    /// reconnect reads the certificate files again).
    tls: RedisTls,
    /// Commands and SPUBLISH (no push sender); registry and presence share it.
    publisher: ClusterConnection,
    /// The subscriber sink is a clone of the subscriber connection.
    core: PubSubCore<ClusterConnection>,
}

fn builder(seeds: &[String], tls: &RedisTls) -> Result<ClusterClientBuilder, BrokerError> {
    let builder = tls
        .cluster_builder(seeds)
        .map_err(|e| BrokerError::Config(e.to_string()))?;
    Ok(builder
        .connection_timeout(Duration::from_secs(2))
        .response_timeout(Duration::from_secs(2))
        .overall_response_timeout(Some(Duration::from_secs(5)))
        .retries(3)
        .min_retry_wait(50)
        .max_retry_wait(500))
}

impl RedisClusterBroker {
    /// Connects to the cluster named by `seeds` (retrying while it is unreachable)
    /// and starts the subscriber, unsubscriber and probe tasks on `tasks`.
    pub async fn connect(
        seeds: Vec<String>,
        tls: &RedisTls,
        node: NodeSide,
        tasks: Tasks,
    ) -> Result<Arc<Self>, BrokerError> {
        let client: ClusterClient = builder(&seeds, tls)?
            .build()
            .map_err(|e| BrokerError::Config(e.to_string()))?;
        // The cluster client passes on only the text of a failed connection, so a
        // TLS refusal is told apart on a single connection to the first seed, made
        // alongside (a cluster node answers those too). It decides nothing else: the
        // cluster may well be reachable through the other seeds.
        let probe = match seeds.first() {
            Some(seed) if seed.starts_with("rediss://") => Some(
                tls.client(seed)
                    .map_err(|e| BrokerError::Config(e.to_string()))?,
            ),
            _ => None,
        };
        let tls_to = probe.as_ref().and_then(crate::redis_client::tls_addr);
        let publisher = pubsub::connect_retrying("Redis Cluster", tls_to, || async {
            let Some(probe) = &probe else {
                return client.get_async_connection().await;
            };
            let single = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(2)))
                .set_response_timeout(Some(Duration::from_secs(2)));
            let (cluster, single) = tokio::join!(
                client.get_async_connection(),
                probe.get_multiplexed_async_connection_with_config(&single)
            );
            match (cluster, single) {
                (Err(_), Err(e)) if crate::tls::refusal(&e).is_some() => Err(e),
                (cluster, _) => cluster,
            }
        })
        .await
        .map_err(BrokerError::Config)?;
        let node_id = node.node_id.clone();
        let broker = Arc::new(Self {
            seeds,
            tls: tls.clone(),
            publisher,
            core: PubSubCore::new(node, None),
        });
        pubsub::start(&broker, &tasks, &node_id);
        Ok(broker)
    }

    /// The publishing connection, for other Redis commands (registry, presence).
    pub fn connection(&self) -> ClusterConnection {
        self.publisher.clone()
    }
}

#[async_trait]
impl Transport for RedisClusterBroker {
    type Publisher = ClusterConnection;
    type Sink = ClusterConnection;
    type Message = Sharded;
    const KIND: &'static str = "redis-cluster";
    const NAME: &'static str = "Redis Cluster";
    const PUBLISH: &'static str = "SPUBLISH";
    const PIPELINE: bool = false;
    const REVOKES: bool = true;

    fn core(&self) -> &PubSubCore<ClusterConnection> {
        &self.core
    }

    fn publisher(&self) -> &ClusterConnection {
        &self.publisher
    }

    /// A cluster connection of its own, in RESP3, whose push sender feeds the
    /// bounded queue the inbox reads.
    async fn open(&self) -> redis::RedisResult<(ClusterConnection, Inbox<Sharded>)> {
        let (tx, rx) = mpsc::channel::<PushInfo>(PUSH_QUEUE);
        let signals = Arc::new(Signals {
            lost: Notify::new(),
            overflowed: AtomicBool::new(false),
        });
        let sig = signals.clone();
        let push = move |msg: PushInfo| -> Result<(), redis::aio::SendError> {
            if msg.kind == PushKind::Disconnection {
                sig.lost.notify_one();
                return Ok(());
            }
            match tx.try_send(msg) {
                Ok(()) => Ok(()),
                Err(mpsc::error::TrySendError::Full(_)) => {
                    sig.overflowed.store(true, Ordering::Relaxed);
                    Ok(())
                }
                Err(mpsc::error::TrySendError::Closed(_)) => Err(redis::aio::SendError),
            }
        };
        let con = builder(&self.seeds, &self.tls)
            .map_err(|e| {
                redis::RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "Redis Cluster client",
                    e.to_string(),
                ))
            })?
            .use_protocol(ProtocolVersion::RESP3)
            .push_sender(push)
            .build()?
            .get_async_connection()
            .await?;
        Ok((con, inbox(rx, signals)))
    }

    async fn listen(
        &self,
        sink: &mut ClusterConnection,
        channels: Vec<String>,
    ) -> redis::RedisResult<()> {
        each_channel(sink, channels, true).await
    }

    async fn unlisten(
        &self,
        sink: &mut ClusterConnection,
        channels: Vec<String>,
    ) -> redis::RedisResult<()> {
        each_channel(sink, channels, false).await
    }
}

/// SSUBSCRIBEs (or SUNSUBSCRIBEs) each channel on the shard that owns it; one
/// command per channel, since one SSUBSCRIBE may only name channels of one slot.
async fn each_channel(
    con: &ClusterConnection,
    channels: Vec<String>,
    subscribe: bool,
) -> redis::RedisResult<()> {
    let results: Vec<redis::RedisResult<()>> = stream::iter(channels)
        .map(|ch| {
            let mut con = con.clone();
            async move {
                if subscribe {
                    con.ssubscribe(&ch).await
                } else {
                    con.sunsubscribe(&ch).await
                }
            }
        })
        .buffer_unordered(RESUBSCRIBE_CONCURRENCY)
        .collect()
        .await;
    results.into_iter().collect()
}

/// A sharded message: its channel and payload, moved out of the push.
pub struct Sharded {
    channel: String,
    payload: Vec<u8>,
}

impl Message for Sharded {
    fn channel(&self) -> &str {
        &self.channel
    }

    fn payload(&self) -> &[u8] {
        &self.payload
    }
}

/// What the subscriber receives: the queued pushes, a [`Received::Dropped`] after
/// the queue overflowed, and the end as soon as any node connection is lost (ahead
/// of whatever is still queued: the loop resubscribes and resyncs anyway).
fn inbox(rx: mpsc::Receiver<PushInfo>, signals: Arc<Signals>) -> Inbox<Sharded> {
    stream::unfold((rx, signals), |(mut rx, signals)| async move {
        loop {
            if signals.overflowed.swap(false, Ordering::Relaxed) {
                return Some((Received::Dropped, (rx, signals)));
            }
            let msg = tokio::select! {
                biased;
                () = signals.lost.notified() => return None,
                msg = rx.recv() => msg?,
            };
            if let Some(received) = received(msg) {
                return Some((received, (rx, signals)));
            }
        }
    })
    .boxed()
}

/// A push as the subscriber loop sees it: a sharded message, or a channel the server
/// unsubscribed (asked for, or not: the loop tells them apart). Subscription
/// confirmations and the like are skipped.
fn received(msg: PushInfo) -> Option<Received<Sharded>> {
    let mut data = msg.data.into_iter();
    match msg.kind {
        PushKind::SMessage => {
            let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
                (data.next(), data.next())
            else {
                tracing::warn!("malformed sharded message; dropped");
                return None;
            };
            let channel = String::from_utf8(channel)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
            Some(Received::Message(Sharded { channel, payload }))
        }
        PushKind::SUnsubscribe => match data.next() {
            Some(Value::BulkString(channel)) => Some(Received::Revoked(
                String::from_utf8_lossy(&channel).into_owned(),
            )),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_come_from_either_url_form() {
        assert_eq!(cluster_seeds("redis://127.0.0.1:6379").unwrap(), None);
        assert_eq!(
            cluster_seeds("redis+cluster://a:1,b:2").unwrap().unwrap(),
            vec!["redis://a:1", "redis://b:2"]
        );
        assert_eq!(
            cluster_seeds("redis+cluster://u:p@a:1,b:2/?x=1")
                .unwrap()
                .unwrap(),
            vec!["redis://u:p@a:1/?x=1", "redis://u:p@b:2/?x=1"]
        );
        assert_eq!(
            cluster_seeds(" redis://a:1 , redis://b:2 ")
                .unwrap()
                .unwrap(),
            vec!["redis://a:1", "redis://b:2"]
        );
        assert!(cluster_seeds("redis+cluster://").is_err());
        assert!(cluster_seeds("redis://a:1,b:2").is_err());
    }
}
