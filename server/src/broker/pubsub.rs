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
//! Unsubscribes are not urgent (a subscription that outlives its group only brings
//! messages nobody here wants), so they are gathered: [`Broker::unsubscribe`] queues
//! the group and returns, and one background task sends them, many channels a
//! command, after a short linger, re-checking each group under the subscriber lock.
//!
//! One subscriber loop serves both transports ([`subscriber`]): open a subscriber,
//! subscribe everything the node needs, raise a resync, dispatch what arrives, and on
//! loss start again after a backoff. A transport supplies only the operations that
//! differ ([`Transport::open`], [`Transport::listen`], [`Transport::unlisten`]).
//!
//! Health is end to end: the node publishes to its own probe channel every second
//! and is `up` only while the subscriber is connected and the probe comes back. A
//! publish that fails makes publishes fail fast (the notification is stored; nothing
//! waits on a dead Redis) until the prober gets through again; the node then
//! announces on `<prefix>:resync` that every node's sessions must catch up from the
//! store, since it could not publish for a while.

use std::collections::{HashMap, HashSet};
use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::sync::Weak;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use herald_shared::GroupName;
use rand::Rng;
use redis::aio::ConnectionLike;
use tokio::sync::{Mutex, Notify, watch};
use tokio_util::sync::CancellationToken;

use herald_shared::dropped::DropReason;

use super::{Broker, BrokerError, BrokerHealth, Trust, channels, wire};
use crate::hub::Hub;
use crate::outbox::{Delivery, unix_micros};
use crate::tasks::Tasks;

/// How long the probe may go unanswered before the broker reports `down`.
const PROBE_DEADLINE_US: u64 = 3_000_000;
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// The subscriber's backoff between attempts (PROTOCOL.md 7.4): the first wait, and
/// the most it doubles to. A connection that held this long resets it.
const RECONNECT_FIRST: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// The most one connection attempt to Redis may take, connect and handshake: a
/// Redis that accepts the connection and never answers (paused, or a wrong port)
/// fails the attempt, logged as such, instead of hanging start-up or the subscriber
/// in silence. Wide enough for a Redis Cluster's discovery through its seeds.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The most a group's SUBSCRIBE (or a batch's UNSUBSCRIBE) may take. It runs under
/// the subscriber lock, which every upgrade's join waits on, so a Redis that stops
/// answering would freeze all connects; past this the subscriber connection is
/// abandoned: the loop reconnects, resubscribes and resyncs (PROTOCOL.md 7.4).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// The same bound for the resubscription of everything the hub holds on a new
/// subscriber: one command of many channels (on a Redis Cluster, many commands),
/// so it gets more time.
const RESUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a group that lost its last local member waits before its unsubscribe
/// goes out, so the groups of a disconnect burst share a command, and a client that
/// comes straight back (a page reload) finds its subscription still there.
pub const UNSUBSCRIBE_LINGER: Duration = Duration::from_millis(50);
/// Most groups in one unsubscribe: the subscriber lock is released in between, so a
/// subscribe never waits behind more than one such batch.
const UNSUBSCRIBE_BATCH: usize = 1024;

/// What a subscriber connection receives; its stream ends when the connection is lost.
pub enum Received<M> {
    /// A message on a subscribed channel, for [`PubSubCore::dispatch`].
    Message(M),
    /// The server ended the subscription to this channel unasked (a Redis Cluster
    /// does when the channel's slot moves to another master). If the node still
    /// needs the channel, the subscriber starts over.
    Revoked(String),
    /// Messages were dropped before they could be read: sessions must catch up.
    Dropped,
}

/// The inbox of a subscriber connection: what it receives, until it is lost.
pub type Inbox<M> = BoxStream<'static, Received<M>>;

/// A received pub/sub message, whatever the transport's type for it.
pub trait Message: Send + 'static {
    fn channel(&self) -> &str;
    fn payload(&self) -> &[u8];
}

/// How a broker reaches Redis: the commands that differ between a single Redis and
/// a Redis Cluster. Everything else, the subscriber loop included, is shared here.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// The subscriber's command half, kept under the core's subscriber lock.
    type Sink: Send + 'static;
    /// A message as the subscriber receives it.
    type Message: Message;
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
    /// Whether the inbox reports [`Received::Revoked`], and so also echoes the
    /// node's own unsubscribes that way (a Redis Cluster pushes `sunsubscribe` for
    /// both), which the subscriber must then tell apart.
    const REVOKES: bool = false;

    fn core(&self) -> &PubSubCore<Self::Sink>;

    fn publisher(&self) -> &Self::Publisher;

    /// Opens a new subscriber connection: its command half and its inbox.
    async fn open(&self) -> redis::RedisResult<(Self::Sink, Inbox<Self::Message>)>;

    /// Subscribes `sink` to `channels`; returns once the server confirmed.
    async fn listen(&self, sink: &mut Self::Sink, channels: Vec<String>) -> redis::RedisResult<()>;

    /// Unsubscribes `sink` from `channels`, in as few commands as the transport can.
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
    /// Cancelled when a command on `sink` timed out: the subscriber loop then drops
    /// that connection and starts over. A new one for every connection.
    abandoned: CancellationToken,
}

