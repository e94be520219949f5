//! The transport for a single Redis: PUBLISH, and SUBSCRIBE on one subscriber
//! connection.
//!
//! Routing, health and resyncs are the shared pub/sub broker's ([`super::pubsub`]);
//! this file connects, publishes and (un)subscribes. With Django interop on, a group
//! also maps to `<asgi prefix>__group__<group>`, where channels_redis's pub/sub
//! layer publishes `group_send` (see [`super::channels`]).
//!
//! One task owns the subscriber connection. When it drops, the task reconnects with
//! backoff, resubscribes everything the hub holds, and announces a *resync*: every
//! session then fetches from the store what was published while the subscription
//! was down, so nothing stored is lost.

use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink};

use super::BrokerError;
use super::pubsub::{self, Backoff, PubSubCore, Transport};
use crate::hub::Hub;

pub struct RedisBroker {
    client: redis::Client,
    publisher: ConnectionManager,
    core: PubSubCore<PubSubSink>,
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
        let publisher = pubsub::connect_retrying("Redis", || {
            ConnectionManager::new_with_config(client.clone(), cfg.clone())
        })
        .await;
        let broker = Arc::new(Self {
            client,
            publisher,
            core: PubSubCore::new(hub, prefix, asgi_prefix, node_id),
        });
        tokio::spawn(subscriber(Arc::downgrade(&broker)));
        tokio::spawn(pubsub::prober(Arc::downgrade(&broker), node_id.to_owned()));
        Ok(broker)
    }

    /// The publishing connection, for other Redis commands (registry, presence).
    pub fn connection(&self) -> ConnectionManager {
        self.publisher.clone()
    }
}

#[async_trait]
impl Transport for RedisBroker {
    type Publisher = ConnectionManager;
    type Sink = PubSubSink;
    const KIND: &'static str = "redis";
    const NAME: &'static str = "Redis";
    const PUBLISH: &'static str = "PUBLISH";
    const PIPELINE: bool = true;

    fn core(&self) -> &PubSubCore<PubSubSink> {
        &self.core
    }

    fn publisher(&self) -> &ConnectionManager {
        &self.publisher
    }

    async fn listen(&self, sink: &mut PubSubSink, channels: Vec<String>) -> redis::RedisResult<()> {
        sink.subscribe(channels).await
    }

    async fn unlisten(
        &self,
        sink: &mut PubSubSink,
        channels: Vec<String>,
    ) -> redis::RedisResult<()> {
        sink.unsubscribe(channels).await
    }
}

/// Owns the subscriber connection: connect, resubscribe, read, and on loss again.
async fn subscriber(broker: Weak<RedisBroker>) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut first = true;
    loop {
        let Some(b) = broker.upgrade() else { return };
        let pubsub = match b.client.get_async_pubsub().await {
            Ok(p) => p,
            Err(e) => {
                b.core.set_connected(false);
                drop(b);
                tracing::warn!(error = %e, retry_in = ?backoff.delay(), "Redis subscriber unreachable");
                backoff.sleep().await;
                continue;
            }
        };
        let (sink, mut stream) = pubsub.split();
        match pubsub::install(&*b, sink).await {
            Ok(n) => tracing::info!(channels = n, "Redis subscriber connected"),
            Err(e) => {
                tracing::warn!(error = %e, "resubscribe failed; reconnecting");
                continue;
            }
        }
        backoff.reset();
        b.core.up(first);
        first = false;
        let weak = Arc::downgrade(&b);
        drop(b);
        while let Some(msg) = stream.next().await {
            let Some(b) = weak.upgrade() else { return };
            b.core
                .dispatch(msg.get_channel_name(), msg.get_payload_bytes());
        }
        let Some(b) = broker.upgrade() else { return };
        b.core.lost().await;
        tracing::warn!("Redis subscriber connection lost; reconnecting");
    }
}
