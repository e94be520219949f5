//! `GET /ws/notifications/`: everything decided before a socket exists.
//!
//! Origin (403), token (401), `after` (400), node state and capacity (503 with
//! `Retry-After`), then the connect seam: the connection joins its user's group
//! *before* the 101 response goes out, so every notification published after the
//! upgrade is already queued for it while its session loads `initial_state`.
//!
//! The SSE stream ([`crate::sse`]) is admitted by the same checks ([`identify_client`],
//! [`admit`]) and holds the same [`Registration`].

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use herald_shared::{GroupName, UserId};
use serde::Deserialize;

use crate::api::ApiError;
use crate::auth::{AuthError, Identity};
use crate::metrics::CodeLabel;
use crate::node::Node;
use crate::outbox::Outbox;
use crate::session::Session;

/// Read buffer per connection. Client frames are small (pings, commands), and the
/// buffer is allocated and zero-filled up front, so it is resident for every idle
/// connection: 512 bytes, not tungstenite's 128 KiB. A bigger frame grows it on
/// demand.
const READ_BUFFER: usize = 512;
/// Frames are batched up to this many bytes before a write (a flush writes at once).
const WRITE_BUFFER: usize = 8 * 1024;
/// No cap on the write buffer beyond what the session feeds it: a session feeds at
/// most one batch before it flushes, and a flush that cannot finish within the
/// queue expiry ends the connection (1013). A cap would only make the largest
/// legitimate frame (a full `missed` of big messages) fail.
const MAX_WRITE_BUFFER: usize = usize::MAX;

#[derive(Debug, Deserialize)]
pub struct UpgradeParams {
    token: Option<String>,
    after: Option<String>,
}

pub async fn upgrade(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    params: Result<Query<UpgradeParams>, QueryRejection>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let result = prepare(&node, &headers, params, ws).await;
    counted_refusal(&node, result)
}

/// The response, with a refusal counted in `herald_upgrades_refused_total{code}`.
pub(crate) fn counted_refusal(node: &Node, result: Result<Response, ApiError>) -> Response {
    match result {
        Ok(resp) => resp,
        Err(e) => {
            let resp = e.into_response();
            node.metrics
                .upgrades_refused
                .get_or_create(&CodeLabel {
                    code: resp.status().as_u16(),
                })
                .inc();
            resp
        }
    }
}

async fn prepare(
    node: &Arc<Node>,
    headers: &HeaderMap,
    params: Result<Query<UpgradeParams>, QueryRejection>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    check_origin(node, headers)?;
    let Query(params) = params.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let (ident, after) = identify_client(
        node,
        headers,
        params.token.as_deref(),
        params.after.as_deref(),
    )?;
    // A draining node says so before it looks at the upgrade headers, so a plain
    // GET (a browser client's diagnostic after a refused upgrade) reads the 503.
    check_serving(node)?;
    let ws = ws.map_err(|r| ApiError::Other(r.status(), r.body_text()))?;
    let registration = admit(node, &ident).await?;
    let cfg = &node.config;
    let node = node.clone();
    Ok(ws
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .max_message_size(cfg.max_frame_bytes)
        .max_frame_size(cfg.max_frame_bytes)
        .on_upgrade(move |socket: WebSocket| {
            let tracker = node.sessions.clone();
            // The session's own future, not an async block around it: a block would
            // keep its captures (the socket and the session's parts) beside the
            // future it awaits, for the connection's whole life.
            let fut = Session::new(node, ident, registration, after).run(socket);
            tracker.track_future(fut)
        }))
}

/// The token (401), then `after` (400): checked after `Origin` (403) and the
/// query string (400), in the contract's order, for every client connection.
pub(crate) fn identify_client(
    node: &Node,
    headers: &HeaderMap,
    token: Option<&str>,
    after: Option<&str>,
) -> Result<(Identity, Option<i64>), ApiError> {
    let ident =
        identify(node, headers, token).map_err(|e| ApiError::Unauthorized(e.to_string()))?;
    let after = after.map(parse_after).transpose()?;
    Ok((ident, after))
}

/// A resume point: a notification id ≥ 0.
pub(crate) fn parse_after(a: &str) -> Result<i64, ApiError> {
    a.parse::<i64>()
        .ok()
        .filter(|a| *a >= 0)
        .ok_or_else(|| ApiError::BadRequest(format!("after must be a notification id (got {a:?})")))
}

/// Admits a connection of `ident` once the request is valid: 503 while the node is
/// draining (`Retry-After: 5`) or full (`Retry-After: 1`); otherwise its
/// [`Registration`], joined to its personal group.
pub(crate) async fn admit(node: &Arc<Node>, ident: &Identity) -> Result<Registration, ApiError> {
    check_serving(node)?;
    let registration = Registration::new(node, ident)
        .await
        .ok_or_else(|| ApiError::Unavailable("node at connection capacity".into(), 1))?;
    node.metrics.connections_accepted.inc();
    Ok(registration)
}

