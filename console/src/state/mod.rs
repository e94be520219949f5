//! The model of the fleet: per-node ring buffers of samples and what is derived from
//! them (delivered/s, p50/p99 over the last interval, drain progress), plus the
//! cluster totals' history for the sparklines.
//!
//! Pure data: no I/O, no clock (every figure is computed from the samples' own
//! timestamps), so tests build it from real samples and check the numbers.

pub mod quantile;

use std::collections::{BTreeMap, VecDeque};

use herald_shared::admin::TuningReport;
// What a node reports; `NodeState` here is the console's record of a node.
use herald_shared::health::NodeState as Reported;

use crate::discover::{RedisInfo, Target};
use crate::msg::NodeSample;
use quantile::{bucket_add, bucket_delta, quantile, rate};

/// Samples kept per node: ten minutes at the default 1 s interval.
pub const HISTORY: usize = 600;

/// What the fleet table shows for a node's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Health {
    Serving,
    Draining,
    Drained,
    Unreachable,
    /// Not polled successfully yet.
    Pending,
}

impl From<Reported> for Health {
    fn from(s: Reported) -> Self {
        match s {
            Reported::Serving => Health::Serving,
            Reported::Draining => Health::Draining,
            Reported::Drained => Health::Drained,
        }
    }
}

impl Health {
    pub fn label(self) -> &'static str {
        match self {
            Health::Serving => "serving",
            Health::Draining => "draining",
            Health::Drained => "drained",
            Health::Unreachable => "unreachable",
            Health::Pending => "…",
        }
    }
}

/// One node's history and what the console last heard from it.
#[derive(Debug, Clone)]
pub struct NodeState {
    pub target: Target,
    /// Oldest first; at most [`HISTORY`].
    pub samples: VecDeque<NodeSample>,
    /// Why the last poll failed, while it keeps failing.
    pub down: Option<String>,
    /// Gone from the registry (announcement expired).
    pub gone: bool,
    pub tuning: Option<Result<TuningReport, String>>,
    /// Connections when the running drain started (for its progress).
    pub drain_from: Option<u64>,
}

impl NodeState {
    pub fn new(target: Target) -> Self {
        Self {
            target,
            samples: VecDeque::new(),
            down: None,
            gone: false,
            tuning: None,
            drain_from: None,
        }
    }

    pub fn last(&self) -> Option<&NodeSample> {
        self.samples.back()
    }

    fn pair(&self) -> Option<(&NodeSample, &NodeSample)> {
        let n = self.samples.len();
        (n >= 2).then(|| (&self.samples[n - 2], &self.samples[n - 1]))
    }

    pub fn id(&self) -> &str {
        self.last()
            .map(|s| s.status.node.as_str())
            .or(self.target.id.as_deref())
            .unwrap_or_else(|| {
                let a = &self.target.admin;
                a.strip_prefix("http://")
                    .or(a.strip_prefix("https://"))
                    .unwrap_or(a)
            })
    }

    pub fn health(&self) -> Health {
        if self.down.is_some() || self.gone {
            return Health::Unreachable;
        }
        self.last()
            .map_or(Health::Pending, |s| Health::from(s.status.state))
    }

    pub fn push(&mut self, s: NodeSample) {
        let draining = s.status.state == Reported::Draining;
        if draining {
            let was_serving = self
                .last()
                .is_some_and(|p| p.status.state == Reported::Serving);
            let from = match (self.drain_from, was_serving) {
                (Some(f), false) => f,
                (_, true) => self.last().map_or(0, |p| p.status.connections),
                (None, false) => s.status.drain_remaining.max(s.status.connections),
            };
            self.drain_from = Some(from.max(s.status.drain_remaining));
        } else if s.status.state == Reported::Serving {
            self.drain_from = None;
        }
        self.down = None;
        self.gone = false;
        if self.samples.len() == HISTORY {
            self.samples.pop_front();
        }
        self.samples.push_back(s);
    }

