//! Provides [`run`]: wires a node together, serves its two listeners, and shuts it
//! down in order when the given future resolves.
//!
//! Shutdown order: drain (readiness 503, paced 1012 closes over the configured
//! window), close whatever is left, stop both listeners, then wait for every session
//! task; the listeners' graceful shutdown ([`accept::serve`]) does not wait for
//! upgraded connections (hyper hands them over at the 101), so the
//! node tracks them itself.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Auth;
use crate::broker::{
    self, Broker, BrokerKey, MemoryBroker, NodeSide, RedisBroker, RedisClusterBroker, Trust,
};
use crate::catch_up::CatchUps;
use crate::cluster::presence::RedisPresence;
use crate::cluster::{Cluster, RedisConnection};
use crate::config::{Config, default_node_id};
use crate::hub::Hub;
use crate::issued::IssuedIds;
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::node::{Node, VERSION};
use crate::outbox::CloseReason;
use crate::presence::{LocalPresence, Presence};
use crate::publish::Publisher;
use crate::secret::Secret;
use crate::tasks::Tasks;
use crate::tuning::{Host, Profile};
use crate::{accept, admin, cluster, limits, secrets, store};
use herald_shared::admin::NodeInfo;
use herald_shared::dropped::DropReason;

/// Why a node could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The secrets could not be resolved (see [`secrets::resolve`]).
    #[error(transparent)]
    Secrets(#[from] secrets::SecretsError),
    /// The store refused to start (a bad URL, a failed migration).
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The configuration cannot work: a bad tuning profile or Redis URL, an exposed
    /// admin listener without a token.
    #[error("configuration: {0}")]
    Config(String),
    /// A listener failed.
    #[error("serving: {0}")]
    Io(#[from] std::io::Error),
}

/// Builds the node's shared state from `cfg` (connecting to the store, retrying
/// while it is unreachable).
pub(crate) async fn build(cfg: Config) -> Result<Arc<Node>, ServerError> {
    cfg.check().map_err(ServerError::Config)?;
    let secrets = secrets::resolve(&cfg)?.secrets;
    let profile = Profile::load(cfg.tuning_profile.as_deref()).map_err(ServerError::Config)?;
    let host = Host {
        sysctl_root: cfg.sysctl_root.clone(),
    };
    let metrics = Arc::new(Metrics::new());
    // Made first: the store, broker and presence start their background tasks here.
    let tasks = Tasks::new();
    let fd_limit = limits::fd_limit();
    let capacity = limits::capacity_for(&cfg, fd_limit);
    metrics.fd_limit.set(fd_limit as i64);
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    metrics.worker_threads.set(workers as i64);
    metrics.capacity.set(capacity as i64);
    metrics.queue_capacity.set(cfg.queue_capacity as i64);
    log_tuning(&profile, &host, capacity);

    if cfg.cluster_mode() && !cfg.database_url().starts_with("postgres") {
        // Allowed for a single node that only wants Redis for discovery; several nodes
        // need one shared PostgreSQL (a SQLite file cannot be shared between hosts, and
        // it has no cross-node order lock).
        tracing::warn!(
            "REDIS_URL is set but the store is SQLite: run one node only, or use DATABASE_URL=postgres://..."
        );
    }
    let timed = store::Timed::new(
        store::connect(&cfg.database_url(), cfg.db_pool, &tasks).await?,
        metrics.clone(),
    );
    let store_answers = timed.answers();
    let store: Arc<dyn store::Store> = Arc::new(timed);
    let hub = Arc::new(Hub::new());
    let issued = Arc::new(IssuedIds::new(store.clone()));
    let id = cfg.node_id.clone().unwrap_or_else(default_node_id);
    metrics.set_info(&id, VERSION);
    let (broker, presence, cluster): (Arc<dyn Broker>, Arc<dyn Presence>, Option<Cluster>) =
        match &cfg.redis_url {
            None => (
                Arc::new(MemoryBroker::new(hub.clone())),
                Arc::new(LocalPresence { hub: hub.clone() }),
                None,
            ),
            Some(url) => {
                let url = url.expose();
                let trust = trust(&cfg, issued.clone(), metrics.clone())?;
                let node_side = || NodeSide {
                    hub: hub.clone(),
                    prefix: cfg.redis_prefix.clone(),
                    node_id: id.clone(),
                    trust,
                };
                let seeds =
                    broker::cluster_seeds(url).map_err(|e| ServerError::Config(e.to_string()))?;
                // The broker's publishing connection (already connected, reconnects
                // by itself) also carries the registry and presence commands.
                let (broker, con): (Arc<dyn Broker>, RedisConnection) = match seeds {
                    None => {
                        let asgi = Some(cfg.channels_prefix.clone()).filter(|p| !p.is_empty());
                        let b = RedisBroker::connect(
                            url,
                            &cfg.redis_tls,
                            node_side(),
                            asgi,
                            tasks.clone(),
                        )
                        .await
                        .map_err(|e| ServerError::Config(e.to_string()))?;
                        let con = RedisConnection::Single(b.connection());
                        (b, con)
                    }
                    Some(seeds) => {
                        if !cfg.channels_prefix.is_empty() {
                            tracing::info!(
                                "Redis Cluster: Django interop (channels_redis) is off; it needs a single Redis"
                            );
                        }
                        let b = RedisClusterBroker::connect(
                            seeds,
                            &cfg.redis_tls,
                            node_side(),
                            tasks.clone(),
                        )
                        .await
                        .map_err(|e| ServerError::Config(e.to_string()))?;
                        let con = RedisConnection::Cluster(b.connection());
                        (b, con)
                    }
                };
                let presence = RedisPresence::start(
                    &tasks,
                    con.clone(),
                    cfg.redis_prefix.clone(),
                    id.clone(),
                    hub.clone(),
                )
                .await;
                (
                    broker,
                    Arc::new(presence),
                    Some(Cluster {
                        redis: con,
                        prefix: cfg.redis_prefix.clone(),
                    }),
                )
            }
        };
    let publisher = Arc::new(Publisher::new(
        cluster.is_some(),
        store.clone(),
        broker.clone(),
        metrics.clone(),
        issued,
    ));
    tracing::info!(node = %id, store = store.kind(), broker = broker.kind(), capacity, fd_limit, workers, "node ready");
    let client_writes =
        crate::client_writes::ClientWrites::new(cfg.client_write_rate, store.write_slots());
    let catch_ups = CatchUps::new(store.clone());
    Ok(Arc::new(Node {
        id,
        auth: Auth::new(&secrets, &cfg),
        lifecycle: Lifecycle::new(hub.clone(), metrics.clone(), tasks.clone()),
        config: cfg,
        store,
        broker,
        hub,
        publisher,
        catch_ups,
        client_writes,
        metrics,
        capacity: AtomicUsize::new(capacity),
        fd_limit: AtomicU64::new(fd_limit),
        profile,
        host,
        started: Instant::now(),
        store_up: AtomicBool::new(true),
        store_answers,
        presence,
        cluster,
        auth_failure_audited_us: AtomicU64::new(0),
        sessions: TaskTracker::new(),
        tasks,
    }))
}

/// The checks on what the node reads from Redis, with the cluster's key
/// (`HERALD_BROKER_KEY`) if it has one; a key too short to be safe stops start-up.
fn trust(
    cfg: &Config,
    issued: Arc<IssuedIds>,
    metrics: Arc<Metrics>,
) -> Result<Trust, ServerError> {
    let key = match cfg
        .broker_key
        .as_ref()
        .map(Secret::expose)
        .filter(|k| !k.is_empty())
    {
        Some(k) => Some(BrokerKey::new(k).map_err(ServerError::Config)?),
        None => {
            tracing::warn!(
                "HERALD_BROKER_KEY is not set: messages on Redis are not signed, so anything that can publish on Herald's channels can forge them (PROTOCOL.md 7.3; README: Redis ACLs)"
            );
            None
        }
    };
    Ok(Trust::new(key, cfg.max_message_bytes, issued, metrics))
}

/// Says at start-up what falls short of the tuning profile, and what that leaves.
fn log_tuning(profile: &Profile, host: &Host, capacity: usize) {
    let report = crate::tuning::check(profile, host);
    let short: Vec<_> = report.short().collect();
    for item in &short {
        tracing::warn!(key = %item.key, want = %item.want, have = %item.have, "falls short of the tuning profile");
    }
    tracing::info!(
        profile = %report.profile,
        short = short.len(),
        capacity,
        "tuning checked: connection capacity {capacity}{}",
        if short.is_empty() { "" } else { " (apply the profile: POST /admin/tuning/apply)" }
    );
}

/// Refuses an admin listener at `admin_addr` that is not loopback unless `cfg` has
/// an admin token: the admin plane may face the network only behind one.
pub fn check_admin_bind(cfg: &Config, admin_addr: std::net::SocketAddr) -> Result<(), ServerError> {
    if !admin_addr.ip().is_loopback() && cfg.admin_token.as_ref().is_none_or(Secret::is_empty) {
        return Err(ServerError::Config(format!(
            "admin listener {admin_addr} is not loopback: set HERALD_ADMIN_TOKEN to expose it"
        )));
    }
    Ok(())
}

/// Serves a started node on its two listeners until `shutdown` resolves, then stops
/// it in order ([`stop_node`]). The one implementation behind [`crate::Herald::serve`]
/// and [`crate::run`]. Unless configured otherwise, the registry announces the listeners'
/// actual addresses (`advertised` wakes the heartbeat).
pub(crate) async fn serve(
    node: &Arc<Node>,
    advertised: &watch::Sender<Advertised>,
    public: TcpListener,
    admin_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let public_addr = public.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;
    advertised.send_replace(Advertised::of(&node.config, public_addr, admin_addr));
    let stop = CancellationToken::new();

    // The route table is resolved once and shared by every connection
    // (`accept::serve`): with `TCP_NODELAY`, the header-read timeout and the pending
    // bound on the public listener; the callers' addresses on the admin one.
    let public_srv = tokio::spawn(accept::serve(
        public,
        crate::routes::public(node.clone()),
        accept::Options::public(&node.config),
        Some(node.clone()),
        stop.clone(),
    ));
    let admin_srv = tokio::spawn(accept::serve(
        admin_listener,
        admin::router(node.clone()),
        accept::Options::admin(&node.config),
        None,
        stop.clone(),
    ));

    shutdown.await;
    stop_node(node, || stop.cancel()).await;
    let _ = public_srv.await;
    let _ = admin_srv.await;
    tracing::info!("stopped");
    Ok(())
}

/// Where the registry says a node serves its public and admin routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Advertised {
    pub public: String,
    pub admin: String,
}

