//! Prometheus metrics: one registry per node, every handle resolved once at start-up.
//!
//! Hot-path code holds `Arc<Metrics>` and touches plain atomics (counters, gauges) or
//! one histogram per observation; no metric is ever looked up by name per message.
//! Counters are registered without `_total`: prometheus-client appends it.

use std::sync::Mutex;

use herald_shared::dropped::DropReason;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
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

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: u16,
}

/// A close code as a label: see [`close_code_label`].
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CloseLabel {
    pub code: &'static str,
}

/// The `code` label of a close. The codes RFC 6455 defines (1000 to 1015) are
/// themselves; the codes a client may choose itself (3000 to 4999) are counted by
/// range, `3xxx` and `4xxx`, and anything else is `other`: a label per code a client
/// sent would let clients make thousands of series.
pub fn close_code_label(code: u16) -> &'static str {
    const DEFINED: [&str; 16] = [
        "1000", "1001", "1002", "1003", "1004", "1005", "1006", "1007", "1008", "1009", "1010",
        "1011", "1012", "1013", "1014", "1015",
    ];
    match code {
        1000..=1015 => DEFINED[usize::from(code - 1000)],
        3000..=3999 => "3xxx",
        4000..=4999 => "4xxx",
        _ => "other",
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

/// Why a message read from Redis was dropped: a [`DropReason`]'s name.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    pub op: &'static str,
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
    /// `open`.
    /// (Both are children of `connections_by_state`, resolved once: updating them is
    /// a plain atomic operation, no label lookup per connection.)
    pub connections_opening: Gauge,
    pub connections_open: Gauge,
    /// Upgrades and SSE streams refused, by HTTP status (400, 401, 403, 429, 503).
    pub upgrades_refused: Family<CodeLabel, Counter>,
    /// Closes by WebSocket close code, client-chosen codes bucketed
    /// ([`close_code_label`]).
    pub disconnects: Family<CloseLabel, Counter>,
    /// Client frame handling time (`websocket_message_duration_seconds`).
    pub message_duration: Histogram,
    /// Publish accepted to frame written (`herald_delivery_latency_seconds`).
    pub delivery_latency: Histogram,
    /// Frames written to sockets that carried a notification or event.
    pub delivered: Counter,
    /// Notifications stored and events accepted, by kind.
    pub published: Family<KindLabel, Counter>,
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
    /// Connection capacity of this node (configured, or fd limit minus the reserve and
    /// the bound on pending connections).
    pub capacity: Gauge,
    /// Connections on the public listener that are not sessions now, and those
    /// refused over their bound (`HERALD_MAX_PENDING_CONNECTIONS`).
    pub pending_connections: Gauge,
    pub pending_refused: Counter,
    /// Store operations that failed, and store latency, by operation.
    pub store_errors: Family<OpLabel, Counter>,
    pub store_latency: Family<OpLabel, Histogram>,
    /// Broker operations that failed, by operation.
    pub broker_errors: Family<OpLabel, Counter>,
    /// Client frames refused by the rate limiter.
    pub rate_limited: Counter,
    /// Client writes refused to keep the store's capacity for the backend API.
    pub client_writes_refused: Counter,
    /// Server-Sent Events streams opened since start (also counted as connections).
    pub sse_streams: Counter,
    /// Times the broker resubscribed after losing its subscriptions (sessions then
    /// catch up from the store).
    pub broker_resyncs: Counter,
    /// Messages read from Redis and dropped, by [`DropReason`].
    pub broker_dropped: Family<ReasonLabel, Counter>,
}

impl Metrics {
    pub fn new() -> Self {
        let by_state = Family::<StateLabel, Gauge>::default();
        // One statement each: the family's guard must be gone before the next call.
        let opening = by_state
            .get_or_create(&StateLabel { state: "opening" })
            .clone();
        let open = by_state
            .get_or_create(&StateLabel { state: "open" })
            .clone();
        let m = Self {
            registry: Mutex::new(Registry::default()),
            connections_accepted: Counter::default(),
            connections: Gauge::default(),
            connections_opening: opening,
            connections_open: open,
            upgrades_refused: Family::default(),
            disconnects: Family::default(),
            message_duration: histogram(),
            delivery_latency: histogram(),
            delivered: Counter::default(),
            published: Family::default(),
            slow_consumer_disconnects: Counter::default(),
            queue_depth: Gauge::default(),
            queue_capacity: Gauge::default(),
            resumes: Counter::default(),
            resume_replayed: Counter::default(),
            draining: Gauge::default(),
            fd_open: Gauge::default(),
            fd_limit: Gauge::default(),
            capacity: Gauge::default(),
            pending_connections: Gauge::default(),
            pending_refused: Counter::default(),
            store_errors: Family::default(),
            store_latency: Family::new_with_constructor(histogram),
            broker_errors: Family::default(),
            rate_limited: Counter::default(),
            client_writes_refused: Counter::default(),
            sse_streams: Counter::default(),
            broker_resyncs: Counter::default(),
            broker_dropped: Family::default(),
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
                m.upgrades_refused.clone(),
            );
            r.register(
                "herald_disconnects",
                "Connections closed, by close code",
                m.disconnects.clone(),
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
                m.published.clone(),
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
                m.store_errors.clone(),
            );
            r.register(
                "herald_store_latency_seconds",
                "Store operation latency",
                m.store_latency.clone(),
            );
            r.register(
                "herald_broker_errors",
                "Broker operations that failed",
                m.broker_errors.clone(),
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
                "Broker resubscriptions after a lost connection (sessions resync from the store)",
                m.broker_resyncs.clone(),
            );
            r.register(
                "herald_broker_dropped",
                "Messages read from Redis and dropped, by reason",
                m.broker_dropped.clone(),
            );
        }
        m
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
            self.broker_dropped
                .get_or_create(&ReasonLabel {
                    reason: reason.as_str(),
                })
                .inc_by(n);
        }
    }

    /// Records a closed connection with its close code.
    pub fn closed(&self, code: u16) {
        self.disconnects
            .get_or_create(&CloseLabel {
                code: close_code_label(code),
            })
            .inc();
        if code == herald_shared::close::TRY_AGAIN_LATER {
            self.slow_consumer_disconnects.inc();
        }
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
        assert_eq!(close_code_label(1000), "1000");
        assert_eq!(close_code_label(1013), "1013");
        assert_eq!(close_code_label(1015), "1015");
        assert_eq!(close_code_label(1016), "other");
        assert_eq!(close_code_label(2999), "other");
        assert_eq!(close_code_label(3000), "3xxx");
        assert_eq!(close_code_label(4999), "4xxx");
        assert_eq!(close_code_label(5000), "other");
        assert_eq!(close_code_label(999), "other");
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
