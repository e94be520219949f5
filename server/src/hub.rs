//! Routes each delivered frame to this node's connections; owns the group index and
//! the registry of open connections, never the sockets.
//!
//! The index is sharded by group name so that joins, leaves and deliveries to
//! unrelated groups do not contend. A delivery holds one shard's lock while it pushes
//! the same `Arc<Delivery>` into each member's [`Outbox`]: pushes never wait, so the
//! lock is held for microseconds even for a broadcast to thousands of connections.
//! A panic while a shard or the registry is locked does not poison it for every
//! later delivery or connect ([`crate::lock`]).
//! Whether the node must (un)subscribe at the broker is the caller's business: `join`
//! and `leave` report the first and last local member.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};

use herald_shared::{GroupName, UserId};
use tokio::sync::Notify;

use crate::lock::lock;
use crate::outbox::{Delivery, Outbox, Push};

const SHARDS: usize = 64;

/// Groups at least this large keep an index from connection id to position, so
/// joining and leaving stay O(1) for a broadcast group of every connection (a
/// linear scan made 20,000 joins or leaves cost 200 million comparisons). Smaller
/// groups (a user's own, almost always one member) stay a bare vector.
const INDEXED: usize = 32;

/// The local connections of one group, in a vector for fast fan-out.
struct Members {
    list: Vec<Arc<Outbox>>,
    /// Connection id to position in `list`, once the group reaches [`INDEXED`].
    /// Boxed: every group has a `Members` in its shard's table, almost all of them
    /// without an index, and a slot is as large as its largest value.
    #[expect(
        clippy::box_collection,
        reason = "one pointer in every group's slot instead of an empty map's 48 bytes"
    )]
    index: Option<Box<HashMap<u64, usize>>>,
}

impl Default for Members {
    /// Room for one member: most groups are a user's own with one connection, and a
    /// vector's first push would reserve four.
    fn default() -> Self {
        Self {
            list: Vec::with_capacity(1),
            index: None,
        }
    }
}

impl Members {
    fn position(&self, id: u64) -> Option<usize> {
        match &self.index {
            Some(index) => index.get(&id).copied(),
            None => self.list.iter().position(|m| m.id == id),
        }
    }

    /// Adds `outbox` unless it is a member already; true if it was added.
    fn insert(&mut self, outbox: &Arc<Outbox>) -> bool {
        if self.position(outbox.id).is_some() {
            return false;
        }
        self.list.push(outbox.clone());
        if let Some(index) = &mut self.index {
            index.insert(outbox.id, self.list.len() - 1);
        } else if self.list.len() >= INDEXED {
            self.index = Some(Box::new(
                self.list
                    .iter()
                    .enumerate()
                    .map(|(i, m)| (m.id, i))
                    .collect(),
            ));
        }
        true
    }

    /// Removes connection `id`; true if it was a member.
    fn remove(&mut self, id: u64) -> bool {
        let Some(pos) = self.position(id) else {
            return false;
        };
        self.list.swap_remove(pos);
        if let Some(index) = &mut self.index {
            index.remove(&id);
            if let Some(moved) = self.list.get(pos) {
                index.insert(moved.id, pos);
            }
        }
        true
    }
}

pub struct Hub {
    hasher: RandomState,
    shards: Box<[Mutex<HashMap<GroupName, Members>>]>,
    registry: Mutex<Registry>,
    /// Woken when the last open connection unregisters: a drain waits for it.
    emptied: Notify,
}

/// Every open connection (including those still in their handshake), for capacity,
/// drain and shutdown, and the count per user, for presence. Presence counts the
/// user's own connections, not everyone subscribed to its `user_<id>` group.
#[derive(Default)]
struct Registry {
    conns: HashMap<u64, Arc<Outbox>>,
    users: HashMap<UserId, u32>,
}

/// Why a connection was not registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// The node holds as many connections as it can.
    Node,
    /// The user holds as many connections on this node as one user may.
    User,
}

