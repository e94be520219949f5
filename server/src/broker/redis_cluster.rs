//! The cluster broker on a Redis Cluster: sharded pub/sub (SSUBSCRIBE/SPUBLISH,
//! Redis 7) with the same interest-based routing as [`super::RedisBroker`].
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
//! unrequested `sunsubscribe` when a slot moves to another master). Health is
//! end to end: the node SPUBLISHes to its own probe channel every second and is `up`
//! only while the subscriber is connected and the probe comes back. A publish that
//! fails makes publishes fail fast until the probe gets through again; the node then
//! SPUBLISHes on `<prefix>:resync` so every node's sessions catch up.
//!
//! Limits: the probe channel lives on one shard, so a failed master is seen at once
//! only through its dropped connection (health `down`), and otherwise once the
//! cluster leaves `cluster_state:ok`. Django interop is not available here:
//! channels_redis does not support Redis Cluster (with several hosts it shards by its
//! own CRC32, not by hash slot), so its pub/sub layer cannot share a cluster with
//! Herald; use a single Redis ([`super::RedisBroker`]) for Django interop.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::{StreamExt, stream};
use herald_shared::GroupName;
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{ProtocolVersion, PushInfo, PushKind, Value};
use tokio::sync::{Mutex, Notify, mpsc};

use super::{Broker, BrokerError, BrokerHealth, wire};
use crate::hub::Hub;
use crate::outbox::{Delivery, unix_micros};

/// How long the probe may go unanswered before the broker reports `down`.
const PROBE_DEADLINE_US: u64 = 3_000_000;
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// Messages received but not yet handed to the hub; beyond this they are dropped
/// and counted as a loss (sessions catch up from the store).
const PUSH_QUEUE: usize = 65_536;
/// How many (un)subscriptions are in flight at once while resubscribing.
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
    /// Commands and SPUBLISH (no push sender); registry and presence share it.
    publisher: ClusterConnection,
    prefix: String,
    hub: Arc<Hub>,
    /// The live subscriber connection; `None` while reconnecting. The mutex also
    /// serialises subscribe against unsubscribe, so a leave racing a join can never
    /// unsubscribe a group that has a member again.
    sub: Mutex<Option<ClusterConnection>>,
    connected: AtomicU8,
    /// When the probe last came back (Unix µs).
    probe_seen: AtomicU64,
    probe_channel: String,
    /// Bumped on every resubscription after a loss, on a dropped message, and
    /// whenever any node announces on `<prefix>:resync` that its publishes failed.
    resyncs: tokio::sync::watch::Sender<u64>,
    resync_channel: String,
    /// A publish failed: publishes fail fast until the prober gets through again.
    publish_failed: AtomicBool,
}

fn builder(seeds: &[String]) -> ClusterClientBuilder {
    ClusterClientBuilder::new(seeds.to_vec())
        .connection_timeout(Duration::from_secs(2))
        .response_timeout(Duration::from_secs(2))
        .overall_response_timeout(Some(Duration::from_secs(5)))
        .retries(3)
        .min_retry_wait(50)
        .max_retry_wait(500)
}

