//! Prometheus metrics: one registry per node, every handle resolved once at start-up.
//!
//! Hot-path code holds `Arc<Metrics>` and touches plain atomics (counters, gauges) or
//! one histogram per observation; no metric is ever looked up by name per message.
//! Counters are registered without `_total`: prometheus-client appends it.

use std::hash::Hash;
use std::marker::PhantomData;
use std::sync::Mutex;

use herald_shared::dropped::DropReason;
use herald_shared::health::{BrokerHealth, Readiness, StoreHealth};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Latency buckets from 50 µs to 10 s at 1, 1.5, 2, 3, 5, 7 per decade (at most
/// 1.67x apart), so p50 and p99 resolve to within a bucket anywhere between 100 µs
/// and 5 s, with readable `le` labels.
fn latency_buckets() -> impl Iterator<Item = f64> {
    const STEPS: [f64; 6] = [1.0, 1.5, 2.0, 3.0, 5.0, 7.0];
    (-5..=1)
        .flat_map(|exp| STEPS.iter().map(move |s| s * 10f64.powi(exp)))
        .filter(|b| (5e-5..=10.0).contains(b))
        // Round away float noise (0.30000000000000004) so labels read cleanly.
        .map(|b| (b * 1e6).round() / 1e6)
}

fn histogram() -> Histogram {
    Histogram::new(latency_buckets())
}

/// A label whose values are known in advance. Its family gets a series, at zero, for
/// each value when it is registered, so every documented series is in the first
/// scrape (rates, dashboards and `absent()` alerts work before the first event), and
/// an update indexes a child resolved at start-up instead of looking up a label set.
pub trait KnownValues: Copy + 'static {
    /// Every value, in the order of [`KnownValues::index`].
    const ALL: &'static [Self];
    /// The label value as exported.
    fn label(self) -> &'static str;
    /// The value's position in [`KnownValues::ALL`].
    fn index(self) -> usize;
}

/// The children of one labelled family, one per known value of its label.
pub struct ByLabel<K, M> {
    children: Box<[M]>,
    _values: PhantomData<K>,
}

impl<K: KnownValues, M: Clone> ByLabel<K, M> {
    /// Creates (at zero) and keeps the series of every known value in `family`;
    /// `label` makes the family's label set from a value.
    fn resolve<L, C>(family: &Family<L, M, C>, label: impl Fn(K) -> L) -> Self
    where
        L: Clone + Hash + Eq,
        C: MetricConstructor<M>,
    {
        let children = K::ALL
            .iter()
            .map(|k| family.get_or_create_owned(&label(*k)))
            .collect();
        Self {
            children,
            _values: PhantomData,
        }
    }

    /// The series of `value`.
    pub fn get(&self, value: K) -> &M {
        &self.children[value.index()]
    }
}

/// Implements [`KnownValues`] for a fieldless enum, with each variant's label.
macro_rules! known_values {
    ($ty:ident { $($variant:ident => $label:literal),+ $(,)? }) => {
        impl KnownValues for $ty {
            const ALL: &'static [Self] = &[$($ty::$variant),+];
            fn label(self) -> &'static str {
                match self {
                    $($ty::$variant => $label),+
                }
            }
            fn index(self) -> usize {
                self as usize
            }
        }
    };
}

/// The reasons of `herald_broker_dropped_total`, defined in `shared`.
impl KnownValues for DropReason {
    const ALL: &'static [Self] = DropReason::ALL;
    fn label(self) -> &'static str {
        self.as_str()
    }
    fn index(self) -> usize {
        Self::ALL
            .iter()
            .position(|r| *r == self)
            .expect("every reason is in ALL")
    }
}

/// What `herald_published_total{kind}` counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// A notification stored.
    Notification,
    /// An event accepted.
    Event,
}
known_values!(Published { Notification => "notification", Event => "event" });