/// What a delivery reached.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reach {
    pub queued: usize,
    pub overflowed: usize,
}

impl Hub {
    pub fn new() -> Self {
        Self {
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            registry: Mutex::new(Registry::default()),
            emptied: Notify::new(),
        }
    }

    fn shard(&self, group: &GroupName) -> &Mutex<HashMap<GroupName, Members>> {
        let h = self.hasher.hash_one(group.as_str()) as usize;
        &self.shards[h % SHARDS]
    }

    /// Adds `user`'s connection to the registry unless `capacity` connections are
    /// open already, or `per_user` of this user's (checked and added under one lock,
    /// so bursts cannot overshoot either).
    pub fn register(
        &self,
        outbox: Arc<Outbox>,
        user: &UserId,
        capacity: usize,
        per_user: usize,
    ) -> Result<(), Full> {
        let mut r = lock(&self.registry);
        if r.conns.len() >= capacity {
            return Err(Full::Node);
        }
        if r.users.get(user).is_some_and(|n| *n as usize >= per_user) {
            return Err(Full::User);
        }
        r.conns.insert(outbox.id, outbox);
        *r.users.entry(user.clone()).or_default() += 1;
        Ok(())
    }

    pub fn unregister(&self, id: u64, user: &UserId) {
        let mut r = lock(&self.registry);
        if r.conns.remove(&id).is_some()
            && let Some(n) = r.users.get_mut(user)
        {
            *n -= 1;
            if *n == 0 {
                r.users.remove(user);
            }
        }
        if r.conns.is_empty() {
            self.emptied.notify_waiters();
        }
    }

    /// Resolves once no connection is open (at once if none is).
    pub async fn until_empty(&self) {
        loop {
            let emptied = self.emptied.notified();
            tokio::pin!(emptied);
            // Listening before looking: an unregister between the two still wakes us.
            emptied.as_mut().enable();
            if self.connections() == 0 {
                return;
            }
            emptied.await;
        }
    }

    /// Open connections on this node.
    pub fn connections(&self) -> usize {
        lock(&self.registry).conns.len()
    }

    /// Open connections of `user` on this node.
    pub fn user_connections(&self, user: &UserId) -> usize {
        let r = lock(&self.registry);
        r.users.get(user).map_or(0, |n| *n as usize)
    }

    /// Users with an open connection on this node (presence's check of its hash).
    pub fn users(&self) -> usize {
        lock(&self.registry).users.len()
    }

    /// Open connections per user on this node (presence's full sync).
    pub fn user_counts(&self) -> Vec<(UserId, u32)> {
        let r = lock(&self.registry);
        r.users.iter().map(|(u, n)| (u.clone(), *n)).collect()
    }

    /// A snapshot of every open connection's outbox.
    pub fn all(&self) -> Vec<Arc<Outbox>> {
        let r = lock(&self.registry);
        r.conns.values().cloned().collect()
    }

    /// Adds `outbox` to `group`; true when it is the group's first local member.
    pub fn join(&self, group: &GroupName, outbox: &Arc<Outbox>) -> bool {
        let mut shard = lock(self.shard(group));
        let members = shard.entry(group.clone()).or_default();
        members.insert(outbox) && members.list.len() == 1
    }

    /// Removes connection `id` from `group`; true when it was the last local member.
    pub fn leave(&self, group: &GroupName, id: u64) -> bool {
        let mut shard = lock(self.shard(group));
        let Some(members) = shard.get_mut(group) else {
            return false;
        };
        if !members.remove(id) {
            return false;
        }
        if members.list.is_empty() {
            shard.remove(group);
            true
        } else {
            false
        }
    }

    /// Local members of `group`.
    pub fn members(&self, group: &GroupName) -> usize {
        lock(self.shard(group))
            .get(group)
            .map_or(0, |m| m.list.len())
    }

