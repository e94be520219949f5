//! The cluster broker: Redis pub/sub with interest-based routing.
//!
//! Each group is one channel, `<prefix>:g:<group>`. A node subscribes to a group's
//! channel when the group gets its first local member and unsubscribes after the
//! last one leaves, so a publish costs one PUBLISH whatever the cluster size, and
//! reaches only the nodes that have members. With Django interop on, the node also
//! subscribes to `<asgi prefix>__group__<group>`, where channels_redis's pub/sub
//! layer publishes `group_send` (see [`super::channels`]).
//!
//! One task owns the subscriber connection. When it drops, the task reconnects with
//! backoff, resubscribes everything the hub holds, and announces a *resync*: every
//! session then fetches from the store what was published while the subscription
//! was down, so nothing stored is lost. Health is end to end: the node publishes to
//! its own probe channel every second and is `up` only while the probe comes back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use herald_shared::GroupName;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink};
use tokio::sync::Mutex;

use super::{Broker, BrokerError, BrokerHealth, channels, wire};
use crate::hub::Hub;
use crate::outbox::{Delivery, unix_micros};

/// How long the probe may go unanswered before the broker reports `down`.
const PROBE_DEADLINE_US: u64 = 3_000_000;
const PROBE_EVERY: Duration = Duration::from_secs(1);

pub struct RedisBroker {
    client: redis::Client,
    publisher: ConnectionManager,
    prefix: String,
    /// channels_redis prefix for Django interop (`asgi`), if enabled.
    asgi_prefix: Option<String>,
    hub: Arc<Hub>,
    /// The live subscriber's command half; `None` while reconnecting. The mutex also
    /// serialises subscribe against unsubscribe, so a leave racing a join can never
    /// unsubscribe a group that has a member again.
    sink: Mutex<Option<PubSubSink>>,
    connected: AtomicU8,
    /// When the probe last came back (Unix µs).
    probe_seen: AtomicU64,
    probe_channel: String,
    /// Bumped on every resubscription after a loss, and whenever any node announces
    /// on `<prefix>:resync` that its publishes failed; sessions catch up when it moves.
    resyncs: tokio::sync::watch::Sender<u64>,
    resync_channel: String,
    /// A publish failed: until the prober gets through again, publishes fail fast
    /// (the notification is stored; nothing waits on a dead Redis), and once it does
    /// the node announces a cluster-wide resync so every node's sessions catch up.
    publish_failed: AtomicBool,
}