/// A store operation: the `op` of `herald_store_latency_seconds` and
/// `herald_store_errors_total`. One variant per method of the `Store` trait that
/// touches the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOp {
    Ping,
    NewestIssuedId,
    Insert,
    Unread,
    AfterMany,
    List,
    MarkRead,
    MarkAllRead,
    OrderLock,
    Audit,
    AuditLog,
}
known_values!(StoreOp {
    Ping => "ping",
    NewestIssuedId => "newest_issued_id",
    Insert => "insert",
    Unread => "unread",
    AfterMany => "after_many",
    List => "list",
    MarkRead => "mark_read",
    MarkAllRead => "mark_all_read",
    OrderLock => "order_lock",
    Audit => "audit",
    AuditLog => "audit_log",
});

/// A broker operation that can fail: the `op` of `herald_broker_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerOp {
    /// Notification and event publishes the broker refused.
    Publish,
}
known_values!(BrokerOp { Publish => "publish" });

/// The state of an open connection: `herald_connections_by_state{state}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Upgraded; the opening frames are not sent yet.
    Opening,
    /// Opening frames sent.
    Open,
}
known_values!(ConnState { Opening => "opening", Open => "open" });

/// `herald_redis_health{state}`: 1 for the broker's health now, 0 for the others.
impl KnownValues for BrokerHealth {
    const ALL: &'static [Self] = BrokerHealth::ALL;
    fn label(self) -> &'static str {
        self.as_str()
    }
    fn index(self) -> usize {
        self as usize
    }
}

/// The HTTP status of a refused upgrade or SSE stream:
/// `herald_upgrades_refused_total{code}`. These are the statuses the checks before
/// an upgrade answer with (PROTOCOL.md 3.1); another status (a malformed upgrade
/// that the WebSocket layer itself refuses) is still counted, from its first time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    BadRequest,
    Unauthorized,
    Forbidden,
    TooMany,
    Unavailable,
}
known_values!(Refusal {
    BadRequest => "400",
    Unauthorized => "401",
    Forbidden => "403",
    TooMany => "429",
    Unavailable => "503",
});

impl Refusal {
    /// The known refusal of `status`, if it is one.
    pub fn of(status: u16) -> Option<Self> {
        Self::ALL.iter().copied().find(|r| r.status() == status)
    }

    /// The HTTP status.
    pub fn status(self) -> u16 {
        match self {
            Self::BadRequest => 400,
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
            Self::TooMany => 429,
            Self::Unavailable => 503,
        }
    }
}

/// The labels of the close codes RFC 6455 defines, then the client ranges and the rest.
const CLOSE_LABELS: [&str; 19] = [
    "1000", "1001", "1002", "1003", "1004", "1005", "1006", "1007", "1008", "1009", "1010", "1011",
    "1012", "1013", "1014", "1015", "3xxx", "4xxx", "other",
];

/// The `code` label of a close (`herald_disconnects_total{code}`). The codes RFC 6455
/// defines (1000 to 1015) are themselves; the codes a client may choose itself (3000
/// to 4999) are counted by range, `3xxx` and `4xxx`, and anything else is `other`: a
/// label per code a client sent would let clients make thousands of series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseBucket(u8);

impl CloseBucket {
    /// The bucket of close code `code`.
    pub fn of(code: u16) -> Self {
        Self(match code {
            1000..=1015 => (code - 1000) as u8,
            3000..=3999 => 16,
            4000..=4999 => 17,
            _ => 18,
        })
    }
}

impl KnownValues for CloseBucket {
    const ALL: &'static [Self] = &{
        let mut all = [CloseBucket(0); CLOSE_LABELS.len()];
        let mut i = 0;
        while i < all.len() {
            all[i] = CloseBucket(i as u8);
            i += 1;
        }
        all
    };
    fn label(self) -> &'static str {
        CLOSE_LABELS[usize::from(self.0)]
    }
    fn index(self) -> usize {
        usize::from(self.0)
    }
}

/// An HTTP status as a label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    code: u16,
}

/// A close code's bucket as a label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CloseLabel {
    code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

/// Why a message read from Redis was dropped: a [`DropReason`]'s name.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabel {
    node: String,
    version: String,
}

