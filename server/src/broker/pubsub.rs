//! What the two Redis brokers share: interest-based routing over Redis pub/sub, end
//! to end health, and resyncs. Only the transport differs ([`super::redis`]: PUBLISH
//! and SUBSCRIBE on one Redis; [`super::redis_cluster`]: SPUBLISH and SSUBSCRIBE on
//! a Redis Cluster), so a broker is a [`Transport`] around a [`PubSubCore`], and
//! every [`Transport`] is a [`Broker`].
//!
//! Each group is one channel, `<prefix>:g:<group>` (plus, with Django interop, the
//! channel channels_redis publishes the group on, see [`super::channels`]). A node
//! subscribes to a group's channels when the group gets its first local member and
//! unsubscribes after the last one leaves. The subscriber lock serialises those
//! (un)subscriptions against each other and against the transport installing a new
//! subscriber, so a leave racing a join can never unsubscribe a group that has a
//! member again, and a later member can wait for the first one's subscription
//! ([`Broker::settled`]).
//!
//! Health is end to end: the node publishes to its own probe channel every second
//! and is `up` only while the subscriber is connected and the probe comes back. A
//! publish that fails makes publishes fail fast (the notification is stored; nothing
//! waits on a dead Redis) until the prober gets through again; the node then
//! announces on `<prefix>:resync` that every node's sessions must catch up from the
//! store, since it could not publish for a while.

use std::collections::HashSet;
use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::sync::Weak;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use herald_shared::GroupName;
use redis::aio::ConnectionLike;
use tokio::sync::{Mutex, watch};

use super::{Broker, BrokerError, BrokerHealth, channels, wire};
use crate::hub::Hub;
use crate::outbox::{Delivery, unix_micros};

/// How long the probe may go unanswered before the broker reports `down`.
const PROBE_DEADLINE_US: u64 = 3_000_000;
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// How a broker reaches Redis: the commands that differ between a single Redis and
/// a Redis Cluster. The transport also owns its subscriber task (connect, hand the
/// new subscriber to [`PubSubCore::install`], feed what arrives to
/// [`PubSubCore::dispatch`], [`PubSubCore::lost`] on loss, and again).
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// The subscriber's command half, kept under the core's subscriber lock.
    type Sink: Send + 'static;
    /// The connection that publishes (and carries other commands).
    type Publisher: ConnectionLike + Clone + Send + Sync + 'static;
    /// What [`Broker::kind`] reports.
    const KIND: &'static str;
    /// `"Redis"` or `"Redis Cluster"`, for logs and errors.
    const NAME: &'static str;
    /// `"PUBLISH"` or `"SPUBLISH"`.
    const PUBLISH: &'static str;
    /// Whether a batch of publishes may go out as one pipeline: on a single Redis
    /// yes; on a Redis Cluster each channel's shard is another node, so no.
    const PIPELINE: bool;

    fn core(&self) -> &PubSubCore<Self::Sink>;

    fn publisher(&self) -> &Self::Publisher;

    /// Subscribes `sink` to `channels`; returns once the server confirmed.
    async fn listen(&self, sink: &mut Self::Sink, channels: Vec<String>) -> redis::RedisResult<()>;

    /// Unsubscribes `sink` from `channels`.
    async fn unlisten(
        &self,
        sink: &mut Self::Sink,
        channels: Vec<String>,
    ) -> redis::RedisResult<()>;
}

/// The live subscriber, behind the subscriber lock.
struct Subscriber<S> {
    /// `None` while the transport reconnects.
    sink: Option<S>,
    /// Groups whose subscription `sink` confirmed (and not unsubscribed since).
    groups: HashSet<GroupName>,
}

/// The state both Redis brokers keep, whatever carries their commands.
pub struct PubSubCore<S> {
    hub: Arc<Hub>,
    prefix: String,
    /// channels_redis prefix for Django interop (`asgi`), if enabled.
    asgi_prefix: Option<String>,
    sub: Mutex<Subscriber<S>>,
    /// Groups whose first local member is waiting for the subscriber lock: whoever
    /// takes the lock next subscribes them all in one command.
    wanted: std::sync::Mutex<Vec<GroupName>>,
    connected: AtomicBool,
    /// When the probe last came back (Unix µs).
    probe_seen: AtomicU64,
    probe_channel: String,
    /// Bumped on every resubscription after a loss, on a message the transport
    /// dropped, and whenever any node announces on `<prefix>:resync` that its
    /// publishes failed; sessions catch up when it moves.
    resyncs: watch::Sender<u64>,
    resync_channel: String,
    /// A publish failed: publishes fail fast until the prober gets through again.
    publish_failed: AtomicBool,
}