impl Advertised {
    /// `HERALD_ADVERTISE_PUBLIC`/`_ADMIN` when set, else `public`/`admin`.
    pub(crate) fn of(cfg: &Config, public: impl ToString, admin: impl ToString) -> Self {
        Self {
            public: (cfg.advertise_public.clone()).unwrap_or_else(|| public.to_string()),
            admin: (cfg.advertise_admin.clone()).unwrap_or_else(|| admin.to_string()),
        }
    }
}

/// Starts what a built node runs beside its sessions: the store probe, the heap trim
/// after connection bursts, in cluster
/// mode the registry heartbeat (announcing what the returned sender holds, `first`
/// until it changes), and the resync fan-out. All of it stops with [`stop_node`].
pub(crate) fn start_background(node: &Arc<Node>, first: Advertised) -> watch::Sender<Advertised> {
    let (advertised, rx) = watch::channel(first);
    node.spawn_store_probe();
    crate::heap::spawn_trim(node);
    if let Some(c) = node.cluster.clone() {
        let started_at = crate::auth::now_unix();
        // Weak: the heartbeat must not keep the node alive.
        let weak = Arc::downgrade(node);
        let current = rx.clone();
        cluster::registry::spawn_heartbeat(&node.tasks, c.redis, c.prefix, rx, move || {
            let node = weak.upgrade()?;
            let Advertised { public, admin } = current.borrow().clone();
            Some(NodeInfo {
                id: node.id.clone(),
                public,
                admin,
                version: VERSION.to_owned(),
                state: node.lifecycle.state(),
                started_at,
                connections: node.hub.connections() as u64,
            })
        });
    }
    if let Some(rx) = node.broker.resyncs() {
        node.tasks.spawn(
            "resync fan-out",
            resync_fan_out(rx, node.hub.clone(), node.metrics.clone()),
        );
    }
    advertised
}