/// Every metric of a node.
pub struct Metrics {
    registry: Mutex<Registry>,
    /// Connections accepted since start, WebSocket upgrades and SSE streams
    /// (`websocket_connections_total`, the contract's name).
    pub connections_accepted: Counter,
    /// Open connections now (`herald_connections`).
    pub connections: Gauge,
    /// Connections by state: `opening` (upgraded, opening frames not yet sent) and
    /// `open`, the children of `herald_connections_by_state`.
    pub connections_opening: Gauge,
    pub connections_open: Gauge,
    /// Upgrades and SSE streams refused, by HTTP status: see [`Metrics::refused`].
    upgrades_refused: Family<StatusLabel, Counter>,
    upgrades_refused_known: ByLabel<Refusal, Counter>,
    /// Closes by WebSocket close code, client-chosen codes bucketed
    /// ([`CloseBucket`]): see [`Metrics::closed`].
    disconnects: ByLabel<CloseBucket, Counter>,
    /// Client frame handling time (`websocket_message_duration_seconds`).
    pub message_duration: Histogram,
    /// Publish accepted to frame written (`herald_delivery_latency_seconds`).
    pub delivery_latency: Histogram,
    /// Frames written to sockets that carried a notification or event.
    pub delivered: Counter,
    /// Notifications stored and events accepted, by kind.
    pub published: ByLabel<Published, Counter>,
    /// Publish requests stored together in one transaction ([`crate::publish`]'s
    /// write combining): how much concurrent publishes share.
    pub publish_group_requests: Histogram,
    pub slow_consumer_disconnects: Counter,
    /// Frames queued across all connections now.
    pub queue_depth: Gauge,
    /// Configured capacity of one connection's queue.
    pub queue_capacity: Gauge,
    /// Connections that resumed with `after`, and notifications they were replayed.
    pub resumes: Counter,
    pub resume_replayed: Counter,
    pub draining: Gauge,
    pub fd_open: Gauge,
    pub fd_limit: Gauge,
    /// tokio worker threads the node runs on (`HERALD_WORKER_THREADS`, or the
    /// embedding host's runtime).
    pub worker_threads: Gauge,
    /// Connection capacity of this node (configured, or fd limit minus the reserve and
    /// the bound on pending connections).
    pub capacity: Gauge,
    /// Connections on the public listener that are not sessions now, and those
    /// refused over their bound (`HERALD_MAX_PENDING_CONNECTIONS`).
    pub pending_connections: Gauge,
    pub pending_refused: Counter,
    /// Store operations that failed, and store latency, by operation.
    pub store_errors: ByLabel<StoreOp, Counter>,
    pub store_latency: ByLabel<StoreOp, Histogram>,
    /// Broker operations that failed, by operation.
    pub broker_errors: ByLabel<BrokerOp, Counter>,
    /// Client frames refused by the rate limiter.
    pub rate_limited: Counter,
    /// Client writes refused to keep the store's capacity for the backend API.
    pub client_writes_refused: Counter,
    /// Server-Sent Events streams opened since start (also counted as connections).
    pub sse_streams: Counter,
    /// Times the broker resubscribed after losing its subscriptions (sessions then
    /// catch up from the store).
    pub broker_resyncs: Counter,
    /// Readiness and its parts, as `/readyz` and the status object say them, set
    /// at each scrape ([`Metrics::sample_health`]): a scraper sees what a load
    /// balancer sees, and an alert can say which part failed.
    ready: Gauge,
    store_up: Gauge,
    redis_health: ByLabel<BrokerHealth, Gauge>,
    /// Connections the running drain has not yet told to close (`drain_remaining`).
    pub drain_remaining: Gauge,
    /// `herald_build_info{node, version} 1`, set once the node has its id.
    info: Family<InfoLabel, Gauge>,
    /// Messages read from Redis and dropped, by [`DropReason`].
    broker_dropped: ByLabel<DropReason, Counter>,
}