    /// Messages delivered per second over the last interval.
    pub fn delivered_per_s(&self) -> Option<f64> {
        let (p, c) = self.pair()?;
        rate(
            p.metrics.delivered,
            c.metrics.delivered,
            (c.at - p.at).as_secs_f64(),
        )
    }

    /// Delivery latency buckets observed in the last interval.
    pub fn latency_delta(&self) -> Option<Vec<(f64, f64)>> {
        let (p, c) = self.pair()?;
        bucket_delta(&p.metrics.latency, &c.metrics.latency)
    }

    /// Delivery latency quantile `q` over the last interval, in seconds.
    pub fn latency(&self, q: f64) -> Option<f64> {
        quantile(&self.latency_delta()?, q)
    }

    /// Drain progress: (closed, of), while draining.
    pub fn drain_progress(&self) -> Option<(u64, u64)> {
        let s = self.last()?;
        if s.status.state != Reported::Draining {
            return None;
        }
        let of = self.drain_from.unwrap_or(s.status.drain_remaining);
        Some((of.saturating_sub(s.status.drain_remaining), of))
    }

    /// Tuning summary: `Some(0)` when all items are ok, `Some(n)` short, `None` unknown.
    pub fn tuning_short(&self) -> Option<usize> {
        match &self.tuning {
            Some(Ok(r)) => Some(r.short().count()),
            _ => None,
        }
    }
}

/// One point of the cluster's history.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TotalsPoint {
    pub connections: u64,
    /// Cluster p99 of the interval, microseconds (0 when nothing was delivered).
    pub p99_us: u64,
}

/// The whole fleet as the console knows it.
#[derive(Debug, Clone, Default)]
pub struct Fleet {
    /// By admin URL.
    pub nodes: BTreeMap<String, NodeState>,
    pub totals: VecDeque<TotalsPoint>,
    pub redis: Option<Result<RedisInfo, String>>,
}

/// Cluster totals now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    pub nodes: usize,
    pub reachable: usize,
    pub connections: u64,
    pub capacity: u64,
    pub delivered_per_s: f64,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub queue_depth: u64,
    pub slow_closes: f64,
}

impl Fleet {
    pub fn node_mut(&mut self, admin: &str) -> &mut NodeState {
        self.nodes
            .entry(admin.to_owned())
            .or_insert_with(|| NodeState::new(Target::from_url(admin)))
    }

    /// Discovery's latest list: new nodes appear; nodes no longer listed are marked
    /// gone (kept, so an operator sees that a node vanished).
    pub fn set_targets(&mut self, targets: Vec<Target>) {
        for n in self.nodes.values_mut() {
            n.gone = !targets.iter().any(|t| t.admin == n.target.admin);
        }
        for t in targets {
            let n = self.node_mut(&t.admin);
            n.gone = false;
            if t.id.is_some() {
                n.target = t;
            }
        }
    }

    pub fn totals(&self) -> Totals {
        let mut t = Totals {
            nodes: self.nodes.len(),
            ..Totals::default()
        };
        let mut buckets = Vec::new();
        for n in self.nodes.values() {
            if n.health() == Health::Unreachable {
                continue;
            }
            let Some(s) = n.last() else { continue };
            t.reachable += 1;
            t.connections += s.status.connections;
            t.capacity += s.status.capacity;
            t.queue_depth += s.metrics.queue_depth;
            t.slow_closes += s.metrics.slow_closes;
            t.delivered_per_s += n.delivered_per_s().unwrap_or(0.0);
            if let Some(d) = n.latency_delta() {
                bucket_add(&mut buckets, &d);
            }
        }
        t.p50 = quantile(&buckets, 0.5);
        t.p99 = quantile(&buckets, 0.99);
        t
    }

    /// Appends the current totals to the history (once per interval).
    pub fn tick(&mut self) {
        let t = self.totals();
        if self.totals.len() == HISTORY {
            self.totals.pop_front();
        }
        self.totals.push_back(TotalsPoint {
            connections: t.connections,
            p99_us: t.p99.map_or(0, |s| (s * 1e6) as u64),
        });
    }
}