impl<S: Send + 'static> PubSubCore<S> {
    pub fn new(hub: Arc<Hub>, prefix: &str, asgi_prefix: Option<String>, node_id: &str) -> Self {
        Self {
            hub,
            prefix: prefix.to_owned(),
            asgi_prefix,
            sub: Mutex::new(Subscriber {
                sink: None,
                groups: HashSet::new(),
            }),
            wanted: std::sync::Mutex::new(Vec::new()),
            connected: AtomicBool::new(false),
            probe_seen: AtomicU64::new(0),
            probe_channel: format!("{prefix}:probe:{node_id}"),
            resyncs: watch::Sender::new(0),
            resync_channel: format!("{prefix}:resync"),
            publish_failed: AtomicBool::new(false),
        }
    }

    /// The channel a group's messages travel on.
    pub fn channel(&self, group: &GroupName) -> String {
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

    /// The group name in a channel of this node's prefix, unparsed.
    fn own_group<'c>(&self, channel: &'c str) -> Option<&'c str> {
        channel
            .strip_prefix(self.prefix.as_str())
            .and_then(|c| c.strip_prefix(":g:"))
    }

    /// Whether this node still needs to hear `channel`: its probe and resync
    /// channels, and the channel of a group with local members.
    pub fn needs(&self, channel: &str) -> bool {
        channel == self.probe_channel
            || channel == self.resync_channel
            || self
                .own_group(channel)
                .and_then(|g| GroupName::parse(g).ok())
                .is_some_and(|g| self.hub.members(&g) > 0)
    }

    /// Routes one message from the subscriber: the probe, a resync announcement, or
    /// a group's frame for the hub.
    pub fn dispatch(&self, channel: &str, payload: &[u8]) {
        if channel == self.probe_channel {
            self.probe_seen.store(unix_micros(), Ordering::Relaxed);
            return;
        }
        if channel == self.resync_channel {
            tracing::info!(from = %String::from_utf8_lossy(payload), "a node could not publish for a while: catching up");
            self.resync();
            return;
        }
        let decoded = match (self.own_group(channel), &self.asgi_prefix) {
            (Some(g), _) => GroupName::parse(g).ok().zip(wire::decode(payload)),
            (None, Some(asgi)) => channels::decode(asgi, channel, payload),
            (None, None) => None,
        };
        match decoded {
            Some((g, d)) => {
                self.hub.deliver(&g, &d);
            }
            None => tracing::warn!(
                channel,
                "undecodable message on a subscribed channel; dropped"
            ),
        }
    }

    /// Tells every session to catch up from the store.
    pub fn resync(&self) {
        self.resyncs.send_modify(|n| *n += 1);
    }

    pub fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::Relaxed);
    }

    /// The subscriber is installed and subscribed: the broker is connected, and
    /// unless this is the start-up connection with nobody connected yet, sessions
    /// catch up on whatever was published while it was away (or, at start-up,
    /// before the first subscription took), which is in the store.
    pub fn up(&self, first: bool) {
        self.set_connected(true);
        if !first || self.hub.connections() > 0 {
            self.resync();
        }
    }

    /// The subscriber is gone: disconnected until the transport installs another.
    pub async fn lost(&self) {
        self.set_connected(false);
        let mut sub = self.sub.lock().await;
        sub.sink = None;
        sub.groups.clear();
    }

    fn health(&self) -> BrokerHealth {
        let fresh = unix_micros().saturating_sub(self.probe_seen.load(Ordering::Relaxed))
            < PROBE_DEADLINE_US;
        if self.connected.load(Ordering::Relaxed) && fresh {
            BrokerHealth::Up
        } else {
            BrokerHealth::Down
        }
    }
}

/// Installs a new subscriber and subscribes it to the probe and resync channels and
/// every group the hub holds; returns how many channels. On failure the broker is
/// left without a subscriber.
///
/// The sink is installed first, under the lock: a group that gains its first
/// member from now on subscribes itself; the ones before are in the snapshot.
pub async fn install<T: Transport>(broker: &T, sink: T::Sink) -> redis::RedisResult<usize> {
    let core = broker.core();
    let mut guard = core.sub.lock().await;
    let sub = &mut *guard;
    let sink = sub.sink.insert(sink);
    sub.groups.clear();
    let groups = core.hub.groups();
    let mut channels = vec![core.probe_channel.clone(), core.resync_channel.clone()];
    for g in &groups {
        channels.extend(core.channels(g));
    }
    let n = channels.len();
    match broker.listen(sink, channels).await {
        Ok(()) => {
            sub.groups.extend(groups);
            Ok(n)
        }
        Err(e) => {
            sub.sink = None;
            Err(e)
        }
    }
}

