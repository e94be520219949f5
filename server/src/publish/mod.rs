//! Accepting a publish: store it, then hand one serialised frame to the broker.
//!
//! Every publish enters through [`Publisher::notify_combined`], which lets concurrent
//! publishes share one transaction ([`combine`]); [`Publisher::notify`] stores and
//! publishes one such group.
//!
//! Order matters twice here. The store commits *before* the broker sees the frame, so
//! a client can never receive a notification that a later read (resume, listing)
//! would not find. And each user's notifications reach the broker in id order: the
//! insert and the hand-off happen under a per-user lock (striped, so unrelated users
//! rarely share one), so two concurrent publishes to one user cannot overtake each
//! other between commit and publish. Sessions rely on that order. Nodes sharing a
//! PostgreSQL store also take the store's per-user advisory lock around the same
//! steps, so the order holds across the cluster.

use std::sync::Arc;

use herald_shared::api::{GroupEvent, NewNotification};
use herald_shared::frames::{encode_event, encode_notification};
use herald_shared::{GroupName, Notification, UserId};
use serde_json::value::RawValue;
use tokio::sync::Mutex;

mod combine;

use combine::Pending;

use crate::broker::Broker;
use crate::combine::Combiner;
use crate::issued::IssuedIds;
use crate::metrics::{BrokerOp, Metrics, Published};
use crate::outbox::Delivery;
use crate::store::{Store, StoreError};

/// Stripes of the per-user order lock.
const ORDER_STRIPES: usize = 1024;

pub struct Publisher {
    /// Whether other nodes publish to the same users (the node is clustered), so
    /// the order also needs the store's cluster-wide lock.
    clustered: bool,
    store: Arc<dyn Store>,
    broker: Arc<dyn Broker>,
    metrics: Arc<Metrics>,
    order: Box<[Mutex<()>]>,
    hasher: std::hash::RandomState,
    combiner: Arc<Combiner<Pending>>,
    /// The newest id the store is known to have issued: raised by every insert
    /// through this node, so a client resuming from an id this node stored, or a
    /// notification of this node's coming back from Redis, costs no query.
    pub issued: Arc<IssuedIds>,
}

impl Publisher {
    pub fn new(
        clustered: bool,
        store: Arc<dyn Store>,
        broker: Arc<dyn Broker>,
        metrics: Arc<Metrics>,
        issued: Arc<IssuedIds>,
    ) -> Self {
        // SQLite has one writer: one group at a time. PostgreSQL's pool takes several,
        // but client writes and reads need connections too.
        let flushers = (store.write_slots() / 4).clamp(1, 4);
        Self {
            combiner: Arc::new(Combiner::new(flushers)),
            clustered,
            store,
            broker,
            metrics,
            order: (0..ORDER_STRIPES).map(|_| Mutex::new(())).collect(),
            hasher: std::hash::RandomState::new(),
            issued,
        }
    }

    fn stripe(&self, user: &UserId) -> usize {
        use std::hash::BuildHasher;
        self.hasher.hash_one(user.as_str()) as usize % ORDER_STRIPES
    }

    /// Stores `items` in one transaction and publishes each to its user's group: one
    /// group of [`Self::notify_combined`], whose task is the only caller.
    ///
    /// Returns once every frame is with the broker. A broker failure after the commit
    /// is logged and counted, not returned: the notification is stored, and clients
    /// get it from the store when they resume.
    async fn notify(&self, items: &[NewNotification]) -> Result<Vec<Notification>, StoreError> {
        let mut stripes: Vec<usize> = items.iter().map(|i| self.stripe(&i.user)).collect();
        stripes.sort_unstable();
        stripes.dedup();
        // Ascending acquisition order: no two publishers can deadlock.
        let mut guards = Vec::with_capacity(stripes.len());
        for s in stripes {
            guards.push(self.order[s].lock().await);
        }

        // Across nodes (a shared PostgreSQL), the same order needs a lock every node
        // sees: the store's per-user advisory lock, held until the broker has it.
        let users: Vec<&UserId> = items.iter().map(|i| &i.user).collect();
        let mut cluster_lock = if self.clustered {
            self.store.order_lock(&users).await?
        } else {
            None
        };

        let stored = match cluster_lock.as_mut() {
            Some(lock) => lock.insert(items).await?,
            None => self.store.insert(items).await?,
        };
        if let Some(newest) = stored.iter().map(|n| n.id).max() {
            self.issued.raise(newest);
        }

        let frames: Vec<(GroupName, Arc<Delivery>)> = stored
            .iter()
            .zip(items)
            .map(|(n, item)| {
                let delivery = Delivery::notification(encode_notification(n), n.id, &item.user);
                (item.user.group(), delivery)
            })
            .collect();
        if let Err((i, e)) = self.broker.publish_all(&frames).await {
            self.count_publish_error();
            tracing::warn!(error = %e, id = stored[i].id, count = stored.len(), "stored notifications not all published; clients will resume them");
        }
        self.metrics
            .published
            .get(Published::Notification)
            .inc_by(stored.len() as u64);
        if let Some(lock) = cluster_lock {
            lock.release().await;
        }
        drop(guards);
        Ok(stored)
    }

    /// Publishes each event to its group, in order, and names the index of an event
    /// the broker refused; a single Redis takes them in one pipeline
    /// ([`Broker::publish_all`]), so after a refusal others may have gone out.
    pub async fn events(
        &self,
        events: &[GroupEvent],
    ) -> Result<(), (usize, crate::broker::BrokerError)> {
        let frames: Vec<(GroupName, Arc<Delivery>)> = events
            .iter()
            .map(|e| (e.group.clone(), event_delivery(&e.group, &e.payload)))
            .collect();
        self.publish_events(&frames).await
    }

    /// Publishes an ephemeral event to every member of `group`, on every node.
    pub async fn event(
        &self,
        group: &GroupName,
        payload: &RawValue,
    ) -> Result<(), crate::broker::BrokerError> {
        let frames = [(group.clone(), event_delivery(group, payload))];
        self.publish_events(&frames).await.map_err(|(_, e)| e)
    }

    /// The fan-out of [`Self::event`] and [`Self::events`], counted once.
    async fn publish_events(
        &self,
        frames: &[(GroupName, Arc<Delivery>)],
    ) -> Result<(), (usize, crate::broker::BrokerError)> {
        self.broker
            .publish_all(frames)
            .await
            .inspect_err(|_| self.count_publish_error())?;
        self.metrics
            .published
            .get(Published::Event)
            .inc_by(frames.len() as u64);
        Ok(())
    }

    fn count_publish_error(&self) {
        self.metrics.broker_errors.get(BrokerOp::Publish).inc();
    }
}

fn event_delivery(group: &GroupName, payload: &RawValue) -> Arc<Delivery> {
    Delivery::event(encode_event(group.as_str(), payload))
}