/// 503 with `Retry-After: 5` unless the node is serving.
fn check_serving(node: &Node) -> Result<(), ApiError> {
    if node.lifecycle.is_serving() {
        return Ok(());
    }
    Err(ApiError::Unavailable(
        format!(
            "node is {}; connect to another node",
            node.lifecycle.state().as_str()
        ),
        5,
    ))
}

pub(crate) fn check_origin(node: &Node, headers: &HeaderMap) -> Result<(), ApiError> {
    let allowed = &node.config.allowed_origins;
    if allowed.is_empty() {
        return Ok(());
    }
    // Browsers always send Origin; a client without one is not a browser page, so
    // cross-site WebSocket hijacking does not apply to it.
    match headers
        .get(header::ORIGIN)
        .map(|o| o.to_str().unwrap_or(""))
    {
        None => Ok(()),
        Some(o) if allowed.iter().any(|a| a == o) => Ok(()),
        Some(o) => Err(ApiError::Forbidden(format!("origin {o:?} is not allowed"))),
    }
}

fn identify(
    node: &Node,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<Identity, AuthError> {
    let token = query_token
        .filter(|t| !t.is_empty())
        .or_else(|| crate::auth::bearer(headers))
        .ok_or(AuthError::Missing)?;
    node.auth.verify(token)
}

/// A connection's place in the hub, from before the upgrade until its session ends.
///
/// Dropping it (session over, or upgrade never completed) leaves every group and
/// the registry, so no path can leak a member.
pub struct Registration {
    node: Arc<Node>,
    user: UserId,
    /// Whether the opening frames went out (for the connections-by-state gauge).
    open: bool,
    pub outbox: Arc<Outbox>,
    pub groups: Vec<GroupName>,
}

impl Registration {
    /// Registers a connection of `ident`'s user and joins its personal group; `None`
    /// when the node is at capacity.
    async fn new(node: &Arc<Node>, ident: &Identity) -> Option<Self> {
        let outbox = Outbox::new(
            node.config.queue_capacity,
            node.config.queue_expiry(),
            node.metrics.clone(),
        );
        if !node
            .hub
            .register(outbox.clone(), &ident.user, node.capacity())
        {
            return None;
        }
        node.metrics.connections.inc();
        node.metrics.connections_opening.inc();
        node.presence.changed(&ident.user, 1);
        let mut reg = Self {
            node: node.clone(),
            user: ident.user.clone(),
            open: false,
            outbox,
            groups: Vec::new(),
        };
        // A failed subscribe is logged, not fatal: the store still has everything,
        // and the broker resubscribes what the hub holds when it reconnects.
        let _ = reg.join(ident.user.group()).await;
        Some(reg)
    }

    /// Marks the connection open: its opening frames are sent.
    pub fn opened(&mut self) {
        if !self.open {
            self.open = true;
            self.node.metrics.connections_opening.dec();
            self.node.metrics.connections_open.inc();
        }
    }

    /// Joins `group`, subscribing at the broker for the first local member.
    ///
    /// Guarantee: once this returns `Ok`, every message published on `group` from
    /// then on reaches this connection, whether it is the group's first local member
    /// or not. The first member waits for the broker to confirm its subscription
    /// ([`Broker::subscribe`]); any later member waits until that subscription is
    /// confirmed too ([`Broker::settled`]), so a member that joins while the first
    /// one's SUBSCRIBE is still in flight cannot be sent its `initial_state` (or
    /// `subscribed`) before it can hear the group. A broker that is disconnected
    /// lets both return at once: its reconnect resubscribes every group the hub
    /// holds and announces a resync, and the session catches up from the store.
    /// On `Err` the connection is a member all the same (and stays one), but
    /// messages may miss it until the broker's next resync.
    ///
    /// [`Broker::subscribe`]: crate::broker::Broker::subscribe
    /// [`Broker::settled`]: crate::broker::Broker::settled
    pub async fn join(&mut self, group: GroupName) -> Result<(), crate::broker::BrokerError> {
        if self.groups.contains(&group) {
            return Ok(());
        }
        let first = self.node.hub.join(&group, &self.outbox);
        self.groups.push(group.clone());
        let broker = &self.node.broker;
        let confirmed = if first {
            broker.subscribe(&group).await
        } else {
            broker.settled(&group).await
        };
        if let Err(e) = confirmed {
            tracing::warn!(%group, error = %e, "subscribe failed");
            return Err(e);
        }
        Ok(())
    }

    /// Leaves `group` (never the personal group, which the caller guards).
    pub fn leave(&mut self, group: &GroupName) {
        if let Some(pos) = self.groups.iter().position(|g| g == group) {
            self.groups.swap_remove(pos);
            if self.node.hub.leave(group, self.outbox.id) {
                self.node.unsubscribe_later(group.clone());
            }
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        for g in std::mem::take(&mut self.groups) {
            if self.node.hub.leave(&g, self.outbox.id) {
                self.node.unsubscribe_later(g);
            }
        }
        self.node.hub.unregister(self.outbox.id, &self.user);
        self.node.presence.changed(&self.user, -1);
        self.node.metrics.connections.dec();
        if self.open {
            self.node.metrics.connections_open.dec();
        } else {
            self.node.metrics.connections_opening.dec();
        }
    }
}
