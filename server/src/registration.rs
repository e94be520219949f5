//! A connection's place in the hub ([`Registration`]), from before its WebSocket
//! upgrade or SSE response until its session ends: registered (capacity), counted
//! (presence, metrics), and a member of its groups, subscribed at the broker.

use std::sync::Arc;

use herald_shared::{GroupName, UserId};

use crate::auth::Identity;
use crate::hub::Full;
use crate::node::Node;
use crate::outbox::Outbox;

/// A connection's place in the hub, from before the upgrade until its session ends.
///
/// Dropping it (session over, or upgrade never completed) leaves every group and
/// the registry, so no path can leak a member.
pub struct Registration {
    node: Arc<Node>,
    user: UserId,
    /// Whether the opening frames went out (for the connections-by-state gauge).
    open: bool,
    pub outbox: Arc<Outbox>,
    pub groups: Vec<GroupName>,
}

impl Registration {
    /// Registers a connection of `ident`'s user and joins its personal group; `Err`
    /// when the node, or the user's share of it, is full.
    pub(crate) async fn new(node: &Arc<Node>, ident: &Identity) -> Result<Self, Full> {
        let outbox = Outbox::new(
            node.config.queue_capacity,
            node.config.queue_expiry(),
            node.metrics.clone(),
        );
        node.hub.register(
            outbox.clone(),
            &ident.user,
            node.capacity(),
            node.config.max_connections_per_user as usize,
        )?;
        node.metrics.connections.inc();
        node.metrics.connections_opening.inc();
        node.presence.changed(&ident.user, 1);
        let mut reg = Self {
            node: node.clone(),
            user: ident.user.clone(),
            open: false,
            outbox,
            // Room for the personal group alone: most connections join no other,
            // and a vector's first push would reserve four.
            groups: Vec::with_capacity(1),
        };
        // A failed subscribe is logged, not fatal: the store still has everything,
        // and the broker resubscribes what the hub holds when it reconnects.
        let _ = reg.join(ident.user.group()).await;
        Ok(reg)
    }

    /// Marks the connection open: its opening frames are sent.
    pub fn opened(&mut self) {
        if !self.open {
            self.open = true;
            self.node.metrics.connections_opening.dec();
            self.node.metrics.connections_open.inc();
        }
    }

    /// Joins `group`, subscribing at the broker for the first local member.
    ///
    /// Guarantee: once this returns `Ok`, every message published on `group` from
    /// then on reaches this connection, whether it is the group's first local member
    /// or not. The first member waits for the broker to confirm its subscription
    /// ([`Broker::subscribe`]); any later member waits until that subscription is
    /// confirmed too ([`Broker::settled`]), so a member that joins while the first
    /// one's SUBSCRIBE is still in flight cannot be sent its `initial_state` (or
    /// `subscribed`) before it can hear the group. A broker that is disconnected
    /// lets both return at once: its reconnect resubscribes every group the hub
    /// holds and announces a resync, and the session catches up from the store.
    /// On `Err` the connection is a member all the same (and stays one), but
    /// messages may miss it until the broker's next resync.
    ///
    /// [`Broker::subscribe`]: crate::broker::Broker::subscribe
    /// [`Broker::settled`]: crate::broker::Broker::settled
    pub async fn join(&mut self, group: GroupName) -> Result<(), crate::broker::BrokerError> {
        if self.groups.contains(&group) {
            return Ok(());
        }
        let first = self.node.hub.join(&group, &self.outbox);
        self.groups.push(group.clone());
        let broker = &self.node.broker;
        let confirmed = if first {
            broker.subscribe(&group).await
        } else {
            broker.settled(&group).await
        };
        if let Err(e) = confirmed {
            tracing::warn!(%group, error = %e, "subscribe failed");
            return Err(e);
        }
        Ok(())
    }

    /// Leaves `group` (never the personal group, which the caller guards).
    pub fn leave(&mut self, group: &GroupName) {
        if let Some(pos) = self.groups.iter().position(|g| g == group) {
            self.groups.swap_remove(pos);
            if self.node.hub.leave(group, self.outbox.id) {
                self.node.unsubscribe_later(group.clone());
            }
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        for g in std::mem::take(&mut self.groups) {
            if self.node.hub.leave(&g, self.outbox.id) {
                self.node.unsubscribe_later(g);
            }
        }
        self.node.hub.unregister(self.outbox.id, &self.user);
        self.node.presence.changed(&self.user, -1);
        self.node.metrics.connections.dec();
        if self.open {
            self.node.metrics.connections_open.dec();
        } else {
            self.node.metrics.connections_opening.dec();
        }
    }
}
