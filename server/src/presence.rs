//! Presence: how many connections a user has, across the cluster.
//!
//! Single node: the hub's own count ([`LocalPresence`]). Cluster: a count per node in
//! Redis, summed over the live nodes ([`crate::cluster::presence`]).

use std::sync::Arc;

use async_trait::async_trait;
use herald_shared::UserId;

use crate::hub::Hub;

#[derive(Debug, thiserror::Error)]
#[error("presence unavailable: {0}")]
pub struct PresenceError(pub String);

#[async_trait]
pub trait Presence: Send + Sync + 'static {
    /// A connection of `user` opened (+1) or closed (-1) on this node.
    fn changed(&self, user: &UserId, delta: i64);

    /// The user's open connections across the cluster.
    async fn connections(&self, user: &UserId) -> Result<u64, PresenceError>;
}

/// Presence on a single node: the hub's count.
pub struct LocalPresence {
    pub hub: Arc<Hub>,
}

#[async_trait]
impl Presence for LocalPresence {
    fn changed(&self, _user: &UserId, _delta: i64) {}

    async fn connections(&self, user: &UserId) -> Result<u64, PresenceError> {
        Ok(self.hub.user_connections(user) as u64)
    }
}
