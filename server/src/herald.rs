//! Herald inside a Rust service: [`Herald`], a running node that a host application
//! mounts on its own axum router and publishes to in-process, without HTTP.
//!
//! The host keeps its own listener, routes and shutdown; Herald brings its routes
//! (client WebSocket and SSE, backend API, health, the live page when on), its admin
//! routes, and the same guarantees as a standalone node: a notification is stored
//! before any client sees it, reaches every connection of its user exactly once and
//! in id order, and a shutdown drains connections paced, as `herald-server` does.
//!
//! ```
//! use herald_server::{Config, Herald};
//! use serde_json::json;
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! let mut config = Config::defaults();          // no flags, no environment
//! config.data_dir = dir.path().into();           // SQLite and generated secrets here
//! let herald = Herald::start(config).await?;
//!
//! // Mount it: `Router::new().route("/orders", ...).merge(herald.router())`.
//! let _app: axum::Router = axum::Router::new().merge(herald.router());
//!
//! // Publish from your own code, with the HTTP API's checks and guarantees.
//! let n = herald.notify("42", &json!({"text": "your order shipped"})).await?;
//! assert_eq!(herald.history("42", 10).await?[0].id, n.id);
//!
//! // A client token for your signed-in user, for the browser library.
//! let _token = herald.token("42", &[], std::time::Duration::from_secs(3600))?;
//!
//! herald.shutdown().await;                       // from your shutdown path
//! # Ok(()) }
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use herald_shared::api::NewNotification;
use herald_shared::{GroupName, Notification, UserId};
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::node::Node;
use crate::server::{Advertised, ServerError};
use crate::store::{ListQuery, StoreError};

/// Runs a node on the given listeners until `shutdown` resolves, then drains and
/// returns once every connection is closed: what the `herald-server` binary does.
///
/// While the store is still being reached, the public listener already answers
/// (`/healthz` 200, everything else 503); a `shutdown` during start-up ends it
/// cleanly. Refuses a non-loopback admin listener without an admin token
/// ([`crate::check_admin_bind`]).
pub async fn run(
    cfg: Config,
    public: TcpListener,
    admin_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    crate::server::check_admin_bind(&cfg, admin_listener.local_addr()?)?;
    // While the store is still being reached (with retries), the public listener
    // already answers: /healthz 200 (the process runs), everything else 503. The
    // listening socket is shared, so no connection is refused at the hand-over.
    let std_listener = public.into_std()?;
    let early = TcpListener::from_std(std_listener.try_clone()?)?;
    let public = TcpListener::from_std(std_listener)?;
    let starting = tokio_util::sync::CancellationToken::new();
    let early_srv = tokio::spawn(crate::accept::serve(
        early,
        crate::api::starting_router(),
        crate::accept::Options::public(&cfg),
        None,
        starting.clone(),
    ));
    // A stop requested while the store is still being reached ends start-up cleanly.
    let mut shutdown = std::pin::pin!(shutdown);
    let started = tokio::select! {
        started = Herald::start(cfg) => Some(started),
        () = &mut shutdown => None,
    };
    starting.cancel();
    let _ = early_srv.await;
    match started {
        Some(herald) => herald?.serve(public, admin_listener, shutdown).await,
        None => {
            tracing::info!("stopped during start-up");
            Ok(())
        }
    }
}

/// A running Herald node inside a host application. Cloning is cheap and shares the
/// node: hand clones to your handlers.
#[derive(Clone)]
pub struct Herald {
    node: Arc<Node>,
    /// What the registry announces; [`Herald::serve`] sets its listeners' addresses.
    advertised: Arc<watch::Sender<Advertised>>,
}

/// Why an in-process call was refused; the variants are the HTTP API's answers.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Bad input (the API's 400 or 413): an invalid user id or group name, a message
    /// over `HERALD_MAX_MESSAGE_BYTES`, a batch of 0 or more than 1000.
    #[error("{0}")]
    Invalid(String),
    /// Nothing was done; try again (the API's 503): the store is unreachable
    /// (nothing was written), the broker refused an event, or presence could not be
    /// read.
    #[error("{0}")]
    Unavailable(String),
    /// An unexpected store error (the API's 500); details are in the log.
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for PublishError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(why) => {
                Self::Unavailable(format!("store unavailable; nothing was written: {why}"))
            }
            StoreError::Db(why) => Self::Internal(why),
        }
    }
}

