//! `GET /ws/notifications/`: everything decided before a socket exists.
//!
//! Origin (403), token (401, from the `bearer.<jwt>` subprotocol, the query or the
//! `Authorization` header), `after` (400, also beyond the newest issued id), node
//! state and capacity (503 with `Retry-After`), the user's connections on this node
//! (429), then the connect seam: the connection joins its user's group
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
use serde::Deserialize;

use crate::api::ApiError;
use crate::auth::{AuthError, Identity};
use crate::hub::Full;
use crate::node::Node;
use crate::registration::Registration;
use crate::session::Session;

/// Read buffer per connection. Client frames are small (pings, commands, a group
/// name), and the buffer is allocated up front and zero-filled on the first read, so
/// it is resident for every idle connection: 64 bytes, not tungstenite's 128 KiB. A
/// bigger frame grows it to the frame's length.
const READ_BUFFER: usize = 64;
/// Frames are batched up to this many bytes before a write (a flush writes at once).
const WRITE_BUFFER: usize = 8 * 1024;
/// No cap on the write buffer in bytes: it is bounded by frames instead. Once the
/// buffer is past [`WRITE_BUFFER`] and the socket will not take more, the sink
/// refuses the next frame until it has drained (the session's feed waits), so the
/// buffer holds at most 8 KiB plus one frame; the largest frames, `initial_state`
/// and `missed`, hold at most 1 MiB of notifications each (`OPENING_MAX_BYTES`);
/// and a write that cannot finish within the queue expiry ends the connection
/// (1013). A byte cap would add nothing to that bound, and would make a frame
/// larger than itself fail on every reconnect, for ever: a notification stored
/// under a higher `HERALD_MAX_MESSAGE_BYTES` than today's is such a frame.
const MAX_WRITE_BUFFER: usize = usize::MAX;

/// The WebSocket subprotocol of Herald's clients, which the node answers with whenever
/// a client offers it. A browser fails a connection whose 101 picks none of the
/// protocols it offered, so a client that sends its token as [`BEARER_PREFIX`]
/// offers this one beside it, for the node to pick.
pub(crate) const SUBPROTOCOL: &str = "herald";
/// A subprotocol `bearer.<jwt>` carries the client token in `Sec-WebSocket-Protocol`,
/// the one request header a browser's WebSocket can set. A token in the URL is
/// written by proxies wherever they log the request line (nginx's error log does,
/// and no configuration removes it); a header is not. A JWT's characters (base64url
/// and `.`) are all valid in a subprotocol name.
const BEARER_PREFIX: &str = "bearer.";

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
            node.metrics.refused(resp.status().as_u16());
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
    // The subprotocol's token comes first, then the query's: a page that offers the
    // subprotocol chose it to keep the token out of the URL, so a query token beside
    // it is a leftover, not the page's choice. An empty one is absent, as an empty
    // `token=` is.
    let token = subprotocol_token(headers)?
        .filter(|t| !t.is_empty())
        .or(params.token.as_deref());
    let (ident, after) = identify_client(node, headers, token, params.after.as_deref())?;
    check_after(node, after).await?;
    // A draining node says so before it looks at the upgrade headers, so a plain
    // GET (a browser client's diagnostic after a refused upgrade) reads the 503.
    check_serving(node)?;
    let ws = match ws {
        Ok(ws) => ws,
        Err(r) => {
            // A browser's WebSocket hides a refused upgrade's status, so its client
            // asks again with a plain GET: it learns the user's 429 here, without a
            // place being taken, where it would otherwise read this 400/426 as an
            // upgrade that a proxy broke.
            check_user_room(node, &ident)?;
            return Err(ApiError::Other(r.status(), r.body_text()));
        }
    };
    // Picked whenever offered, whatever carried the token (`herald` alone, with the
    // token in the query, is a valid offer too).
    let ws = ws.protocols([SUBPROTOCOL]);
    let registration = admit(node, &ident).await?;
    let cfg = &node.config;
    let tracker = node.sessions.clone();
    // The session runs on a task of its own, spawned by axum's upgrade task, which
    // then ends: axum's task would otherwise keep its own state (the upgrade's
    // configuration, protocol and callback) beside the session's future for the
    // connection's whole life. The callback captures two pointers (the boxed
    // session and the tracker).
    let session = Session::new(node.clone(), ident, registration, after);
    Ok(ws
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .max_message_size(cfg.max_frame_bytes)
        .max_frame_size(cfg.max_frame_bytes)
        .on_upgrade(move |socket: WebSocket| {
            tracker.spawn(session.run(socket));
            std::future::ready(())
        }))
}

/// The token (401), then `after` (400): checked after `Origin` (403) and the
/// query string (400), in the contract's order, for every client connection.
/// `token` is the one the request carries outside its headers (a WebSocket's
/// subprotocol or query, an SSE stream's query); when it is absent or empty, the
/// `Authorization: Bearer` header's is read.
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