    /// Groups with at least one local member (what a broker must be subscribed to).
    pub fn groups(&self) -> Vec<GroupName> {
        self.shards
            .iter()
            .flat_map(|s| lock(s).keys().cloned().collect::<Vec<_>>())
            .collect()
    }

    /// Queues `delivery` for every local member of `group`.
    pub fn deliver(&self, group: &GroupName, delivery: &Arc<Delivery>) -> Reach {
        let shard = lock(self.shard(group));
        let mut reach = Reach::default();
        if let Some(members) = shard.get(group) {
            for m in &members.list {
                match m.push(delivery.clone()) {
                    Push::Queued => reach.queued += 1,
                    Push::Overflowed => reach.overflowed += 1,
                    Push::Closed => {}
                }
            }
        }
        reach
    }
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::metrics::Metrics;

    fn outbox() -> Arc<Outbox> {
        Outbox::new(10, Duration::from_secs(10), Arc::new(Metrics::new()))
    }

    #[test]
    fn first_and_last_member_are_reported() {
        let hub = Hub::new();
        let g = GroupName::parse("org_5").unwrap();
        let (a, b) = (outbox(), outbox());
        assert!(hub.join(&g, &a));
        assert!(!hub.join(&g, &b));
        assert!(!hub.join(&g, &a), "joining twice is a no-op");
        assert_eq!(hub.members(&g), 2);
        assert!(!hub.leave(&g, a.id));
        assert!(!hub.leave(&g, a.id), "leaving twice is a no-op");
        assert!(hub.leave(&g, b.id));
        assert_eq!(hub.members(&g), 0);
        assert!(hub.groups().is_empty());
    }

    #[test]
    fn a_large_group_keeps_its_index_true_through_joins_and_leaves() {
        let hub = Hub::new();
        let g = GroupName::parse("broadcast").unwrap();
        let all: Vec<_> = (0..3 * INDEXED).map(|_| outbox()).collect();
        for (i, o) in all.iter().enumerate() {
            assert_eq!(hub.join(&g, o), i == 0);
            assert!(!hub.join(&g, o), "joining twice is a no-op");
        }
        assert_eq!(hub.members(&g), all.len());
        // Leave every other one (each swap_remove moves the last member).
        for o in all.iter().step_by(2) {
            assert!(!hub.leave(&g, o.id));
            assert!(!hub.leave(&g, o.id), "leaving twice is a no-op");
        }
        assert_eq!(hub.members(&g), all.len() / 2);
        let d = Delivery::event("{}".into());
        assert_eq!(hub.deliver(&g, &d).queued, all.len() / 2);
        for o in all.iter().step_by(2) {
            assert_eq!(o.depth(), 0, "a member that left got the event");
        }
        for o in all.iter().skip(1).step_by(2) {
            assert_eq!(o.depth(), 1, "a member missed the event");
            assert!(!hub.join(&g, o), "still a member");
        }
        let last = all.len() - 1;
        for (i, o) in all.iter().enumerate().skip(1).step_by(2) {
            assert_eq!(hub.leave(&g, o.id), i == last);
        }
        assert!(hub.groups().is_empty());
    }

    #[test]
    fn one_delivery_reaches_each_member_once_with_shared_bytes() {
        let hub = Hub::new();
        let g = GroupName::parse("user_42").unwrap();
        let other = GroupName::parse("user_43").unwrap();
        let (a, b, c) = (outbox(), outbox(), outbox());
        hub.join(&g, &a);
        hub.join(&g, &b);
        hub.join(&other, &c);
        let d = Delivery::event("{}".into());
        assert_eq!(
            hub.deliver(&g, &d),
            Reach {
                queued: 2,
                overflowed: 0
            }
        );
        let fa = a.take(10).frames;
        let fb = b.take(10).frames;
        assert_eq!(fa.len(), 1);
        assert!(
            Arc::ptr_eq(&fa[0], &fb[0]),
            "recipients share one serialisation"
        );
        assert!(c.take(10).frames.is_empty());
    }

