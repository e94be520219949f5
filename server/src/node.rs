//! The node's shared state: one `Arc<Node>` handed to every handler and session.
//!
//! Cloning the handle is shallow. Each field is owned by the module named after it;
//! `Node` only wires them together and answers the questions several modules ask
//! (may this node take another connection? is it ready?).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use herald_shared::GroupName;
use herald_shared::health::{Readiness, StoreHealth};
use tokio_util::task::TaskTracker;

use crate::auth::Auth;
use crate::broker::Broker;
use crate::catch_up::CatchUps;
use crate::client_writes::ClientWrites;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::hub::Hub;
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::presence::Presence;
use crate::publish::Publisher;
use crate::store::{Answers, Store};
use crate::tasks::Tasks;
use crate::tuning::{Host, Profile};

pub struct Node {
    pub id: String,
    pub config: Config,
    pub auth: Auth,
    pub store: Arc<dyn Store>,
    pub broker: Arc<dyn Broker>,
    pub hub: Arc<Hub>,
    pub publisher: Arc<Publisher>,
    /// Where sessions read what they missed from the store, together (resume at
    /// connect, catch-up after a broker resync).
    pub catch_ups: Arc<CatchUps>,
    /// The budget and store share of client writes (`mark_read`, `mark_all_read`).
    pub client_writes: ClientWrites,
    pub metrics: Arc<Metrics>,
    pub lifecycle: Lifecycle,
    /// Most connections this node accepts (see [`crate::limits`]); recomputed when
    /// the tuning profile raises the open-file limit.
    pub capacity: AtomicUsize,
    pub fd_limit: AtomicU64,
    /// The OS tuning profile and the host it is compared with.
    pub profile: Profile,
    pub host: Host,
    pub started: Instant,
    /// Last result of the store health probe; readiness reads it without a query.
    pub store_up: AtomicBool,
    /// When an operation on `store` last succeeded: what the probe goes by first.
    pub store_answers: Arc<Answers>,
    /// Connections per user across the cluster (or this node alone).
    pub presence: Arc<dyn Presence>,
    /// Present exactly when the node is clustered: the one answer to "are we?".
    pub cluster: Option<Cluster>,
    /// When a refused admin attempt was last audited (Unix µs): at most one a second.
    pub auth_failure_audited_us: AtomicU64,
    /// Every session task, so shutdown can wait for them (axum's graceful shutdown
    /// does not wait for upgraded connections).
    pub sessions: TaskTracker,
    /// Every background task, started and stopped one way.
    pub tasks: Tasks,
}

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

impl Node {
    pub fn capacity(&self) -> usize {
        self.capacity.load(Ordering::Relaxed)
    }

    pub fn fd_limit(&self) -> u64 {
        self.fd_limit.load(Ordering::Relaxed)
    }

    /// Re-reads the open-file limit (after tuning raised it) and the capacity it allows.
    pub fn refresh_limits(&self) {
        let fd_limit = crate::limits::fd_limit();
        let capacity = crate::limits::capacity_for(&self.config, fd_limit);
        self.fd_limit.store(fd_limit, Ordering::Relaxed);
        self.capacity.store(capacity, Ordering::Relaxed);
        self.metrics.fd_limit.set(fd_limit as i64);
        self.metrics.capacity.set(capacity as i64);
    }

    /// The node's state and its dependencies' health, as `/readyz` answers them
    /// and the status object repeats them; [`Readiness::is_ready`] decides.
    pub fn readiness(&self) -> Readiness {
        Readiness {
            state: self.lifecycle.state(),
            store: if self.store_up.load(Ordering::Relaxed) {
                StoreHealth::Up
            } else {
                StoreHealth::Down
            },
            redis: self.broker.health().into(),
        }
    }

    /// Hands a group that lost its last local member to the broker, which
    /// unsubscribes it in the background, batched, unless a member joined since.
    pub fn unsubscribe_later(self: &Arc<Self>, group: GroupName) {
        self.broker.unsubscribe(group);
    }

    /// Probes the store every second, so readiness reflects it without a query per
    /// health check.
    ///
    /// The store is up when an operation succeeded within [`STORE_FRESH`]: a pool
    /// kept busy by queries that complete is a healthy store, though a ping would
    /// wait its turn behind them and could time out. Only when nothing succeeded
    /// lately does the probe ping, and a ping that times out still counts as up if
    /// other operations succeeded meanwhile (it was queued behind them). A store that
    /// is stopped or does not answer is down within [`STORE_FRESH`] plus one period
    /// plus [`PING_LIMIT`].
    pub fn spawn_store_probe(self: &Arc<Self>) {
        // Weak: the task must not keep the node alive; it ends with the node's tasks.
        let node = Arc::downgrade(self);
        self.tasks.spawn("store probe", async move {
            loop {
                let Some(n) = node.upgrade() else { return };
                let probe = if n.store_answers.within(STORE_FRESH) {
                    Ok(())
                } else {
                    let asked = Instant::now();
                    match tokio::time::timeout(PING_LIMIT, n.store.ping()).await {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) if n.store_answers.since(asked) => Ok(()),
                        Err(_) => Err(format!("no answer within {PING_LIMIT:?}")),
                    }
                };
                let up = probe.is_ok();
                if n.store_up.swap(up, Ordering::Relaxed) != up {
                    let store = n.store.kind();
                    match probe {
                        Ok(()) => tracing::info!(store, "store reachable again"),
                        Err(why) => tracing::warn!(
                            store,
                            %why,
                            "store unreachable: readiness now 503"
                        ),
                    }
                }
                drop(n);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
}

/// How recent a successful store operation must be for the probe to count the
/// store up without pinging it.
const STORE_FRESH: Duration = Duration::from_secs(2);

/// How long the probe's own ping may take, waiting for a pooled connection included.
const PING_LIMIT: Duration = Duration::from_secs(2);