impl RedisClusterBroker {
    /// Connects to the cluster named by `seeds` (retrying while it is unreachable)
    /// and starts the subscriber and probe tasks.
    pub async fn connect(
        seeds: Vec<String>,
        prefix: &str,
        node_id: &str,
        hub: Arc<Hub>,
    ) -> Result<Arc<Self>, BrokerError> {
        let client: ClusterClient = builder(&seeds)
            .build()
            .map_err(|e| BrokerError::Config(e.to_string()))?;
        let mut delay = Duration::from_millis(200);
        let publisher = loop {
            match client.get_async_connection().await {
                Ok(c) => break c,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?delay, "Redis Cluster unreachable at start-up; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        };
        let broker = Arc::new(Self {
            seeds,
            publisher,
            prefix: prefix.to_owned(),
            hub,
            sub: Mutex::new(None),
            connected: AtomicU8::new(0),
            probe_seen: AtomicU64::new(0),
            probe_channel: format!("{prefix}:probe:{node_id}"),
            resyncs: tokio::sync::watch::Sender::new(0),
            resync_channel: format!("{prefix}:resync"),
            publish_failed: AtomicBool::new(false),
        });
        tokio::spawn(subscriber(Arc::downgrade(&broker)));
        tokio::spawn(prober(Arc::downgrade(&broker), node_id.to_owned()));
        Ok(broker)
    }

    /// The publishing connection, for other Redis commands (registry, presence).
    pub fn connection(&self) -> ClusterConnection {
        self.publisher.clone()
    }

    /// The sharded channel a group's messages travel on.
    pub fn channel(&self, group: &GroupName) -> String {
        format!("{}:g:{}", self.prefix, group)
    }

    /// Routes one pushed message from the subscriber to the hub. Returns `true` when
    /// the server dropped a subscription this node still needs: Redis sends an
    /// unrequested `sunsubscribe` when a channel's slot moves to another master
    /// (resharding, failover), and the subscriber must then start over.
    fn on_push(&self, msg: PushInfo) -> bool {
        let kind = msg.kind.clone();
        let mut data = msg.data.into_iter();
        match kind {
            PushKind::SMessage => {
                let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
                    (data.next(), data.next())
                else {
                    tracing::warn!("malformed sharded message; dropped");
                    return false;
                };
                self.dispatch(&String::from_utf8_lossy(&channel), &payload);
                false
            }
            PushKind::SUnsubscribe => {
                let Some(Value::BulkString(channel)) = data.next() else {
                    return false;
                };
                let channel = String::from_utf8_lossy(&channel);
                let needed = channel == self.probe_channel
                    || channel == self.resync_channel
                    || self
                        .group_of(&channel)
                        .is_some_and(|g| self.hub.members(&g) > 0);
                if needed {
                    tracing::warn!(%channel, "Redis Cluster dropped a subscription (slot moved?)");
                }
                needed
            }
            // Subscription confirmations and the like.
            _ => false,
        }
    }

    /// The group a channel of this node's prefix carries.
    fn group_of(&self, channel: &str) -> Option<GroupName> {
        channel
            .strip_prefix(self.prefix.as_str())
            .and_then(|c| c.strip_prefix(":g:"))
            .and_then(|g| GroupName::parse(g).ok())
    }

    fn dispatch(&self, channel: &str, payload: &[u8]) {
        if channel == self.probe_channel {
            self.probe_seen.store(unix_micros(), Ordering::Relaxed);
            return;
        }
        if channel == self.resync_channel {
            tracing::info!(from = %String::from_utf8_lossy(payload), "a node could not publish for a while: catching up");
            self.resyncs.send_modify(|n| *n += 1);
            return;
        }
        match (self.group_of(channel), wire::decode(payload)) {
            (Some(g), Some(d)) => {
                self.hub.deliver(&g, &d);
            }
            _ => tracing::warn!(
                channel,
                "undecodable message on a subscribed channel; dropped"
            ),
        }
    }

    fn set_connected(&self, up: bool) {
        self.connected.store(up as u8, Ordering::Relaxed);
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

/// Owns the subscriber connection: connect, resubscribe, read, and on loss again.
async fn subscriber(broker: Weak<RedisClusterBroker>) {
    let mut delay = Duration::from_millis(100);
    let mut first = true;
    loop {
        let Some(b) = broker.upgrade() else { return };
        let (tx, mut rx) = mpsc::channel::<PushInfo>(PUSH_QUEUE);
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
        let connected = match builder(&b.seeds)
            .use_protocol(ProtocolVersion::RESP3)
            .push_sender(push)
            .build()
        {
            Ok(client) => client.get_async_connection().await,
            Err(e) => Err(e),
        };
        let con = match connected {
            Ok(c) => c,
            Err(e) => {
                b.set_connected(false);
                drop(b);
                tracing::warn!(error = %e, retry_in = ?delay, "Redis Cluster subscriber unreachable");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        {
            // Install the connection first: a group that gains its first member from
            // now on subscribes itself; the ones before are in the snapshot below.
            let mut guard = b.sub.lock().await;
            *guard = Some(con.clone());
            let mut channels = vec![b.probe_channel.clone(), b.resync_channel.clone()];
            channels.extend(b.hub.groups().iter().map(|g| b.channel(g)));
            let n = channels.len();
            if let Err(e) = each_channel(&con, channels, true).await {
                *guard = None;
                drop(guard);
                b.set_connected(false);
                drop(b);
                tracing::warn!(error = %e, retry_in = ?delay, "resubscribe failed; reconnecting");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                continue;
            }
            tracing::info!(channels = n, "Redis Cluster subscriber connected");
        }
        b.set_connected(true);
        delay = Duration::from_millis(100);
        if !first || b.hub.connections() > 0 {
            // Whatever was published while we were away (or, at start-up, before the
            // first subscription took) is in the store: sessions catch up.
            b.resyncs.send_modify(|n| *n += 1);
        }
        first = false;
        drop(b);
        loop {
            tokio::select! {
                msg = rx.recv() => {
                    let Some(msg) = msg else { break };
                    let Some(b) = broker.upgrade() else { return };
                    if b.on_push(msg) {
                        break;
                    }
                    if signals.overflowed.swap(false, Ordering::Relaxed) {
                        tracing::warn!("subscriber queue overflowed: messages dropped; sessions catch up");
                        b.resyncs.send_modify(|n| *n += 1);
                    }
                }
                () = signals.lost.notified() => break,
            }
        }
        let Some(b) = broker.upgrade() else { return };
        b.set_connected(false);
        *b.sub.lock().await = None;
        drop(con);
        tracing::warn!("Redis Cluster subscriber connection lost; reconnecting");
        drop(b);
        tokio::time::sleep(delay).await;
    }
}

/// SPUBLISHes to the node's own probe channel every second; once publishing works
/// again after failures, announces a cluster-wide resync.
async fn prober(broker: Weak<RedisClusterBroker>, node_id: String) {
    loop {
        let Some(b) = broker.upgrade() else { return };
        let mut con = b.publisher.clone();
        let probe: Result<i64, _> = redis::cmd("SPUBLISH")
            .arg(&b.probe_channel)
            .arg(unix_micros())
            .query_async(&mut con)
            .await;
        if probe.is_ok() && b.publish_failed.load(Ordering::Relaxed) {
            let announced: Result<i64, _> = redis::cmd("SPUBLISH")
                .arg(&b.resync_channel)
                .arg(&node_id)
                .query_async(&mut con)
                .await;
            if announced.is_ok() {
                b.publish_failed.store(false, Ordering::Relaxed);
                tracing::info!("Redis Cluster reachable again: asked every node to catch up");
            }
        }
        drop(b);
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

#[async_trait]
impl Broker for RedisClusterBroker {
    fn kind(&self) -> &'static str {
        "redis-cluster"
    }

    async fn publish(&self, group: &GroupName, delivery: Arc<Delivery>) -> Result<(), BrokerError> {
        if self.publish_failed.load(Ordering::Relaxed) {
            return Err(BrokerError::Disconnected(
                "Redis Cluster publishes failing; will resync".into(),
            ));
        }
        let mut con = self.publisher.clone();
        redis::cmd("SPUBLISH")
            .arg(self.channel(group))
            .arg(wire::encode(&delivery))
            .query_async::<i64>(&mut con)
            .await
            .map(|_| ())
            .map_err(|e| {
                self.publish_failed.store(true, Ordering::Relaxed);
                BrokerError::Disconnected(e.to_string())
            })
    }

    async fn subscribe(&self, group: &GroupName) -> Result<(), BrokerError> {
        let mut guard = self.sub.lock().await;
        match guard.as_mut() {
            // Not connected: the reconnect resubscribes every group the hub holds.
            None => Ok(()),
            Some(con) => con
                .ssubscribe(self.channel(group))
                .await
                .map_err(|e| BrokerError::Disconnected(e.to_string())),
        }
    }

    async fn unsubscribe(&self, group: &GroupName) -> Result<(), BrokerError> {
        let mut guard = self.sub.lock().await;
        // Re-checked under the lock: a member may have joined since the leave.
        if self.hub.members(group) > 0 {
            return Ok(());
        }
        match guard.as_mut() {
            None => Ok(()),
            Some(con) => con
                .sunsubscribe(self.channel(group))
                .await
                .map_err(|e| BrokerError::Disconnected(e.to_string())),
        }
    }

    fn health(&self) -> BrokerHealth {
        let fresh = unix_micros().saturating_sub(self.probe_seen.load(Ordering::Relaxed))
            < PROBE_DEADLINE_US;
        if self.connected.load(Ordering::Relaxed) == 1 && fresh {
            BrokerHealth::Up
        } else {
            BrokerHealth::Down
        }
    }

    fn resyncs(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.resyncs.subscribe())
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