impl Metrics {
    pub fn new() -> Self {
        let by_state = Family::<StateLabel, Gauge>::default();
        let upgrades_refused = Family::<StatusLabel, Counter>::default();
        let disconnects = Family::<CloseLabel, Counter>::default();
        let published = Family::<KindLabel, Counter>::default();
        let store_errors = Family::<OpLabel, Counter>::default();
        let store_latency = Family::<OpLabel, Histogram>::new_with_constructor(histogram);
        let broker_errors = Family::<OpLabel, Counter>::default();
        let redis_health = Family::<StateLabel, Gauge>::default();
        let broker_dropped = Family::<ReasonLabel, Counter>::default();
        let states = ByLabel::resolve(&by_state, |s: ConnState| StateLabel { state: s.label() });
        let m = Self {
            registry: Mutex::new(Registry::default()),
            connections_accepted: Counter::default(),
            connections: Gauge::default(),
            connections_opening: states.get(ConnState::Opening).clone(),
            connections_open: states.get(ConnState::Open).clone(),
            upgrades_refused_known: ByLabel::resolve(&upgrades_refused, |r: Refusal| StatusLabel {
                code: r.status(),
            }),
            upgrades_refused: upgrades_refused.clone(),
            disconnects: ByLabel::resolve(&disconnects, |c: CloseBucket| CloseLabel {
                code: c.label(),
            }),
            message_duration: histogram(),
            delivery_latency: histogram(),
            delivered: Counter::default(),
            published: ByLabel::resolve(&published, |k: Published| KindLabel { kind: k.label() }),
            publish_group_requests: Histogram::new([
                1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0,
            ]),
            slow_consumer_disconnects: Counter::default(),
            queue_depth: Gauge::default(),
            queue_capacity: Gauge::default(),
            resumes: Counter::default(),
            resume_replayed: Counter::default(),
            draining: Gauge::default(),
            fd_open: Gauge::default(),
            fd_limit: Gauge::default(),
            worker_threads: Gauge::default(),
            capacity: Gauge::default(),
            pending_connections: Gauge::default(),
            pending_refused: Counter::default(),
            store_errors: ByLabel::resolve(&store_errors, |o: StoreOp| OpLabel { op: o.label() }),
            store_latency: ByLabel::resolve(&store_latency, |o: StoreOp| OpLabel { op: o.label() }),
            broker_errors: ByLabel::resolve(&broker_errors, |o: BrokerOp| OpLabel {
                op: o.label(),
            }),
            rate_limited: Counter::default(),
            client_writes_refused: Counter::default(),
            sse_streams: Counter::default(),
            broker_resyncs: Counter::default(),
            ready: Gauge::default(),
            store_up: Gauge::default(),
            redis_health: ByLabel::resolve(&redis_health, |h: BrokerHealth| StateLabel {
                state: h.label(),
            }),
            drain_remaining: Gauge::default(),
            info: Family::default(),
            broker_dropped: ByLabel::resolve(&broker_dropped, |r: DropReason| ReasonLabel {
                reason: r.as_str(),
            }),
        };
        {
            let mut r = m.registry.lock().expect("fresh lock");
            r.register(
                "websocket_connections",
                "Connections accepted: WebSocket upgrades and SSE streams",
                m.connections_accepted.clone(),
            );
            r.register(
                "herald_connections",
                "Open WebSocket connections",
                m.connections.clone(),
            );
            r.register(
                "herald_connections_by_state",
                "Open WebSocket connections by state (opening, open)",
                by_state,
            );
            r.register(
                "herald_upgrades_refused",
                "Upgrades refused, by HTTP status",
                upgrades_refused,
            );
            r.register(
                "herald_disconnects",
                "Connections closed, by close code",
                disconnects,
            );
            r.register(
                "websocket_message_duration_seconds",
                "Client frame handling time",
                m.message_duration.clone(),
            );
            r.register(
                "herald_delivery_latency_seconds",
                "Publish accepted to frame written",
                m.delivery_latency.clone(),
            );
            r.register(
                "herald_messages_delivered",
                "Notification and event frames written to clients",
                m.delivered.clone(),
            );
            r.register(
                "herald_published",
                "Notifications stored and events accepted, by kind",
                published,
            );
            r.register(
                "herald_publish_group_requests",
                "Publish requests stored together in one transaction",
                m.publish_group_requests.clone(),
            );
            r.register(
                "herald_slow_consumer_disconnects",
                "Connections closed with 1013",
                m.slow_consumer_disconnects.clone(),
            );
            r.register(
                "herald_queue_depth",
                "Frames queued for clients across all connections",
                m.queue_depth.clone(),
            );
            r.register(
                "herald_queue_capacity",
                "Frames one connection's queue may hold",
                m.queue_capacity.clone(),
            );
            r.register(
                "herald_resumes",
                "Connections that resumed with after",
                m.resumes.clone(),
            );
            r.register(
                "herald_resume_replayed",
                "Notifications replayed to resuming connections",
                m.resume_replayed.clone(),
            );
            r.register(
                "herald_draining",
                "1 while draining or drained",
                m.draining.clone(),
            );
            r.register(
                "herald_fd_open",
                "Open file descriptors of the process",
                m.fd_open.clone(),
            );
            r.register(
                "herald_fd_limit",
                "Soft open-file limit of the process",
                m.fd_limit.clone(),
            );
            r.register(
                "herald_worker_threads",
                "tokio worker threads the node runs on",
                m.worker_threads.clone(),
            );
            r.register(
                "herald_connection_capacity",
                "Connections this node accepts",
                m.capacity.clone(),
            );
            r.register(
                "herald_pending_connections",
                "Connections on the public listener that are not sessions",
                m.pending_connections.clone(),
            );
            r.register(
                "herald_pending_refused",
                "Connections refused over the bound on pending connections",
                m.pending_refused.clone(),
            );
            r.register(
                "herald_store_errors",
                "Store operations that failed",
                store_errors,
            );
            r.register(
                "herald_store_latency_seconds",
                "Store operation latency",
                store_latency,
            );
            r.register(
                "herald_broker_errors",
                "Broker operations that failed",
                broker_errors,
            );
            r.register(
                "herald_rate_limited",
                "Client frames refused by the rate limiter",
                m.rate_limited.clone(),
            );
            r.register(
                "herald_client_writes_refused",
                "Client writes (mark_read, mark_all_read) refused: the user's write budget or the store's share for clients was spent",
                m.client_writes_refused.clone(),
            );
            r.register(
                "herald_sse_streams",
                "Server-Sent Events streams opened",
                m.sse_streams.clone(),
            );
            r.register(
                "herald_broker_resyncs",
                "Times every session was told to catch up from the store (at most once a second)",
                m.broker_resyncs.clone(),
            );
            r.register(
                "herald_ready",
                "1 while /readyz answers 200: serving, store up, Redis not down",
                m.ready.clone(),
            );
            r.register(
                "herald_store_up",
                "1 while the store's last probe succeeded",
                m.store_up.clone(),
            );
            r.register(
                "herald_redis_health",
                "1 for the broker's health now (off on a single node, up, down)",
                redis_health,
            );
            r.register(
                "herald_drain_remaining",
                "Connections the running drain has not yet told to close",
                m.drain_remaining.clone(),
            );
            r.register(
                "herald_build_info",
                "1, labelled with the node id and the version",
                m.info.clone(),
            );
            r.register(
                "herald_broker_dropped",
                "Messages read from Redis and dropped, by reason",
                broker_dropped,
            );
        }
        m
    }