impl<S> Subscriber<S> {
    /// Gives up on the current connection after a command on it timed out: no
    /// subscriber until the loop has reconnected and resubscribed what the hub
    /// holds, so joins from now on return at once instead of queueing on it.
    fn abandon(&mut self) {
        self.sink = None;
        self.groups.clear();
        self.abandoned.cancel();
    }
}

/// The error a command past its bound (`limit`) reports.
fn timed_out(what: &str, limit: Duration) -> redis::RedisError {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("{what}: no answer from Redis within {limit:?}"),
    )
    .into()
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
    /// Groups that lost their last local member, for the [`unsubscriber`] task.
    unwanted: std::sync::Mutex<Vec<GroupName>>,
    /// Wakes the [`unsubscriber`] when `unwanted` stops being empty.
    unwanted_added: Arc<Notify>,
    /// Channels this node unsubscribed on the current subscriber connection whose
    /// echo ([`Transport::REVOKES`]) has not come back yet, with how many: that echo
    /// is not a revocation, even if the group has a member again by then.
    own_unsubscribes: std::sync::Mutex<HashMap<String, u32>>,
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
    /// The key that signs this node's messages, and the checks on what it reads.
    trust: Trust,
}

/// The node a Redis broker serves, the same on both transports: whom it delivers to,
/// its channels' prefix, its id (for its probe) and what it trusts.
pub struct NodeSide {
    pub hub: Arc<Hub>,
    pub prefix: String,
    pub node_id: String,
    pub trust: Trust,
}