/// Under the subscriber lock: returns at once if `group` is confirmed (or there is
/// no subscriber: its reconnect resubscribes what the hub holds); otherwise
/// subscribes `group` together with every group whose first member queued behind
/// it ([`PubSubCore::wanted`]), in one command. A connect storm of new users is then
/// a few SUBSCRIBEs of many channels, not one round trip per user, one at a time
/// (which held a node in cluster mode to about 1,400 connects a second). Queued
/// groups that lost their members meanwhile are left out, so no subscription
/// outlives its group. On failure the waiters of the batch subscribe for themselves
/// when they get the lock.
async fn subscribe_batch<T: Transport>(broker: &T, group: &GroupName) -> Result<(), BrokerError> {
    let core = broker.core();
    let mut guard = core.sub.lock().await;
    let sub = &mut *guard;
    match sub.sink.as_mut() {
        None => {
            core.wanted.lock().expect("wanted groups").clear();
            Ok(())
        }
        // Confirmed already: by the first member, or in a batch.
        Some(_) if sub.groups.contains(group) => Ok(()),
        Some(sink) => {
            let mut batch = std::mem::take(&mut *core.wanted.lock().expect("wanted groups"));
            batch.push(group.clone());
            batch.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
            batch.dedup();
            batch.retain(|g| !sub.groups.contains(g) && (g == group || core.hub.members(g) > 0));
            let channels = batch.iter().flat_map(|g| core.channels(g)).collect();
            broker
                .listen(sink, channels)
                .await
                .map_err(|e| BrokerError::Disconnected(e.to_string()))?;
            sub.groups.extend(batch);
            Ok(())
        }
    }
}

/// Refuses at once while publishes are failing (until the prober gets through and
/// the resync is announced), so a publish never waits on a dead connection.
fn fail_fast<T: Transport>(core: &PubSubCore<T::Sink>) -> Result<(), BrokerError> {
    if core.publish_failed.load(Ordering::Relaxed) {
        return Err(BrokerError::Disconnected(format!(
            "{} publishes failing; will resync",
            T::NAME
        )));
    }
    Ok(())
}

/// Marks publishing as failing (see [`fail_fast`]) and describes `e`.
fn publish_failed<S>(core: &PubSubCore<S>, e: redis::RedisError) -> BrokerError {
    core.publish_failed.store(true, Ordering::Relaxed);
    BrokerError::Disconnected(e.to_string())
}

/// Publishes `payload` on `channel` with the transport's publish command.
async fn send<T: Transport>(broker: &T, channel: &str, payload: &[u8]) -> redis::RedisResult<()> {
    let mut con = broker.publisher().clone();
    redis::cmd(T::PUBLISH)
        .arg(channel)
        .arg(payload)
        .query_async::<i64>(&mut con)
        .await
        .map(|_| ())
}

/// Publishes to the node's own probe channel every second; once publishing works
/// again after failures, announces a cluster-wide resync.
pub async fn prober<T: Transport>(broker: Weak<T>, node_id: String) {
    loop {
        let Some(b) = broker.upgrade() else { return };
        let core = b.core();
        let probe = send(
            &*b,
            &core.probe_channel,
            unix_micros().to_string().as_bytes(),
        )
        .await;
        if probe.is_ok() && core.publish_failed.load(Ordering::Relaxed) {
            let announced = send(&*b, &core.resync_channel, node_id.as_bytes()).await;
            if announced.is_ok() {
                core.publish_failed.store(false, Ordering::Relaxed);
                tracing::info!("{} reachable again: asked every node to catch up", T::NAME);
            }
        }
        drop(b);
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

/// Exponential backoff between connection attempts.
pub struct Backoff {
    first: Duration,
    delay: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            delay: first,
            max,
        }
    }

    /// How long the next [`Backoff::sleep`] waits.
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// Waits, then doubles the next wait (up to the maximum).
    pub async fn sleep(&mut self) {
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(self.max);
    }

    pub fn reset(&mut self) {
        self.delay = self.first;
    }
}