/// The least time between two resyncs of a node's sessions: each costs every
/// session a store read, and the requests can come from anything that publishes on
/// `<prefix>:resync`.
pub(crate) const RESYNC_EVERY: Duration = Duration::from_secs(1);

/// Sets the resync flag on every outbox when the broker asks, at most once per
/// [`RESYNC_EVERY`]: requests that arrive meanwhile are folded into one resync at
/// the end of the interval (so none is lost: the sessions catch up after the last
/// request), and counted as `resync_coalesced` drops.
async fn resync_fan_out(mut rx: watch::Receiver<u64>, hub: Arc<Hub>, metrics: Arc<Metrics>) {
    let mut seen = *rx.borrow_and_update();
    while rx.changed().await.is_ok() {
        let now = *rx.borrow_and_update();
        let folded = now.wrapping_sub(seen).saturating_sub(1);
        seen = now;
        metrics.broker_dropped(DropReason::ResyncCoalesced, folded);
        tracing::info!(
            folded,
            "broker resync (reconnected, dropped messages, or a node could not publish): sessions catch up from the store"
        );
        metrics.broker_resyncs.inc();
        for outbox in hub.all() {
            outbox.resync();
        }
        tokio::time::sleep(RESYNC_EVERY).await;
    }
}

/// Stops a node in order: drain over the shutdown window (readiness 503, paced 1012
/// closes), close whatever is left, `stop_listening`, wait for every session, stop
/// the background tasks, and leave the registry.
pub(crate) async fn stop_node(node: &Arc<Node>, stop_listening: impl FnOnce()) {
    let window = Duration::from_secs(node.config.shutdown_drain_s);
    tracing::info!(window_s = window.as_secs(), "shutdown requested: draining");
    node.lifecycle.drain(window);
    node.lifecycle
        .wait_drained(window + Duration::from_secs(5))
        .await;
    for outbox in node.hub.all() {
        outbox.close(CloseReason::Shutdown);
    }
    stop_listening();
    node.sessions.close();
    if tokio::time::timeout(Duration::from_secs(10), node.sessions.wait())
        .await
        .is_err()
    {
        tracing::warn!("some sessions did not end within 10 s of shutdown");
    }
    node.tasks.stop(Duration::from_secs(5)).await;
    if let Some(c) = &node.cluster {
        cluster::deregister(&mut c.redis.clone(), &c.prefix, &node.id).await;
    }
}