impl<S: Send + 'static> PubSubCore<S> {
    /// `asgi_prefix`: the channels_redis prefix whose group channels a single Redis
    /// also listens on (Django interop).
    pub fn new(node: NodeSide, asgi_prefix: Option<String>) -> Self {
        let NodeSide {
            hub,
            prefix,
            node_id,
            trust,
        } = node;
        Self {
            hub,
            asgi_prefix,
            sub: Mutex::new(Subscriber {
                sink: None,
                groups: HashSet::new(),
                abandoned: CancellationToken::new(),
            }),
            wanted: std::sync::Mutex::new(Vec::new()),
            unwanted: std::sync::Mutex::new(Vec::new()),
            unwanted_added: Arc::new(Notify::new()),
            own_unsubscribes: std::sync::Mutex::new(HashMap::new()),
            connected: AtomicBool::new(false),
            probe_seen: AtomicU64::new(0),
            probe_channel: format!("{prefix}:probe:{node_id}"),
            resyncs: watch::Sender::new(0),
            resync_channel: format!("{prefix}:resync"),
            publish_failed: AtomicBool::new(false),
            trust,
            prefix,
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

    /// Whether a revocation of `channel` is the echo of the node's own unsubscribe
    /// (and counts it as come back).
    fn own_unsubscribe_echo(&self, channel: &str) -> bool {
        let mut own = self.own_unsubscribes.lock().expect("own unsubscribes");
        match own.get_mut(channel) {
            Some(n) if *n > 1 => {
                *n -= 1;
                true
            }
            Some(_) => {
                own.remove(channel);
                true
            }
            None => false,
        }
    }

    /// Whether this node still needs to hear `channel`: its probe and resync
    /// channels, and the channel of a group with local members.
    fn needs(&self, channel: &str) -> bool {
        channel == self.probe_channel
            || channel == self.resync_channel
            || self
                .own_group(channel)
                .and_then(|g| GroupName::parse(g).ok())
                .is_some_and(|g| self.hub.members(&g) > 0)
    }

    /// Routes one message from the subscriber: the probe, a resync announcement, or
    /// a group's frame for the hub; each checked first ([`Trust`]), and dropped
    /// (counted, logged at a bounded rate) if it fails. A resync announcement only
    /// ticks the resync signal: the fan-out resyncs at most about once a second,
    /// however many arrive.
    async fn dispatch(&self, channel: &str, payload: &[u8]) {
        let trust = &self.trust;
        if channel == self.probe_channel {
            match trust.control(channel, payload) {
                Ok(_) => self.probe_seen.store(unix_micros(), Ordering::Relaxed),
                Err(reason) => trust.dropped(reason, channel),
            }
            return;
        }
        if channel == self.resync_channel {
            match trust.control(channel, payload) {
                Ok(from) => {
                    tracing::debug!(from, "a node could not publish for a while: catching up");
                    self.resync();
                }
                Err(reason) => trust.dropped(reason, channel),
            }
            return;
        }
        let decoded = match (self.own_group(channel), &self.asgi_prefix) {
            (Some(g), _) => match GroupName::parse(g) {
                Ok(g) => trust.group_message(channel, payload).await.map(|d| (g, d)),
                Err(_) => Err(DropReason::Malformed),
            },
            (None, Some(asgi)) => trust.django_message(asgi, channel, payload),
            (None, None) => Err(DropReason::Malformed),
        };
        match decoded {
            Ok((g, d)) => {
                self.hub.deliver(&g, &d);
            }
            Err(reason) => trust.dropped(reason, channel),
        }
    }

    /// Tells every session to catch up from the store.
    fn resync(&self) {
        self.resyncs.send_modify(|n| *n += 1);
    }

    fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::Relaxed);
    }

    /// The subscriber is installed and subscribed: the broker is connected, and
    /// unless this is the start-up connection with nobody connected yet, sessions
    /// catch up on whatever was published while it was away (or, at start-up,
    /// before the first subscription took), which is in the store.
    fn up(&self, first: bool) {
        self.set_connected(true);
        if !first || self.hub.connections() > 0 {
            self.resync();
        }
    }

    /// The subscriber is gone: disconnected until the transport installs another.
    async fn lost(&self) {
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
/// every group the hub holds (within [`RESUBSCRIBE_TIMEOUT`]); returns how many
/// channels, and the token cancelled if the connection is abandoned later. On
/// failure the broker is left without a subscriber.
///
/// The sink is installed first, under the lock: a group that gains its first
/// member from now on subscribes itself; the ones before are in the snapshot.
async fn install<T: Transport>(
    broker: &T,
    sink: T::Sink,
) -> redis::RedisResult<(usize, CancellationToken)> {
    let core = broker.core();
    let mut guard = core.sub.lock().await;
    let sub = &mut *guard;
    let sink = sub.sink.insert(sink);
    sub.groups.clear();
    sub.abandoned = CancellationToken::new();
    // A new connection: no echo of an unsubscribe on the old one will come.
    core.own_unsubscribes
        .lock()
        .expect("own unsubscribes")
        .clear();
    let groups = core.hub.groups();
    let mut channels = vec![core.probe_channel.clone(), core.resync_channel.clone()];
    for g in &groups {
        channels.extend(core.channels(g));
    }
    let n = channels.len();
    let listened = tokio::time::timeout(RESUBSCRIBE_TIMEOUT, broker.listen(sink, channels))
        .await
        .unwrap_or_else(|_| Err(timed_out("resubscription", RESUBSCRIBE_TIMEOUT)));
    match listened {
        Ok(()) => {
            sub.groups.extend(groups);
            Ok((n, sub.abandoned.clone()))
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
/// when they get the lock. A SUBSCRIBE unanswered within [`COMMAND_TIMEOUT`]
/// abandons the subscriber connection ([`Subscriber::abandon`]): the waiters then
/// return at once, and the reconnect resubscribes their groups and resyncs.
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
            match tokio::time::timeout(COMMAND_TIMEOUT, broker.listen(sink, channels)).await {
                Ok(Ok(())) => {
                    sub.groups.extend(batch);
                    Ok(())
                }
                Ok(Err(e)) => Err(BrokerError::Disconnected(e.to_string())),
                Err(_) => {
                    core.set_connected(false);
                    sub.abandon();
                    let e = timed_out("SUBSCRIBE", COMMAND_TIMEOUT);
                    tracing::warn!(error = %e, "{} subscriber abandoned; reconnecting", T::NAME);
                    Err(BrokerError::Disconnected(e.to_string()))
                }
            }
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

/// Starts the broker's background tasks on `tasks`: the [`subscriber`], the
/// [`unsubscriber`] and the [`prober`]. They hold the broker weakly, so they never
/// keep it alive, and they stop with the node's tasks.
pub fn start<T: Transport>(broker: &Arc<T>, tasks: &Tasks, node_id: &str) {
    tasks.spawn("broker subscriber", subscriber(Arc::downgrade(broker)));
    tasks.spawn(
        "broker unsubscriber",
        unsubscriber(Arc::downgrade(broker), broker.core().unwanted_added.clone()),
    );
    tasks.spawn(
        "broker probe",
        prober(Arc::downgrade(broker), node_id.to_owned()),
    );
}

/// Owns the subscriber connection, the same on every transport: open it, subscribe
/// the probe and resync channels and every group the hub holds, raise a resync
/// ([`PubSubCore::up`]), dispatch what arrives, and when it is lost (or the server
/// revokes a channel the node still needs) start again after a backoff. A failed
/// open and a failed resubscription back off alike; so does a connection lost soon
/// after it came up, so a flapping Redis cannot turn into a resync storm.
async fn subscriber<T: Transport>(broker: Weak<T>) {
    let mut backoff = Backoff::new(RECONNECT_FIRST, RECONNECT_MAX);
    let mut first = true;
    loop {
        let Some(b) = broker.upgrade() else { return };
        let inbox = match connect_within(b.open()).await {
            Ok((sink, inbox)) => match install(&*b, sink).await {
                Ok((n, abandoned)) => {
                    tracing::info!(channels = n, "{} subscriber connected", T::NAME);
                    Some((inbox, abandoned))
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff.delay(), "{} resubscription failed; reconnecting", T::NAME);
                    None
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff.delay(), "{} subscriber unreachable", T::NAME);
                None
            }
        };
        let Some((inbox, abandoned)) = inbox else {
            b.core().set_connected(false);
            drop(b);
            backoff.sleep().await;
            continue;
        };
        b.core().up(first);
        first = false;
        drop(b);
        let since = Instant::now();
        let Some(why) = read(&broker, inbox, abandoned).await else {
            return;
        };
        let Some(b) = broker.upgrade() else { return };
        b.core().lost().await;
        drop(b);
        if since.elapsed() >= RECONNECT_MAX {
            backoff.reset();
        }
        tracing::warn!(retry_in = ?backoff.delay(), "{} subscriber {why}; reconnecting", T::NAME);
        backoff.sleep().await;
    }
}

/// Dispatches what `inbox` receives until the subscriber must start over (its
/// connection is lost, or `abandoned` after a command on it timed out); returns
/// why, or `None` once the broker is gone.
async fn read<T: Transport>(
    broker: &Weak<T>,
    mut inbox: Inbox<T::Message>,
    abandoned: CancellationToken,
) -> Option<String> {
    loop {
        let received = tokio::select! {
            received = inbox.next() => received,
            () = abandoned.cancelled() => return Some("stopped answering".to_owned()),
        };
        let Some(received) = received else { break };
        let b = broker.upgrade()?;
        let core = b.core();
        match received {
            Received::Message(m) => core.dispatch(m.channel(), m.payload()).await,
            Received::Dropped => {
                tracing::warn!("subscriber dropped messages; sessions catch up");
                core.resync();
            }
            Received::Revoked(channel) if core.own_unsubscribe_echo(&channel) => {}
            Received::Revoked(channel) if core.needs(&channel) => {
                return Some(format!("lost its subscription to {channel} (slot moved?)"));
            }
            Received::Revoked(_) => {}
        }
    }
    Some("connection lost".to_owned())
}

/// Sends the queued unsubscribes ([`Broker::unsubscribe`]): woken by the first
/// group queued, it lingers ([`UNSUBSCRIBE_LINGER`]) so the rest of a burst joins,
/// then unsubscribes them in batches.
async fn unsubscriber<T: Transport>(broker: Weak<T>, added: Arc<Notify>) {
    loop {
        added.notified().await;
        tokio::time::sleep(UNSUBSCRIBE_LINGER).await;
        loop {
            let Some(b) = broker.upgrade() else { return };
            if !unsubscribe_batch(&*b).await {
                break;
            }
        }
    }
}

/// Under the subscriber lock: unsubscribes, in one [`Transport::unlisten`], up to
/// [`UNSUBSCRIBE_BATCH`] queued groups that still have no local member (re-checked
/// here, so a leave racing a join never unsubscribes a group that has a member
/// again: the join's subscribe waits for this lock, finds the group forgotten, and
/// subscribes it anew). Returns whether more are queued.
async fn unsubscribe_batch<T: Transport>(broker: &T) -> bool {
    let core = broker.core();
    let mut guard = core.sub.lock().await;
    let (mut batch, more) = {
        let mut unwanted = core.unwanted.lock().expect("unwanted groups");
        let at = unwanted.len().min(UNSUBSCRIBE_BATCH);
        let rest = unwanted.split_off(at);
        let batch = std::mem::replace(&mut *unwanted, rest);
        (batch, !unwanted.is_empty())
    };
    batch.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
    batch.dedup();
    batch.retain(|g| core.hub.members(g) == 0);
    let sub = &mut *guard;
    // Forgotten first: whatever the outcome, the next join subscribes again.
    for g in &batch {
        sub.groups.remove(g);
    }
    if let Some(sink) = sub.sink.as_mut()
        && !batch.is_empty()
    {
        let channels: Vec<String> = batch.iter().flat_map(|g| core.channels(g)).collect();
        // Counted before the command goes out: its echo may be read before it returns.
        if T::REVOKES {
            let mut own = core.own_unsubscribes.lock().expect("own unsubscribes");
            for c in &channels {
                *own.entry(c.clone()).or_default() += 1;
            }
        }
        match tokio::time::timeout(COMMAND_TIMEOUT, broker.unlisten(sink, channels)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(groups = batch.len(), error = %e, "unsubscribe failed"),
            Err(_) => {
                core.set_connected(false);
                sub.abandon();
                let e = timed_out("UNSUBSCRIBE", COMMAND_TIMEOUT);
                tracing::warn!(error = %e, "{} subscriber abandoned; reconnecting", T::NAME);
            }
        }
    }
    more
}

/// Publishes to the node's own probe channel every second; once publishing works
/// again after failures, announces a cluster-wide resync.
async fn prober<T: Transport>(broker: Weak<T>, node_id: String) {
    loop {
        let Some(b) = broker.upgrade() else { return };
        let core = b.core();
        let key = core.trust.key();
        let probe = wire::encode_control(&unix_micros().to_string(), &core.probe_channel, key);
        let probe = send(&*b, &core.probe_channel, &probe).await;
        if probe.is_ok() && core.publish_failed.load(Ordering::Relaxed) {
            let announcement = wire::encode_control(&node_id, &core.resync_channel, key);
            let announced = send(&*b, &core.resync_channel, &announcement).await;
            if announced.is_ok() {
                core.publish_failed.store(false, Ordering::Relaxed);
                tracing::info!("{} reachable again: asked every node to catch up", T::NAME);
            }
        }
        drop(b);
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

/// Capped exponential backoff between connection attempts, with jitter: each wait is
/// a random time between half the current delay and all of it, so nodes that lost
/// Redis together do not all come back in the same instant.
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

    /// The longest the next [`Backoff::sleep`] may wait.
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// Waits (jittered), then doubles the next delay (up to the maximum).
    pub async fn sleep(&mut self) {
        let wait = self.delay.mul_f64(rand::rng().random_range(0.5..=1.0));
        tokio::time::sleep(wait).await;
        self.delay = (self.delay * 2).min(self.max);
    }

    pub fn reset(&mut self) {
        self.delay = self.first;
    }
}

/// One connection attempt to Redis, bounded by [`CONNECT_TIMEOUT`] (connect and
/// handshake); the error says why, a timeout included. Every connection Herald
/// opens to Redis itself goes through here.
pub async fn connect_within<C, E: Display>(
    connect: impl Future<Output = Result<C, E>>,
) -> Result<C, String> {
    match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "no answer within {CONNECT_TIMEOUT:?} (connect and handshake)"
        )),
    }
}

/// Runs `connect` ([`connect_within`]) until it succeeds, backing off while `what`
/// is unreachable, with a log line naming `what` and the reason for each failure.
/// A TLS refusal ([`crate::tls::refusal`]: an untrusted certificate, a refused
/// client certificate, no TLS on the port) ends it with the reason instead: it
/// would not go away by waiting.
///
/// `tls_to` is the Redis that `connect` reaches over TLS, if it does. An attempt
/// still unfinished after [`PLAIN_CHECK_AFTER`], or one that failed, may have met a
/// plain Redis, which mostly keeps a TLS handshake waiting instead of refusing it;
/// if that address answers a plain-text `PING`
/// ([`crate::redis_client::speaks_plain_redis`]), start-up ends at once, as for any
/// TLS refusal, instead of retrying it as unreachable.
pub async fn connect_retrying<C, F: Future<Output = redis::RedisResult<C>>>(
    what: &str,
    tls_to: Option<(String, u16)>,
    mut connect: impl FnMut() -> F,
) -> Result<C, String> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        let mut refused = None;
        let mut plain = None;
        let attempt = {
            let attempt = connect_within(async {
                connect()
                    .await
                    .inspect_err(|e| refused = crate::tls::refusal(e))
            });
            match &tls_to {
                None => attempt.await,
                Some((host, port)) => tokio::select! {
                    a = attempt => a,
                    true = async {
                        tokio::time::sleep(PLAIN_CHECK_AFTER).await;
                        crate::redis_client::speaks_plain_redis(host, *port).await
                    } => {
                        plain = Some(plain_redis(host, *port));
                        Err(String::new())
                    }
                },
            }
        };
        if let (Err(_), true, Some((host, port))) = (&attempt, plain.is_none(), &tls_to) {
            // A plain Redis may also have answered the ClientHello (a line feed in
            // its random bytes ends the "command"), or the attempt may have given up
            // first (a cluster client's own timeout).
            if crate::redis_client::speaks_plain_redis(host, *port).await {
                plain = Some(plain_redis(host, *port));
            }
        }
        if let Some(why) = plain.or(refused) {
            return Err(format!(
                "TLS with {what} failed: {why} (check the rediss:// host and port, \
                 HERALD_REDIS_CA_FILE, HERALD_REDIS_CERT_FILE and HERALD_REDIS_KEY_FILE)"
            ));
        }
        match attempt {
            Ok(c) => return Ok(c),
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff.delay(), "{what} unreachable at start-up; retrying");
                backoff.sleep().await;
            }
        }
    }
}