impl RedisBroker {
    /// Connects (retrying while Redis is unreachable) and starts the subscriber and
    /// probe tasks.
    pub async fn connect(
        url: &str,
        prefix: &str,
        asgi_prefix: Option<String>,
        node_id: &str,
        hub: Arc<Hub>,
    ) -> Result<Arc<Self>, BrokerError> {
        let client = redis::Client::open(url).map_err(|e| BrokerError::Config(e.to_string()))?;
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_max_delay(Duration::from_secs(2));
        let mut delay = Duration::from_millis(200);
        let publisher = loop {
            match ConnectionManager::new_with_config(client.clone(), cfg.clone()).await {
                Ok(c) => break c,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?delay, "Redis unreachable at start-up; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        };
        let broker = Arc::new(Self {
            client,
            publisher,
            prefix: prefix.to_owned(),
            asgi_prefix,
            hub,
            sink: Mutex::new(None),
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
    pub fn connection(&self) -> ConnectionManager {
        self.publisher.clone()
    }

    fn channel(&self, group: &GroupName) -> String {
        format!("{}:g:{}", self.prefix, group)
    }

    /// Every channel a group maps to.
    fn channels(&self, group: &GroupName) -> Vec<String> {
        let mut v = vec![self.channel(group)];
        if let Some(asgi) = &self.asgi_prefix {
            v.push(channels::group_channel(asgi, group));
        }
        v
    }

    /// Routes one message from the subscriber to the hub.
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
        let own = channel
            .strip_prefix(self.prefix.as_str())
            .and_then(|c| c.strip_prefix(":g:"));
        let (group, delivery) = if let Some(g) = own {
            (GroupName::parse(g).ok(), wire::decode(payload))
        } else if let Some(asgi) = &self.asgi_prefix {
            match channels::decode(asgi, channel, payload) {
                Some((g, d)) => (Some(g), Some(d)),
                None => (None, None),
            }
        } else {
            (None, None)
        };
        match (group, delivery) {
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

/// Owns the subscriber connection: connect, resubscribe, read, and on loss again.
async fn subscriber(broker: std::sync::Weak<RedisBroker>) {
    let mut delay = Duration::from_millis(100);
    let mut first = true;
    loop {
        let Some(b) = broker.upgrade() else { return };
        let pubsub = match b.client.get_async_pubsub().await {
            Ok(p) => p,
            Err(e) => {
                b.set_connected(false);
                drop(b);
                tracing::warn!(error = %e, retry_in = ?delay, "Redis subscriber unreachable");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let (sink, mut stream) = pubsub.split();
        {
            // Install the sink first: a group that gains its first member from now
            // on subscribes itself; the ones before are in the snapshot below.
            let mut guard = b.sink.lock().await;
            *guard = Some(sink);
            let sink = guard.as_mut().expect("just set");
            let mut channels = vec![b.probe_channel.clone(), b.resync_channel.clone()];
            for g in b.hub.groups() {
                channels.extend(b.channels(&g));
            }
            if let Err(e) = sink.subscribe(&channels).await {
                tracing::warn!(error = %e, "resubscribe failed; reconnecting");
                *guard = None;
                continue;
            }
            tracing::info!(channels = channels.len(), "Redis subscriber connected");
        }
        b.set_connected(true);
        delay = Duration::from_millis(100);
        if !first || b.hub.connections() > 0 {
            // Whatever was published while we were away (or, at start-up, before the
            // first subscription took) is in the store: sessions catch up.
            b.resyncs.send_modify(|n| *n += 1);
        }
        first = false;
        let weak = Arc::downgrade(&b);
        drop(b);
        while let Some(msg) = stream.next().await {
            let Some(b) = weak.upgrade() else { return };
            b.dispatch(msg.get_channel_name(), msg.get_payload_bytes());
        }
        let Some(b) = broker.upgrade() else { return };
        b.set_connected(false);
        *b.sink.lock().await = None;
        tracing::warn!("Redis subscriber connection lost; reconnecting");
    }
}

/// Publishes to the node's own probe channel every second; once publishing works
/// again after failures, announces a cluster-wide resync.
async fn prober(broker: std::sync::Weak<RedisBroker>, node_id: String) {
    loop {
        let Some(b) = broker.upgrade() else { return };
        let mut con = b.publisher.clone();
        let probe: Result<i64, _> = redis::cmd("PUBLISH")
            .arg(&b.probe_channel)
            .arg(unix_micros())
            .query_async(&mut con)
            .await;
        if probe.is_ok() && b.publish_failed.load(Ordering::Relaxed) {
            let announced: Result<i64, _> = redis::cmd("PUBLISH")
                .arg(&b.resync_channel)
                .arg(&node_id)
                .query_async(&mut con)
                .await;
            if announced.is_ok() {
                b.publish_failed.store(false, Ordering::Relaxed);
                tracing::info!("Redis reachable again: asked every node to catch up");
            }
        }
        drop(b);
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

#[async_trait]
impl Broker for RedisBroker {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn publish(&self, group: &GroupName, delivery: Arc<Delivery>) -> Result<(), BrokerError> {
        if self.publish_failed.load(Ordering::Relaxed) {
            return Err(BrokerError::Disconnected(
                "Redis publishes failing; will resync".into(),
            ));
        }
        let mut con = self.publisher.clone();
        redis::cmd("PUBLISH")
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
        let mut guard = self.sink.lock().await;
        match guard.as_mut() {
            // Not connected: the reconnect resubscribes every group the hub holds.
            None => Ok(()),
            Some(sink) => sink
                .subscribe(self.channels(group))
                .await
                .map_err(|e| BrokerError::Disconnected(e.to_string())),
        }
    }

    async fn unsubscribe(&self, group: &GroupName) -> Result<(), BrokerError> {
        let mut guard = self.sink.lock().await;
        // Re-checked under the lock: a member may have joined since the leave.
        if self.hub.members(group) > 0 {
            return Ok(());
        }
        match guard.as_mut() {
            None => Ok(()),
            Some(sink) => sink
                .unsubscribe(self.channels(group))
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