/// Runs `connect` until it succeeds, backing off while `what` is unreachable.
pub async fn connect_retrying<C, E: Display, F: Future<Output = Result<C, E>>>(
    what: &str,
    mut connect: impl FnMut() -> F,
) -> C {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        match connect().await {
            Ok(c) => return c,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff.delay(), "{what} unreachable at start-up; retrying");
                backoff.sleep().await;
            }
        }
    }
}

#[async_trait]
impl<T: Transport> Broker for T {
    fn kind(&self) -> &'static str {
        T::KIND
    }

    async fn publish(&self, group: &GroupName, delivery: Arc<Delivery>) -> Result<(), BrokerError> {
        let core = self.core();
        fail_fast::<T>(core)?;
        send(self, &core.channel(group), &wire::encode(&delivery))
            .await
            .map_err(|e| publish_failed(core, e))
    }

    async fn publish_all(
        &self,
        items: &[(GroupName, Arc<Delivery>)],
    ) -> Result<(), (usize, BrokerError)> {
        if !T::PIPELINE || items.len() < 2 {
            return super::publish_in_turn(self, items).await;
        }
        let core = self.core();
        fail_fast::<T>(core).map_err(|e| (0, e))?;
        let mut pipe = redis::pipe();
        for (group, delivery) in items {
            pipe.cmd(T::PUBLISH)
                .arg(core.channel(group))
                .arg(wire::encode(delivery))
                .ignore();
        }
        let mut con = self.publisher().clone();
        pipe.query_async::<()>(&mut con)
            .await
            .map_err(|e| (0, publish_failed(core, e)))
    }

    async fn subscribe(&self, group: &GroupName) -> Result<(), BrokerError> {
        self.core()
            .wanted
            .lock()
            .expect("wanted groups")
            .push(group.clone());
        subscribe_batch(self, group).await
    }

    /// Waits on the subscriber lock, behind the first member's SUBSCRIBE; if that
    /// one has not taken the lock yet (or failed), subscribes itself.
    async fn settled(&self, group: &GroupName) -> Result<(), BrokerError> {
        subscribe_batch(self, group).await
    }

    async fn unsubscribe(&self, group: &GroupName) -> Result<(), BrokerError> {
        let core = self.core();
        let mut guard = core.sub.lock().await;
        // Re-checked under the lock: a member may have joined since the leave.
        if core.hub.members(group) > 0 {
            return Ok(());
        }
        let sub = &mut *guard;
        // Forgotten first: whatever the outcome, the next join subscribes again.
        sub.groups.remove(group);
        match sub.sink.as_mut() {
            None => Ok(()),
            Some(sink) => self
                .unlisten(sink, core.channels(group))
                .await
                .map_err(|e| BrokerError::Disconnected(e.to_string())),
        }
    }

    fn health(&self) -> BrokerHealth {
        self.core().health()
    }

    fn resyncs(&self) -> Option<watch::Receiver<u64>> {
        Some(self.core().resyncs.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;

    use redis::{Cmd, Pipeline, RedisFuture, Value};
    use tokio::sync::Semaphore;

    use super::*;

    /// Answers every command with 0 (no subscriber reached).
    #[derive(Clone)]
    struct NoRedis;

    impl ConnectionLike for NoRedis {
        fn req_packed_command<'a>(&'a mut self, _: &'a Cmd) -> RedisFuture<'a, Value> {
            Box::pin(async { Ok(Value::Int(0)) })
        }
        fn req_packed_commands<'a>(
            &'a mut self,
            _: &'a Pipeline,
            _: usize,
            _: usize,
        ) -> RedisFuture<'a, Vec<Value>> {
            Box::pin(async { Ok(Vec::new()) })
        }
        fn get_db(&self) -> i64 {
            0
        }
    }

    /// A transport whose subscriptions complete one per permit of `gate`.
    struct Fake {
        core: PubSubCore<()>,
        publisher: NoRedis,
        gate: Semaphore,
        listened: StdMutex<Vec<Vec<String>>>,
    }

    #[async_trait]
    impl Transport for Fake {
        type Publisher = NoRedis;
        type Sink = ();
        const KIND: &'static str = "fake";
        const NAME: &'static str = "Fake";
        const PUBLISH: &'static str = "PUBLISH";
        const PIPELINE: bool = false;

        fn core(&self) -> &PubSubCore<()> {
            &self.core
        }

        fn publisher(&self) -> &NoRedis {
            &self.publisher
        }

        async fn listen(&self, _: &mut (), channels: Vec<String>) -> redis::RedisResult<()> {
            self.gate.acquire().await.expect("open").forget();
            self.listened.lock().unwrap().push(channels);
            Ok(())
        }

        async fn unlisten(&self, _: &mut (), _: Vec<String>) -> redis::RedisResult<()> {
            Ok(())
        }
    }

    async fn connected() -> Arc<Fake> {
        let fake = Arc::new(Fake {
            core: PubSubCore::new(Arc::new(Hub::new()), "h", None, "n1"),
            publisher: NoRedis,
            gate: Semaphore::new(1),
            listened: StdMutex::new(Vec::new()),
        });
        install(&*fake, ()).await.unwrap();
        fake.listened.lock().unwrap().clear();
        fake
    }

    fn group_listens(fake: &Fake) -> usize {
        fake.listened.lock().unwrap().len()
    }

    #[tokio::test]
    async fn a_later_member_waits_for_the_first_ones_subscription() {
        let fake = connected().await;
        let g = GroupName::parse("org_1").unwrap();
        let first = tokio::spawn({
            let (fake, g) = (fake.clone(), g.clone());
            async move { fake.subscribe(&g).await }
        });
        // The first member holds the lock, its SUBSCRIBE in flight.
        while fake.core.sub.try_lock().is_ok() {
            tokio::task::yield_now().await;
        }
        let later = tokio::spawn({
            let (fake, g) = (fake.clone(), g.clone());
            async move { fake.settled(&g).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !later.is_finished(),
            "settled before the SUBSCRIBE confirmed"
        );
        fake.gate.add_permits(1);
        first.await.unwrap().unwrap();
        later.await.unwrap().unwrap();
        assert_eq!(
            group_listens(&fake),
            1,
            "the later member adds no round trip"
        );
    }

    #[tokio::test]
    async fn a_later_member_first_at_the_lock_subscribes_itself() {
        let fake = connected().await;
        let g = GroupName::parse("org_1").unwrap();
        fake.gate.add_permits(1);
        fake.settled(&g).await.unwrap();
        assert_eq!(*fake.listened.lock().unwrap(), vec![vec!["h:g:org_1"]]);
        fake.subscribe(&g).await.unwrap();
        assert_eq!(group_listens(&fake), 1, "already confirmed");
        fake.unsubscribe(&g).await.unwrap();
        fake.gate.add_permits(1);
        fake.subscribe(&g).await.unwrap();
        assert_eq!(
            group_listens(&fake),
            2,
            "an unsubscribed group subscribes again"
        );
    }

    /// First members queued behind an in-flight SUBSCRIBE go out together in the
    /// next one; a queued group whose members left meanwhile is not subscribed for
    /// them (its own waiter still subscribes it, as before).
    #[tokio::test]
    async fn first_members_queued_behind_a_subscribe_share_the_next_one() {
        let fake = connected().await;
        let groups: Vec<GroupName> = (1..=4)
            .map(|i| GroupName::parse(format!("user_{i}")).unwrap())
            .collect();
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let _members: Vec<_> = groups[..3]
            .iter()
            .map(|g| {
                let o = crate::outbox::Outbox::new(10, Duration::from_secs(10), metrics.clone());
                fake.core.hub.join(g, &o);
                o
            })
            .collect();
        let spawn = |g: &GroupName| {
            let (fake, g) = (fake.clone(), g.clone());
            tokio::spawn(async move { fake.subscribe(&g).await })
        };
        let first = spawn(&groups[0]);
        while fake.core.sub.try_lock().is_ok() {
            tokio::task::yield_now().await;
        }
        let rest: Vec<_> = groups[1..].iter().map(spawn).collect();
        while fake.core.wanted.lock().unwrap().len() < 3 {
            tokio::task::yield_now().await;
        }
        fake.gate.add_permits(3);
        first.await.unwrap().unwrap();
        for r in rest {
            r.await.unwrap().unwrap();
        }
        assert_eq!(
            *fake.listened.lock().unwrap(),
            vec![
                vec!["h:g:user_1"],
                vec!["h:g:user_2", "h:g:user_3"],
                vec!["h:g:user_4"],
            ]
        );
        assert!(fake.core.wanted.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn without_a_subscriber_nothing_waits() {
        let fake = connected().await;
        fake.core.lost().await;
        let g = GroupName::parse("org_1").unwrap();
        fake.subscribe(&g).await.unwrap();
        fake.settled(&g).await.unwrap();
        assert_eq!(group_listens(&fake), 0);
    }
}