impl Herald {
    /// Builds and starts a node from `config`: reaches the store (retrying while it
    /// is unreachable) and, in cluster mode, Redis; then starts its background tasks.
    /// In cluster mode set `advertise_public` and `advertise_admin` to where your
    /// application serves [`Herald::router`] and [`Herald::admin_router`]; the node
    /// announces them in the registry.
    pub async fn start(config: Config) -> Result<Self, ServerError> {
        let node = crate::server::build(config).await?;
        let first = Advertised::of(&node.config, node.config.listen, node.config.admin_listen);
        let advertised = Arc::new(crate::server::start_background(&node, first));
        Ok(Self { node, advertised })
    }

    /// Serves the node on its own two listeners, exactly as `herald-server` does,
    /// until `shutdown` resolves; then stops it in order (as [`Herald::shutdown`])
    /// and returns once every connection has ended.
    ///
    /// `public` gets [`Herald::router`] with `{"error"}` answers for unknown routes
    /// and wrong methods (and `TCP_NODELAY` on every connection), a header-read
    /// timeout and a bound on connections that are not sessions (PROTOCOL.md 8);
    /// `admin` gets
    /// [`Herald::admin_router`] with the callers' addresses. In cluster mode the
    /// registry announces the listeners' addresses unless `advertise_public` or
    /// `advertise_admin` say otherwise.
    ///
    /// ```
    /// use herald_server::{Config, Herald};
    /// use tokio::net::TcpListener;
    ///
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// let mut config = Config::defaults();
    /// config.data_dir = dir.path().into();
    /// let herald = Herald::start(config).await?;
    /// let public = TcpListener::bind("127.0.0.1:0").await?;
    /// let admin = TcpListener::bind("127.0.0.1:0").await?;
    /// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    /// let serving = tokio::spawn({
    ///     let herald = herald.clone();
    ///     async move { herald.serve(public, admin, async { stopped.await.ok(); }).await }
    /// });
    /// // ... clients connect, the backend publishes ...
    /// stop.send(()).ok();
    /// serving.await??;
    /// # Ok(()) }
    /// ```
    pub async fn serve(
        &self,
        public: TcpListener,
        admin: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServerError> {
        crate::server::serve(&self.node, &self.advertised, public, admin, shutdown).await
    }

    /// The node's public routes (the client WebSocket and SSE endpoints, the backend
    /// API under `/api/v1`, `/healthz`, `/readyz`, and `/demo/` when on), with no
    /// fallback, so it merges into your router (after your `with_state`). Serve the
    /// result with `into_make_service()`: given a bare router, `axum::serve` rebuilds
    /// the route table for every connection, and each WebSocket is one. Your server's
    /// own limits apply: `axum::serve` sets no header-read timeout and does not bound
    /// idle connections, which [`Herald::serve`] does.
    pub fn router(&self) -> axum::Router {
        crate::routes::mergeable(self.node.clone())
    }

    /// The admin routes (`/metrics`, `/admin/...`). They audit the caller's address,
    /// so serve them with `into_make_service_with_connect_info::<SocketAddr>()`, and
    /// on a private listener: they change the node's state.
    pub fn admin_router(&self) -> axum::Router {
        crate::admin::router(self.node.clone())
    }

    /// Stores a notification for `user` and delivers it to the user's connections,
    /// on every node: what `POST /api/v1/notifications` does. Returns the stored
    /// notification, with its id.
    pub async fn notify(
        &self,
        user: &str,
        message: &impl Serialize,
    ) -> Result<Notification, PublishError> {
        let item = NewNotification {
            user: user_id(user)?,
            message: self.json("message", message)?,
        };
        let mut stored = self.node.publisher.notify_combined(vec![item]).await?;
        stored
            .pop()
            .ok_or_else(|| PublishError::Internal("insert returned no row".into()))
    }

    /// Stores up to 1000 notifications in one transaction (all or nothing) and
    /// delivers each: what `POST /api/v1/notifications/batch` does.
    pub async fn notify_batch(
        &self,
        items: Vec<NewNotification>,
    ) -> Result<Vec<Notification>, PublishError> {
        check_batch_len(items.len())?;
        for (i, item) in items.iter().enumerate() {
            self.check_value(&format!("notifications[{i}].message"), &item.message)?;
        }
        Ok(self.node.publisher.notify_combined(items).await?)
    }

    /// Sends an ephemeral event to every connection in `group`, on every node; it is
    /// not stored: what `POST /api/v1/groups/<group>/events` does.
    pub async fn event(&self, group: &str, payload: &impl Serialize) -> Result<(), PublishError> {
        let group = GroupName::parse(group)
            .map_err(|e| PublishError::Invalid(format!("group name {e}")))?;
        let payload = self.json("payload", payload)?;
        self.node
            .publisher
            .event(&group, &payload)
            .await
            .map_err(|e| PublishError::Unavailable(format!("event not accepted: {e}")))
    }

    /// The user's newest notifications, newest first, at most `limit` (1 to 1000).
    pub async fn history(&self, user: &str, limit: i64) -> Result<Vec<Notification>, PublishError> {
        if !(1..=crate::api::LIST_MAX).contains(&limit) {
            return Err(PublishError::Invalid(format!(
                "limit must be 1 to {} (got {limit})",
                crate::api::LIST_MAX
            )));
        }
        let q = ListQuery {
            unread_only: false,
            before: None,
            limit,
        };
        Ok(self.node.store.list(&user_id(user)?, q).await?)
    }

    /// How many connections `user` has open, on every node.
    pub async fn presence(&self, user: &str) -> Result<u64, PublishError> {
        self.node
            .presence
            .connections(&user_id(user)?)
            .await
            .map_err(|e| PublishError::Unavailable(e.to_string()))
    }

    /// A client token for `user` (who may also join `groups`), valid for `ttl`: what
    /// your application hands a signed-in user for the client library.
    pub fn token(
        &self,
        user: &str,
        groups: &[&str],
        ttl: Duration,
    ) -> Result<String, PublishError> {
        let groups = groups
            .iter()
            .map(|g| {
                GroupName::parse(*g).map_err(|e| PublishError::Invalid(format!("group name {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(self
            .node
            .auth
            .issue(&user_id(user)?, &groups, ttl.as_secs()))
    }

    /// Starts a paced drain over `window`, as `POST /admin/drain` does: readiness
    /// 503, new connections refused, open ones closed with 1012 spread over the
    /// window (their clients reconnect to other nodes and resume).
    pub fn drain(&self, window: Duration) {
        self.node.lifecycle.drain(window);
    }

    /// Drains over `HERALD_SHUTDOWN_DRAIN_S`, closes what is left, waits for every
    /// connection to end, stops the background tasks and leaves the registry. Call
    /// it from your shutdown path before your server stops: your server's graceful
    /// shutdown does not wait for WebSockets.
    pub async fn shutdown(&self) {
        crate::server::stop_node(&self.node, || {}).await;
    }

    /// The node id, as in `welcome`, status and logs.
    pub fn node_id(&self) -> &str {
        &self.node.id
    }

    fn json(&self, what: &str, value: &impl Serialize) -> Result<Box<RawValue>, PublishError> {
        let raw = serde_json::value::to_raw_value(value)
            .map_err(|e| PublishError::Invalid(format!("{what} is not JSON: {e}")))?;
        self.check_value(what, &raw)?;
        Ok(raw)
    }

    fn check_value(&self, what: &str, value: &RawValue) -> Result<(), PublishError> {
        crate::api::check_value(what, value, self.node.config.max_message_bytes)
            .map_err(|e| PublishError::Invalid(e.to_string()))
    }
}

fn user_id(user: &str) -> Result<UserId, PublishError> {
    UserId::parse(user).map_err(|e| PublishError::Invalid(format!("user id {e}")))
}

fn check_batch_len(n: usize) -> Result<(), PublishError> {
    crate::api::check_batch_len("notifications", n)
        .map_err(|e| PublishError::Invalid(e.to_string()))
}
