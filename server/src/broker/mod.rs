//! Carries published frames to every node whose connections want them.
//!
//! [`Broker`] is the seam between "a publish was accepted here" and "the hubs of the
//! nodes with members of that group deliver it". The in-process [`MemoryBroker`]
//! serves a single node; the Redis brokers (cluster mode: [`RedisBroker`] on one
//! Redis, [`RedisClusterBroker`] with sharded pub/sub on a Redis Cluster) implement
//! the same trait with interest-based routing: a node subscribes to a group when its first local
//! member joins and unsubscribes after the last one leaves, which is exactly what
//! [`crate::hub::Hub::join`] and [`crate::hub::Hub::leave`] report. Both Redis
//! brokers are the one pub/sub broker of `broker/pubsub.rs` over their own transport.
//!
//! A broker carries copies only; the store holds the truth, so a broker that loses
//! a message costs a catch-up from the store, never the notification.

pub mod channels;
mod memory;
mod pubsub;
pub use pubsub::NodeSide;
mod redis;
mod redis_cluster;
mod signing;
mod trust;
pub mod wire;

use std::sync::Arc;

use async_trait::async_trait;
use herald_shared::GroupName;

pub use memory::MemoryBroker;
pub use redis::RedisBroker;
pub use redis_cluster::{RedisClusterBroker, cluster_seeds};
pub use signing::BrokerKey;
pub use trust::Trust;

use crate::outbox::Delivery;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The broker cannot be reached right now; the caller may retry.
    #[error("broker disconnected: {0}")]
    Disconnected(String),
    /// The broker's configuration is unusable (a bad URL).
    #[error("broker configuration: {0}")]
    Config(String),
}

/// Health as `/admin/status` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerHealth {
    /// No external broker (single node).
    Off,
    Up,
    Down,
}

impl BrokerHealth {
    pub fn as_str(self) -> &'static str {
        match self {
            BrokerHealth::Off => "off",
            BrokerHealth::Up => "up",
            BrokerHealth::Down => "down",
        }
    }
}

#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// `"memory"`, `"redis"` or `"redis-cluster"`.
    fn kind(&self) -> &'static str;

    /// Sends `delivery` to every node with local members of `group`, this one included.
    async fn publish(&self, group: &GroupName, delivery: Arc<Delivery>) -> Result<(), BrokerError>;

    /// Publishes each delivery to its group, in order, as if one after another;
    /// on failure names the index of the refused one (others may have gone out). A
    /// broker that can ship them together, a single Redis in one pipeline, does:
    /// one round trip for a whole batch instead of one per item.
    async fn publish_all(
        &self,
        items: &[(GroupName, Arc<Delivery>)],
    ) -> Result<(), (usize, BrokerError)> {
        publish_in_turn(self, items).await
    }

    /// Called when `group` gets its first local member; returns once the broker
    /// delivers `group`'s messages to this node (or is disconnected: its reconnect
    /// then resubscribes and announces a resync).
    async fn subscribe(&self, group: &GroupName) -> Result<(), BrokerError>;

    /// Called when `group` gets a later local member: returns, like [`subscribe`],
    /// only once the broker delivers `group`'s messages to this node, so a member
    /// that joins while the first member's subscription is still in flight waits
    /// for it. Cheap when the subscription is already confirmed (no round trip).
    ///
    /// [`subscribe`]: Broker::subscribe
    async fn settled(&self, _group: &GroupName) -> Result<(), BrokerError> {
        Ok(())
    }

    /// Called after `group` lost its last local member; returns at once. The broker
    /// drops its subscription in the background, together with the other groups
    /// left meanwhile, unless `group` has a local member again by then.
    fn unsubscribe(&self, group: GroupName);

    fn health(&self) -> BrokerHealth;

    /// Ticks each time the broker came back after losing messages: sessions then
    /// catch up from the store. `None` for a broker that cannot lose any.
    fn resyncs(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}

/// [`Broker::publish_all`] one publish after another.
pub async fn publish_in_turn<B: Broker + ?Sized>(
    broker: &B,
    items: &[(GroupName, Arc<Delivery>)],
) -> Result<(), (usize, BrokerError)> {
    for (i, (group, delivery)) in items.iter().enumerate() {
        broker
            .publish(group, delivery.clone())
            .await
            .map_err(|e| (i, e))?;
    }
    Ok(())
}
