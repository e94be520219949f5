//! The single-node broker: a publish is a direct hand-off to this node's hub.
//!
//! There is no other node to reach, so subscriptions need no bookkeeping: the hub
//! already knows which local connections are in which group.

use std::sync::Arc;

use async_trait::async_trait;
use herald_shared::GroupName;

use super::{Broker, BrokerError, BrokerHealth};
use crate::hub::Hub;
use crate::outbox::Delivery;

pub struct MemoryBroker {
    hub: Arc<Hub>,
}

impl MemoryBroker {
    pub fn new(hub: Arc<Hub>) -> Self {
        Self { hub }
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn publish(&self, group: &GroupName, delivery: Arc<Delivery>) -> Result<(), BrokerError> {
        self.hub.deliver(group, &delivery);
        Ok(())
    }

    async fn subscribe(&self, _group: &GroupName) -> Result<(), BrokerError> {
        Ok(())
    }

    fn unsubscribe(&self, _group: GroupName) {}

    fn health(&self) -> BrokerHealth {
        BrokerHealth::Off
    }
}