/// Refuses (400) a resume point beyond the newest id the store has issued: such an
/// `after` would skip every notification up to it, so the client would never get
/// them. The store's id sequence is shared by every node on it, so an id another
/// node issued is accepted here too. Only a point above what this node has stored
/// or seen ([`crate::issued::IssuedIds`]) costs a query; if the
/// store cannot answer, the point is let through (the opening then fails with 1011,
/// as it would anyway).
pub(crate) async fn check_after(node: &Node, after: Option<i64>) -> Result<(), ApiError> {
    let Some(after) = after else { return Ok(()) };
    let newest = match node.publisher.issued.newest_at_least(after).await {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "could not check after against the store");
            return Ok(());
        }
    };
    if after > newest {
        return Err(ApiError::BadRequest(format!(
            "after ({after}) is beyond the newest notification id ({newest}); resume from an id you received"
        )));
    }
    Ok(())
}

/// A resume point: a notification id ≥ 0.
pub(crate) fn parse_after(a: &str) -> Result<i64, ApiError> {
    a.parse::<i64>()
        .ok()
        .filter(|a| *a >= 0)
        .ok_or_else(|| ApiError::BadRequest(format!("after must be a notification id (got {a:?})")))
}

/// Admits a connection of `ident` once the request is valid: 503 while the node is
/// draining (`Retry-After: 5`) or full (`Retry-After: 1`), 429 when the user holds
/// `HERALD_MAX_CONNECTIONS_PER_USER` connections here already (no `Retry-After`:
/// another connection of the user must close first); otherwise its
/// [`Registration`], joined to its personal group.
pub(crate) async fn admit(node: &Arc<Node>, ident: &Identity) -> Result<Registration, ApiError> {
    check_serving(node)?;
    let registration = Registration::new(node, ident)
        .await
        .map_err(|full| match full {
            Full::Node => ApiError::Unavailable("node at connection capacity".into(), 1),
            Full::User => too_many(node, ident),
        })?;
    node.metrics.connections_accepted.inc();
    Ok(registration)
}

/// The 429 [`admit`] would answer `ident` now, without taking a place (the count can
/// change before an upgrade, which [`admit`] checks under the registry's lock).
fn check_user_room(node: &Node, ident: &Identity) -> Result<(), ApiError> {
    let most = node.config.max_connections_per_user as usize;
    if node.hub.user_connections(&ident.user) >= most {
        return Err(too_many(node, ident));
    }
    Ok(())
}

/// The per-user refusal: what the node answers, and why retrying soon does not help.
fn too_many(node: &Node, ident: &Identity) -> ApiError {
    ApiError::TooMany(format!(
        "user {} has {} connections to this node, the most allowed; close one first",
        ident.user, node.config.max_connections_per_user
    ))
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

/// The token of a `bearer.<jwt>` subprotocol in `Sec-WebSocket-Protocol` (split at
/// commas over every such header, as the 101 answer's choice is). Two of them, or
/// one without [`SUBPROTOCOL`] beside it, is a 400: the node could not say which
/// token it read, or a browser would fail the connection after the node accepted
/// it, since the 101 could pick none of the protocols it offered.
fn subprotocol_token(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let offered = || {
        headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
    };
    let mut bearers = offered().filter(|p| p.starts_with(BEARER_PREFIX.as_bytes()));
    let Some(bearer) = bearers.next() else {
        return Ok(None);
    };
    if bearers.next().is_some() {
        return Err(ApiError::BadRequest(format!(
            "Sec-WebSocket-Protocol offers more than one {BEARER_PREFIX}<jwt>; offer one token"
        )));
    }
    if !offered().any(|p| p == SUBPROTOCOL.as_bytes()) {
        return Err(ApiError::BadRequest(format!(
            "Sec-WebSocket-Protocol offers {BEARER_PREFIX}<jwt> without {SUBPROTOCOL}; \
             offer both (\"{SUBPROTOCOL}, {BEARER_PREFIX}<jwt>\"), so the node has one to answer with"
        )));
    }
    // Header values are visible ASCII or obs-text; a JWT is ASCII, so a token that
    // is not UTF-8 is not one.
    std::str::from_utf8(&bearer[BEARER_PREFIX.len()..])
        .map(Some)
        .map_err(|_| ApiError::Unauthorized(AuthError::Malformed.to_string()))
}

fn identify(node: &Node, headers: &HeaderMap, token: Option<&str>) -> Result<Identity, AuthError> {
    let token = token
        .filter(|t| !t.is_empty())
        .or_else(|| crate::auth::bearer(headers))
        .ok_or(AuthError::Missing)?;
    node.auth.verify(token)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// `after` is any integer ≥ 0; anything else is a 400 naming what was sent.
        #[test]
        fn after_is_a_non_negative_integer(a in prop_oneof![".{0,12}", "-?[0-9]{1,20}"]) {
            let want = a.parse::<i64>().ok().filter(|n| *n >= 0);
            match parse_after(&a) {
                Ok(n) => prop_assert_eq!(Some(n), want),
                Err(ApiError::BadRequest(why)) => {
                    prop_assert!(want.is_none());
                    prop_assert_eq!(why, format!("after must be a notification id (got {a:?})"));
                }
                Err(other) => prop_assert!(false, "{other:?}"),
            }
        }
    }
}