    /// Labels `herald_build_info` with the node's id and version.
    pub fn set_info(&self, node: &str, version: &str) {
        self.info
            .get_or_create(&InfoLabel {
                node: node.to_owned(),
                version: version.to_owned(),
            })
            .set(1);
    }

    /// Sets the readiness gauges from `r`.
    pub fn sample_health(&self, r: &Readiness) {
        self.ready.set(i64::from(r.is_ready()));
        self.store_up.set(i64::from(r.store == StoreHealth::Up));
        for &h in BrokerHealth::ALL {
            self.redis_health.get(h).set(i64::from(h == r.redis));
        }
    }

    /// The registry in Prometheus text format (typed so prometheus-parse reads it).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let r = self.registry.lock().expect("metrics lock");
        prometheus_client::encoding::prometheus_text::encode(&mut out, &r)
            .expect("writing to a String cannot fail");
        out
    }

    /// Counts `n` messages read from Redis and dropped for `reason`.
    pub fn broker_dropped(&self, reason: DropReason, n: u64) {
        if n > 0 {
            self.broker_dropped.get(reason).inc_by(n);
        }
    }

    /// Records a closed connection with its close code.
    pub fn closed(&self, code: u16) {
        self.disconnects.get(CloseBucket::of(code)).inc();
        if code == herald_shared::close::TRY_AGAIN_LATER {
            self.slow_consumer_disconnects.inc();
        }
    }

    /// Records an upgrade or SSE stream refused with HTTP `status`.
    pub fn refused(&self, status: u16) {
        match Refusal::of(status) {
            Some(r) => self.upgrades_refused_known.get(r).inc(),
            None => self
                .upgrades_refused
                .get_or_create(&StatusLabel { code: status })
                .inc(),
        };
    }
}
impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_100us_to_5s_finely() {
        let b: Vec<f64> = latency_buckets().collect();
        assert_eq!(b.first(), Some(&5e-5));
        assert_eq!(b.last(), Some(&10.0));
        for w in b.windows(2) {
            assert!(w[1] / w[0] <= 1.67 && w[1] > w[0], "{w:?}");
        }
    }

    #[test]
    fn close_codes_are_bucketed() {
        let label = |code| CloseBucket::of(code).label();
        assert_eq!(label(1000), "1000");
        assert_eq!(label(1013), "1013");
        assert_eq!(label(1015), "1015");
        assert_eq!(label(1016), "other");
        assert_eq!(label(2999), "other");
        assert_eq!(label(3000), "3xxx");
        assert_eq!(label(4999), "4xxx");
        assert_eq!(label(5000), "other");
        assert_eq!(label(999), "other");
    }

    /// Each value's index is its place in `ALL`, so `ByLabel::get` finds its series.
    fn indexes_match<K: KnownValues + PartialEq + std::fmt::Debug>() {
        for (i, k) in K::ALL.iter().enumerate() {
            assert_eq!(k.index(), i, "{k:?}");
        }
    }

    #[test]
    fn known_values_index_their_place() {
        indexes_match::<Published>();
        indexes_match::<StoreOp>();
        indexes_match::<BrokerOp>();
        indexes_match::<ConnState>();
        indexes_match::<Refusal>();
        indexes_match::<CloseBucket>();
        assert_eq!(CloseBucket::ALL.len(), 19);
        assert_eq!(Refusal::of(429), Some(Refusal::TooMany));
        assert_eq!(Refusal::of(426), None);
    }

    /// A fresh registry has every labelled series at zero, and updates land on the
    /// series of their own label.
    #[test]
    fn labelled_series_start_at_zero() {
        let m = Metrics::new();
        let text = m.encode();
        for line in [
            "herald_published_total{kind=\"notification\"} 0",
            "herald_published_total{kind=\"event\"} 0",
            "herald_disconnects_total{code=\"1000\"} 0",
            "herald_disconnects_total{code=\"4xxx\"} 0",
            "herald_disconnects_total{code=\"other\"} 0",
            "herald_upgrades_refused_total{code=\"503\"} 0",
            "herald_store_errors_total{op=\"insert\"} 0",
            "herald_store_errors_total{op=\"newest_issued_id\"} 0",
            "herald_store_latency_seconds_count{op=\"audit_log\"} 0",
            "herald_broker_errors_total{op=\"publish\"} 0",
            "herald_connections_by_state{state=\"opening\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        m.closed(4321);
        m.closed(1013);
        m.refused(426);
        m.published.get(Published::Event).inc_by(3);
        let text = m.encode();
        for line in [
            "herald_disconnects_total{code=\"4xxx\"} 1",
            "herald_disconnects_total{code=\"1013\"} 1",
            "herald_slow_consumer_disconnects_total 1",
            "herald_upgrades_refused_total{code=\"426\"} 1",
            "herald_published_total{kind=\"event\"} 3",
            "herald_published_total{kind=\"notification\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }

    #[test]
    fn counters_get_total_suffix() {
        let m = Metrics::new();
        m.connections_accepted.inc();
        let text = m.encode();
        assert!(text.contains("websocket_connections_total 1"), "{text}");
        assert!(
            text.contains("herald_delivery_latency_seconds_bucket{le=\"0.0003\"}"),
            "{text}"
        );
    }
}