/// Why TLS with a plain Redis failed.
fn plain_redis(host: &str, port: u16) -> String {
    format!("{host}:{port} answers plain-text Redis commands: it has no TLS")
}

/// How long a TLS connection attempt at start-up may go unfinished before the
/// address is asked, in plain text, whether it is a Redis without TLS. A TLS
/// handshake that works is done well within it, so a TLS Redis is not asked (it
/// would log the plain-text `PING` as a failed handshake).
const PLAIN_CHECK_AFTER: Duration = Duration::from_secs(1);

#[async_trait]
impl<T: Transport> Broker for T {
    fn kind(&self) -> &'static str {
        T::KIND
    }

    async fn publish(&self, group: &GroupName, delivery: Arc<Delivery>) -> Result<(), BrokerError> {
        let core = self.core();
        fail_fast::<T>(core)?;
        let channel = core.channel(group);
        send(
            self,
            &channel,
            &wire::encode(&delivery, &channel, core.trust.key()),
        )
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
            let channel = core.channel(group);
            let payload = wire::encode(delivery, &channel, core.trust.key());
            pipe.cmd(T::PUBLISH).arg(channel).arg(payload).ignore();
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

    /// Queues `group` for the [`unsubscriber`], which sends it with the others of
    /// its batch.
    fn unsubscribe(&self, group: GroupName) {
        let core = self.core();
        let mut unwanted = core.unwanted.lock().expect("unwanted groups");
        unwanted.push(group);
        if unwanted.len() == 1 {
            core.unwanted_added.notify_one();
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

    /// A transport whose subscriptions complete one per permit of `gate`, and whose
    /// unsubscriptions one per permit of `ungate`.
    struct Fake {
        core: PubSubCore<()>,
        publisher: NoRedis,
        gate: Semaphore,
        ungate: Semaphore,
        listened: StdMutex<Vec<Vec<String>>>,
        unlistened: StdMutex<Vec<Vec<String>>>,
        /// Subscriber connections opened.
        opens: AtomicU64,
        /// Opening a subscriber fails.
        unreachable: AtomicBool,
        /// Subscribing fails.
        refused: AtomicBool,
        /// An opened subscriber is lost at once (else it stays up).
        flapping: AtomicBool,
        /// What the next opened subscriber receives, when the test drives it.
        pushes: StdMutex<Option<tokio::sync::mpsc::UnboundedReceiver<Received<FakeMessage>>>>,
    }

    struct FakeMessage;

    impl Message for FakeMessage {
        fn channel(&self) -> &str {
            ""
        }
        fn payload(&self) -> &[u8] {
            b""
        }
    }

    fn down() -> redis::RedisError {
        std::io::Error::other("down").into()
    }

    #[async_trait]
    impl Transport for Fake {
        type Publisher = NoRedis;
        type Sink = ();
        type Message = FakeMessage;
        const KIND: &'static str = "fake";
        const NAME: &'static str = "Fake";
        const PUBLISH: &'static str = "PUBLISH";
        const PIPELINE: bool = false;
        const REVOKES: bool = true;

        fn core(&self) -> &PubSubCore<()> {
            &self.core
        }

        fn publisher(&self) -> &NoRedis {
            &self.publisher
        }

        async fn open(&self) -> redis::RedisResult<((), Inbox<FakeMessage>)> {
            self.opens.fetch_add(1, Ordering::Relaxed);
            if self.unreachable.load(Ordering::Relaxed) {
                return Err(down());
            }
            let inbox = if let Some(rx) = self.pushes.lock().unwrap().take() {
                futures_util::stream::unfold(rx, |mut rx| async move {
                    rx.recv().await.map(|r| (r, rx))
                })
                .boxed()
            } else if self.flapping.load(Ordering::Relaxed) {
                futures_util::stream::empty().boxed()
            } else {
                futures_util::stream::pending().boxed()
            };
            Ok(((), inbox))
        }

        async fn listen(&self, _: &mut (), channels: Vec<String>) -> redis::RedisResult<()> {
            if self.refused.load(Ordering::Relaxed) {
                return Err(down());
            }
            self.gate.acquire().await.expect("open").forget();
            self.listened.lock().unwrap().push(channels);
            Ok(())
        }

        async fn unlisten(&self, _: &mut (), channels: Vec<String>) -> redis::RedisResult<()> {
            self.ungate.acquire().await.expect("open").forget();
            self.unlistened.lock().unwrap().push(channels);
            Ok(())
        }
    }

    fn test_trust() -> Trust {
        let issued = crate::issued::IssuedIds::fixed(0, Arc::new(AtomicU64::new(0)));
        let metrics = Arc::new(crate::metrics::Metrics::new());
        Trust::new(None, 16 * 1024, Arc::new(issued), metrics)
    }

    fn fake() -> Arc<Fake> {
        Arc::new(Fake {
            core: PubSubCore::new(
                NodeSide {
                    hub: Arc::new(Hub::new()),
                    prefix: "h".into(),
                    node_id: "n1".into(),
                    trust: test_trust(),
                },
                None,
            ),
            publisher: NoRedis,
            gate: Semaphore::new(1),
            ungate: Semaphore::new(Semaphore::MAX_PERMITS),
            listened: StdMutex::new(Vec::new()),
            unlistened: StdMutex::new(Vec::new()),
            opens: AtomicU64::new(0),
            unreachable: AtomicBool::new(false),
            refused: AtomicBool::new(false),
            flapping: AtomicBool::new(false),
            pushes: StdMutex::new(None),
        })
    }

    async fn connected() -> Arc<Fake> {
        let fake = fake();
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
        fake.unsubscribe(g.clone());
        assert!(!unsubscribe_batch(&*fake).await);
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

    fn member(fake: &Fake, group: &str) -> (GroupName, Arc<crate::outbox::Outbox>) {
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let g = GroupName::parse(group).unwrap();
        let o = crate::outbox::Outbox::new(10, Duration::from_secs(10), metrics);
        fake.core.hub.join(&g, &o);
        (g, o)
    }

    /// A disconnect burst: every group that lost its last member goes out in one
    /// unsubscribe, and the groups are forgotten (a later join subscribes again).
    #[tokio::test]
    async fn groups_left_together_share_one_unsubscribe() {
        let fake = connected().await;
        let members: Vec<_> = (0..100)
            .map(|i| member(&fake, &format!("user_{i}")))
            .collect();
        fake.gate.add_permits(100);
        for (g, _) in &members {
            fake.subscribe(g).await.unwrap();
        }
        for (g, o) in &members {
            assert!(fake.core.hub.leave(g, o.id));
            fake.unsubscribe(g.clone());
        }
        assert!(!unsubscribe_batch(&*fake).await, "nothing left queued");
        let unlistened = fake.unlistened.lock().unwrap().clone();
        assert_eq!(unlistened.len(), 1, "one command for the burst");
        assert_eq!(unlistened[0].len(), 100);
        assert!(fake.core.sub.lock().await.groups.is_empty());
    }

    /// More than a batch: the lock is let go between batches.
    #[tokio::test]
    async fn a_long_burst_goes_out_in_batches() {
        let fake = connected().await;
        for i in 0..UNSUBSCRIBE_BATCH + 10 {
            fake.unsubscribe(GroupName::parse(format!("user_{i}")).unwrap());
        }
        assert!(unsubscribe_batch(&*fake).await, "more queued");
        assert!(!unsubscribe_batch(&*fake).await);
        let sizes: Vec<usize> = fake
            .unlistened
            .lock()
            .unwrap()
            .iter()
            .map(Vec::len)
            .collect();
        assert_eq!(sizes, vec![UNSUBSCRIBE_BATCH, 10]);
    }

    /// A member that joins before the queued unsubscribe goes out keeps the
    /// subscription: no unsubscribe, and no new subscribe either.
    #[tokio::test]
    async fn a_join_before_the_batch_keeps_the_subscription() {
        let fake = connected().await;
        let (g, first) = member(&fake, "org_1");
        fake.gate.add_permits(1);
        fake.subscribe(&g).await.unwrap();
        assert!(fake.core.hub.leave(&g, first.id));
        fake.unsubscribe(g.clone());
        let (_, _again) = member(&fake, "org_1");
        fake.subscribe(&g).await.unwrap();
        assert!(!unsubscribe_batch(&*fake).await);
        assert!(fake.unlistened.lock().unwrap().is_empty());
        assert_eq!(group_listens(&fake), 1, "still confirmed: no round trip");
        assert!(fake.core.sub.lock().await.groups.contains(&g));
    }

    /// A member that joins while the unsubscribe is in flight waits for the lock,
    /// finds the group forgotten and subscribes it again.
    #[tokio::test]
    async fn a_join_racing_the_unsubscribe_subscribes_again() {
        let fake = connected().await;
        let (g, first) = member(&fake, "org_1");
        fake.gate.add_permits(1);
        fake.subscribe(&g).await.unwrap();
        assert!(fake.core.hub.leave(&g, first.id));
        fake.unsubscribe(g.clone());
        fake.ungate.forget_permits(Semaphore::MAX_PERMITS);
        let batch = tokio::spawn({
            let fake = fake.clone();
            async move { unsubscribe_batch(&*fake).await }
        });
        while fake.core.sub.try_lock().is_ok() {
            tokio::task::yield_now().await;
        }
        let (_, _again) = member(&fake, "org_1");
        let join = tokio::spawn({
            let (fake, g) = (fake.clone(), g.clone());
            async move { fake.subscribe(&g).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!join.is_finished(), "the join waits for the unsubscribe");
        fake.gate.add_permits(1);
        fake.ungate.add_permits(1);
        batch.await.unwrap();
        join.await.unwrap().unwrap();
        assert_eq!(*fake.unlistened.lock().unwrap(), vec![vec!["h:g:org_1"]]);
        assert_eq!(group_listens(&fake), 2, "subscribed again after it");
        assert!(fake.core.sub.lock().await.groups.contains(&g));
    }

    /// Runs the subscriber loop of `fake` for 10 s of (paused) time; returns how
    /// many subscriber connections it opened.
    async fn opens_in_ten_seconds(fake: &Arc<Fake>) -> u64 {
        fake.gate.add_permits(Semaphore::MAX_PERMITS - 1);
        let tasks = Tasks::new();
        tasks.spawn("subscriber", subscriber(Arc::downgrade(fake)));
        tokio::time::sleep(Duration::from_secs(10)).await;
        tasks.stop(Duration::from_secs(1)).await;
        fake.opens.load(Ordering::Relaxed)
    }

    /// Backoff of 100 ms doubling to 5 s, each wait at least half of it: at most
    /// 0.05+0.1+0.2+0.4+0.8+1.6 s for the first seven attempts, then one per 2.5 s.
    const MOST_ATTEMPTS_IN_TEN_SECONDS: u64 = 10;

    #[tokio::test(start_paused = true)]
    async fn an_unreachable_redis_is_retried_with_backoff() {
        let fake = fake();
        fake.unreachable.store(true, Ordering::Relaxed);
        let opens = opens_in_ten_seconds(&fake).await;
        assert!(
            (5..=MOST_ATTEMPTS_IN_TEN_SECONDS).contains(&opens),
            "{opens} attempts"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_resubscription_is_retried_with_backoff() {
        let fake = fake();
        fake.refused.store(true, Ordering::Relaxed);
        let opens = opens_in_ten_seconds(&fake).await;
        assert!(
            (5..=MOST_ATTEMPTS_IN_TEN_SECONDS).contains(&opens),
            "{opens} attempts"
        );
        assert_eq!(fake.core.health(), BrokerHealth::Down);
    }

    /// A subscriber lost as soon as it is up does not reset the backoff, so a
    /// flapping Redis costs a few resyncs, not ten a second.
    #[tokio::test(start_paused = true)]
    async fn a_flapping_subscriber_backs_off_too() {
        let fake = fake();
        fake.flapping.store(true, Ordering::Relaxed);
        let mut resyncs = fake.core.resyncs.subscribe();
        let opens = opens_in_ten_seconds(&fake).await;
        assert!(
            (5..=MOST_ATTEMPTS_IN_TEN_SECONDS).contains(&opens),
            "{opens} attempts"
        );
        assert!(*resyncs.borrow_and_update() < opens);
    }

    /// A SUBSCRIBE that Redis never answers (a paused Redis) gives up after
    /// COMMAND_TIMEOUT instead of holding the subscriber lock: the join fails, the
    /// joins after it return at once, and the subscriber reconnects.
    #[tokio::test(start_paused = true)]
    async fn an_unanswered_subscribe_abandons_the_subscriber() {
        let fake = fake();
        let tasks = Tasks::new();
        tasks.spawn("subscriber", subscriber(Arc::downgrade(&fake)));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(fake.opens.load(Ordering::Relaxed), 1);
        // The gate's one permit went to the resubscription: the next SUBSCRIBE hangs.
        let (g, _member) = member(&fake, "org_1");
        let started = tokio::time::Instant::now();
        let subscribed = tokio::time::timeout(COMMAND_TIMEOUT * 2, fake.subscribe(&g)).await;
        assert!(subscribed.expect("gave up by itself").is_err());
        assert_eq!(started.elapsed(), COMMAND_TIMEOUT);
        assert_eq!(fake.core.health(), BrokerHealth::Down);
        let (other, _member) = member(&fake, "org_2");
        fake.subscribe(&other).await.unwrap();
        assert_eq!(
            started.elapsed(),
            COMMAND_TIMEOUT,
            "no wait without a subscriber"
        );
        // Redis answers again: a new subscriber, with both groups resubscribed.
        fake.gate.add_permits(1);
        tokio::time::sleep(RECONNECT_FIRST * 2).await;
        assert_eq!(fake.opens.load(Ordering::Relaxed), 2);
        let resubscribed = fake.listened.lock().unwrap().last().cloned().unwrap();
        assert!(
            resubscribed.contains(&"h:g:org_1".to_owned()),
            "{resubscribed:?}"
        );
        assert!(
            resubscribed.contains(&"h:g:org_2".to_owned()),
            "{resubscribed:?}"
        );
        tasks.stop(Duration::from_secs(1)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_subscriber_connects_once() {
        let fake = fake();
        assert_eq!(opens_in_ten_seconds(&fake).await, 1);
    }

    /// A Redis Cluster echoes the node's own SUNSUBSCRIBE as an unsubscribe push; if
    /// the group has a member again by then, that echo is not a revocation and must
    /// not restart the subscriber. A revocation the node did not ask for still does.
    #[tokio::test(start_paused = true)]
    async fn the_echo_of_an_own_unsubscribe_is_not_a_revocation() {
        let fake = fake();
        let (push, pushes) = tokio::sync::mpsc::unbounded_channel();
        *fake.pushes.lock().unwrap() = Some(pushes);
        fake.gate.add_permits(Semaphore::MAX_PERMITS - 1);
        let tasks = Tasks::new();
        tasks.spawn("subscriber", subscriber(Arc::downgrade(&fake)));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(fake.opens.load(Ordering::Relaxed), 1);

        let (g, first) = member(&fake, "org_1");
        fake.subscribe(&g).await.unwrap();
        assert!(fake.core.hub.leave(&g, first.id));
        fake.unsubscribe(g.clone());
        assert!(!unsubscribe_batch(&*fake).await);
        let channel = fake.unlistened.lock().unwrap()[0][0].clone();
        // A member again, subscribed anew, before the echo is read.
        let (_, _again) = member(&fake, "org_1");
        fake.subscribe(&g).await.unwrap();
        push.send(Received::Revoked(channel.clone())).unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            fake.opens.load(Ordering::Relaxed),
            1,
            "the echo restarted nothing"
        );

        // The same channel revoked unasked: the subscriber starts over.
        push.send(Received::Revoked(channel)).unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            fake.opens.load(Ordering::Relaxed),
            2,
            "a real revocation restarts"
        );
        tasks.stop(Duration::from_secs(1)).await;
    }
}
