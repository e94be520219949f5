//! The transport for a single Redis: PUBLISH, and SUBSCRIBE on one subscriber
//! connection.
//!
//! Routing, health and resyncs are the shared pub/sub broker's ([`super::pubsub`]);
//! this file connects, publishes and (un)subscribes. With Django interop on, a group
//! also maps to `<asgi prefix>__group__<group>`, where channels_redis's pub/sub
//! layer publishes `group_send` (see [`super::channels`]).
//!
//! The subscriber is one RESP2 pub/sub connection, split into its command half (the
//! sink) and its message stream (the inbox); the shared subscriber loop
//! ([`pubsub`]) reconnects it, resubscribes and resyncs when it drops. A batch of
//! channels is one SUBSCRIBE or UNSUBSCRIBE.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink};
use redis::{AsyncConnectionConfig, Msg};

use super::BrokerError;
use super::pubsub::{self, Inbox, Message, NodeSide, PubSubCore, Received, Transport};
use crate::redis_client::RedisTls;
use crate::tasks::Tasks;

pub struct RedisBroker {
    client: redis::Client,
    publisher: ConnectionManager,
    core: PubSubCore<PubSubSink>,
}

impl RedisBroker {
    /// Connects (retrying while Redis is unreachable) and starts the subscriber,
    /// unsubscriber and probe tasks on `tasks`.
    pub async fn connect(
        url: &str,
        tls: &RedisTls,
        node: NodeSide,
        asgi_prefix: Option<String>,
        tasks: Tasks,
    ) -> Result<Arc<Self>, BrokerError> {
        let client = tls
            .client(url)
            .map_err(|e| BrokerError::Config(e.to_string()))?;
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_max_delay(Duration::from_secs(2));
        // A plain connection first, bounded by `connect_retrying` alone: the manager
        // retries a failed connect by itself, in silence, so a refused or silent
        // Redis would show only as a timeout, and late.
        let plain = AsyncConnectionConfig::new().set_connection_timeout(None);
        let tls_to = crate::redis_client::tls_addr(&client);
        let publisher = pubsub::connect_retrying("Redis", tls_to, || async {
            client
                .get_multiplexed_async_connection_with_config(&plain)
                .await?;
            ConnectionManager::new_with_config(client.clone(), cfg.clone()).await
        })
        .await
        .map_err(BrokerError::Config)?;
        let node_id = node.node_id.clone();
        let broker = Arc::new(Self {
            client,
            publisher,
            core: PubSubCore::new(node, asgi_prefix),
        });
        pubsub::start(&broker, &tasks, &node_id);
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
    type Message = Msg;
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

    async fn open(&self) -> redis::RedisResult<(PubSubSink, Inbox<Msg>)> {
        let (sink, stream) = self.client.get_async_pubsub().await?.split();
        Ok((sink, stream.map(Received::Message).boxed()))
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

impl Message for Msg {
    fn channel(&self) -> &str {
        self.get_channel_name()
    }

    fn payload(&self) -> &[u8] {
        self.get_payload_bytes()
    }
}