    #[test]
    fn a_panic_under_a_hub_or_outbox_lock_does_not_stop_later_deliveries() {
        use std::panic::{AssertUnwindSafe, catch_unwind};
        let hub = Hub::new();
        let g = GroupName::parse("org_1").unwrap();
        let u = UserId::parse("1").unwrap();
        let a = outbox();
        assert!(hub.register(a.clone(), &u, 10, usize::MAX).is_ok());
        assert!(hub.join(&g, &a));
        let panics = |f: &dyn Fn()| assert!(catch_unwind(AssertUnwindSafe(f)).is_err());
        panics(&|| {
            let _shard = hub.shard(&g).lock().unwrap();
            panic!("a bug while the group's shard is locked");
        });
        panics(&|| {
            let _registry = hub.registry.lock().unwrap();
            panic!("a bug while the registry is locked");
        });
        panics(&|| a.panic_holding_lock());
        let d = Delivery::event("{}".into());
        for _ in 0..2 {
            assert_eq!(hub.deliver(&g, &d).queued, 1);
        }
        assert_eq!(a.take(10).frames.len(), 2);
        // Joins, connects and the drain's snapshot carry on too.
        let b = outbox();
        assert!(hub.register(b.clone(), &u, 10, usize::MAX).is_ok());
        assert!(!hub.join(&g, &b));
        assert_eq!(hub.deliver(&g, &d).queued, 2);
        assert_eq!((hub.connections(), hub.all().len()), (2, 2));
    }

    #[tokio::test]
    async fn until_empty_waits_for_the_last_connection_to_unregister() {
        let hub = Arc::new(Hub::new());
        let u = UserId::parse("1").unwrap();
        hub.until_empty().await; // none open: at once
        let a = outbox();
        assert!(hub.register(a.clone(), &u, 10, usize::MAX).is_ok());
        let waiter = tokio::spawn({
            let hub = hub.clone();
            async move { hub.until_empty().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        hub.unregister(a.id, &u);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken by the last unregister")
            .unwrap();
    }

    #[test]
    fn registry_counts_connections_per_user_up_to_capacity() {
        let hub = Hub::new();
        let u = UserId::parse("42").unwrap();
        let v = UserId::parse("43").unwrap();
        let (a, b, c) = (outbox(), outbox(), outbox());
        assert!(hub.register(a.clone(), &u, 2, usize::MAX).is_ok());
        assert!(hub.register(b.clone(), &u, 2, usize::MAX).is_ok());
        assert_eq!(hub.register(c.clone(), &v, 2, usize::MAX), Err(Full::Node));
        assert_eq!(hub.user_connections(&u), 2);
        assert_eq!(hub.user_connections(&v), 0);
        hub.unregister(a.id, &u);
        hub.unregister(a.id, &u);
        assert_eq!(hub.connections(), 1);
        assert_eq!(hub.user_connections(&u), 1);
        assert_eq!(hub.all()[0].id, b.id);
        assert!(hub.register(c, &v, 2, usize::MAX).is_ok());
    }

    #[test]
    fn one_user_cannot_take_more_than_its_share() {
        let hub = Hub::new();
        let u = UserId::parse("42").unwrap();
        let v = UserId::parse("43").unwrap();
        let (a, b, c) = (outbox(), outbox(), outbox());
        assert_eq!(hub.register(a.clone(), &u, 10, 2), Ok(()));
        assert_eq!(hub.register(b, &u, 10, 2), Ok(()));
        assert_eq!(hub.register(c.clone(), &u, 10, 2), Err(Full::User));
        assert_eq!(
            hub.register(c.clone(), &v, 10, 2),
            Ok(()),
            "others still may"
        );
        hub.unregister(a.id, &u);
        assert_eq!(
            hub.register(a, &u, 10, 2),
            Ok(()),
            "a closed one frees a place"
        );
        assert_eq!(hub.user_connections(&u), 2);
    }
}
