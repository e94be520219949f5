//! `GET /sse/notifications/`: the same connection as the WebSocket, as a
//! Server-Sent Events stream, for networks (proxies, firewalls) that block WebSockets.
//!
//! It is admitted by the same checks ([`crate::upgrade`]), joins the same groups
//! before the response starts (the connect seam), and runs the same [`Session`]
//! (opening frames, seam, slow consumers, heartbeat, token expiry, paced drain)
//! through [`SseStream`]. Each frame is an event named after its `"type"`, whose
//! data is the frame's JSON; the user's own notifications (and opening frames that
//! carry any) set the event `id`, so a browser's `EventSource` resumes by itself
//! with `Last-Event-ID`. A stream has no close frame: its last event is
//! `close`, with the code a WebSocket would have closed with.
//!
//! The stream is one-way: `mark_read`, `mark_all_read` and `ping` go through
//! `POST /sse/notifications/commands`, and groups are chosen when the stream opens
//! (`groups=`, or every group of the token), since a POST may reach another node than
//! the one holding the stream.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use herald_shared::{ClientFrame, ErrorCode, GroupName, ServerFrame, close};
use rand::Rng;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::time::timeout;

use crate::api::ApiError;
use crate::auth::{AuthError, bearer};
use crate::node::Node;
use crate::session::commands::{self, GROUPS_MAX};
use crate::session::{Broken, CLOSE_GRACE, End, Incoming, Outgoing, Session, Transport};
use crate::upgrade::{
    admit, check_after, check_origin, counted_refusal, identify_client, parse_after,
};

/// Bytes gathered before a chunk goes to the response body (a flush sends sooner).
const WRITE_BUFFER: usize = 8 * 1024;
/// Chunks between the session and the HTTP connection. Small, so a client that
/// stops reading fills the socket, then this, and the session's write bound (the
/// queue expiry) turns it into a slow consumer, as on a WebSocket.
const CHUNKS_IN_FLIGHT: usize = 2;
/// How long `EventSource` waits before it reconnects after the stream ends.
const RETRY_MS: u32 = 2_000;
/// A draining node asks `EventSource` to come back after a random delay below this,
/// so its clients do not all reconnect at one instant.
const DRAIN_RETRY_MAX_MS: u32 = 3_000;

#[derive(Debug, Deserialize)]
pub struct StreamParams {
    token: Option<String>,
    after: Option<String>,
    groups: Option<String>,
}

/// Opens a stream: the WebSocket upgrade's checks and seam, then a 200 whose body
/// the session writes.
pub async fn stream(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    params: Result<Query<StreamParams>, QueryRejection>,
) -> Response {
    let result = open(&node, &headers, params).await;
    counted_refusal(&node, result)
}

async fn open(
    node: &Arc<Node>,
    headers: &HeaderMap,
    params: Result<Query<StreamParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    check_origin(node, headers)?;
    let Query(params) = params.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let (ident, after) = identify_client(
        node,
        headers,
        params.token.as_deref(),
        params.after.as_deref(),
    )?;
    // EventSource sends the last event id it saw when it reconnects, with the URL
    // (and its `after`) it first opened: the newer of the two is where to resume.
    let last_event_id = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(parse_after(v.to_str().unwrap_or("?")).map_err(|_| {
            ApiError::BadRequest(format!(
                "Last-Event-ID must be a notification id (got {v:?})"
            ))
        })?),
    };
    let after = after.max(last_event_id);
    check_after(node, after).await?;
    let groups = wanted_groups(&ident, params.groups.as_deref())?;
    let mut registration = admit(node, &ident).await?;
    node.metrics.sse_streams.inc();
    // Joined before the response starts, like the personal group before a 101: an
    // event published once the client has its 200 reaches it.
    for g in groups {
        let _ = registration.join(g).await;
    }
    let (tx, rx) = mpsc::channel::<Bytes>(CHUNKS_IN_FLIGHT);
    let session = Session::new(node.clone(), ident, registration, after).run(SseStream::new(tx));
    node.sessions.spawn(session);
    let body = Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, Infallible>(chunk), rx))
    }));
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache, no-store"),
            // nginx must not buffer the stream (ops/nginx/herald.conf also says so).
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        body,
    )
        .into_response())
}

/// The groups a stream joins besides its personal group: the `groups=` list (valid
/// names the token allows), or with no `groups` at all every group of the token; at
/// most [`GROUPS_MAX`] with the personal group.
fn wanted_groups(
    ident: &crate::auth::Identity,
    list: Option<&str>,
) -> Result<Vec<GroupName>, ApiError> {
    let Some(list) = list else {
        let groups: Vec<GroupName> = ident
            .groups
            .iter()
            .filter(|g| **g != ident.user.group())
            .cloned()
            .collect();
        if groups.len() + 1 > GROUPS_MAX {
            return Err(ApiError::BadRequest(format!(
                "the token lists {} groups; choose at most {} with groups=",
                groups.len(),
                GROUPS_MAX - 1
            )));
        }
        return Ok(groups);
    };
    let mut groups: Vec<GroupName> = Vec::new();
    for name in list.split(',').filter(|g| !g.is_empty()) {
        let group = GroupName::parse(name)
            .map_err(|e| ApiError::BadRequest(format!("groups: {name:?}: group name {e}")))?;
        if !ident.may_join(&group) {
            return Err(ApiError::Forbidden(format!(
                "token does not allow group {group}"
            )));
        }
        if group != ident.user.group() && !groups.contains(&group) {
            groups.push(group);
        }
    }
    if groups.len() + 1 > GROUPS_MAX {
        return Err(ApiError::BadRequest(format!(
            "at most {GROUPS_MAX} groups per connection, the user's own included"
        )));
    }
    Ok(groups)
}

/// `POST /sse/notifications/commands`: a client frame from an SSE client, answered
/// with the reply frame a WebSocket would get (200), or `{"error"}` with the status
/// its error code stands for.
pub async fn command(State(node): State<Arc<Node>>, headers: HeaderMap, body: Bytes) -> Response {
    let result = async {
        check_origin(&node, &headers)?;
        let token = bearer(&headers).ok_or(AuthError::Missing);
        let ident = token
            .and_then(|t| node.auth.verify(t))
            .map_err(|e| ApiError::Unauthorized(e.to_string()))?;
        let text = std::str::from_utf8(&body)
            .map_err(|_| ApiError::BadRequest("body is not UTF-8".into()))?;
        let frame = ClientFrame::parse(text).map_err(ApiError::BadRequest)?;
        match commands::handle_stateless(&node, &ident, frame).await {
            None => Err(ApiError::BadRequest(
                "over SSE, groups are chosen when the stream opens: reopen it with \
                 groups=<g1,g2> and after=<newest id>"
                    .into(),
            )),
            Some(ServerFrame::Error { code, message }) => Err(match code {
                ErrorCode::Forbidden => ApiError::Forbidden(message),
                ErrorCode::Internal => ApiError::Unavailable(message, 1),
                ErrorCode::RateLimited => ApiError::TooMany(message),
                _ => ApiError::BadRequest(message),
            }),
            Some(reply) => Ok((
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                reply.to_json(),
            )
                .into_response()),
        }
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// A session's side of an SSE response: frames become events in a buffer, and a
/// flush hands the buffer to the response body.
pub struct SseStream {
    tx: mpsc::Sender<Bytes>,
    buf: BytesMut,
}

impl SseStream {
    fn new(tx: mpsc::Sender<Bytes>) -> Self {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(format!("retry: {RETRY_MS}\n\n").as_bytes());
        Self { tx, buf }
    }
}

impl Transport for SseStream {
    const TWO_WAY: bool = false;

    async fn feed(&mut self, frame: Outgoing) -> Result<(), Broken> {
        write_event(
            &mut self.buf,
            frame.kind,
            frame.resume_id,
            frame.text.as_str(),
        );
        if self.buf.len() >= WRITE_BUFFER {
            self.flush().await
        } else {
            Ok(())
        }
    }

    async fn flush(&mut self) -> Result<(), Broken> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = self.buf.split().freeze();
        self.tx.send(chunk).await.map_err(|_| Broken)
    }

    /// A comment line: invisible to `EventSource`, a sign of life to a client's
    /// watchdog, and a write that fails once the client is gone.
    async fn ping(&mut self) -> Result<(), Broken> {
        self.buf.extend_from_slice(b":\n\n");
        self.flush().await
    }

    /// Nothing to read: the stream only ends, when hyper drops the body.
    async fn recv(&mut self) -> Incoming {
        self.tx.closed().await;
        Incoming::Gone
    }

    async fn finish(&mut self, end: &End) {
        let End::Close(code, reason) = end else {
            return;
        };
        if *code == close::SERVICE_RESTART {
            let retry = rand::rng().random_range(0..DRAIN_RETRY_MAX_MS);
            self.buf
                .extend_from_slice(format!("retry: {retry}\n\n").as_bytes());
        }
        let frame = ServerFrame::Close {
            code: *code,
            reason: (*reason).to_owned(),
        };
        write_event(&mut self.buf, frame.kind(), None, &frame.to_json());
        let _ = timeout(CLOSE_GRACE, self.flush()).await;
    }
}

/// Appends one event. JSON kept byte for byte may hold line breaks (whitespace in a
/// backend's message); each line becomes a `data:` line, which a client joins
/// with `\n` (a `\r` there comes back as `\n`, still whitespace).
fn write_event(buf: &mut BytesMut, kind: &str, id: Option<i64>, data: &str) {
    buf.extend_from_slice(b"event: ");
    buf.extend_from_slice(kind.as_bytes());
    buf.extend_from_slice(b"\n");
    if let Some(id) = id {
        buf.extend_from_slice(format!("id: {id}\n").as_bytes());
    }
    let data = if data.contains('\r') {
        std::borrow::Cow::Owned(data.replace("\r\n", "\n"))
    } else {
        std::borrow::Cow::Borrowed(data)
    };
    for line in data.split(['\n', '\r']) {
        buf.extend_from_slice(b"data: ");
        buf.extend_from_slice(line.as_bytes());
        buf.extend_from_slice(b"\n");
    }
    buf.extend_from_slice(b"\n");
}

/// CORS for the client endpoints: pages on other origins read the stream, post
/// commands and read a refused upgrade's status. Tokens are bearer tokens, never
/// cookies, so no credentials are allowed; `HERALD_ALLOWED_ORIGINS`, when set,
/// is the list of origins.
pub fn cors(node: &Node) -> tower_http::cors::CorsLayer {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let allowed = &node.config.allowed_origins;
    let origins = if allowed.is_empty() {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            allowed
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect::<Vec<_>>(),
        )
    };
    CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([axum::http::Method::GET, axum::http::Method::POST])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::HeaderName::from_static("last-event-id"),
        ])
        .expose_headers([header::RETRY_AFTER])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, id: Option<i64>, data: &str) -> String {
        let mut buf = BytesMut::new();
        write_event(&mut buf, kind, id, data);
        String::from_utf8(buf.to_vec()).unwrap()
    }

    #[test]
    fn an_event_names_its_frame_and_carries_its_id() {
        assert_eq!(
            event("notification", Some(7), r#"{"type":"notification"}"#),
            "event: notification\nid: 7\ndata: {\"type\":\"notification\"}\n\n"
        );
        assert_eq!(event("pong", None, "{}"), "event: pong\ndata: {}\n\n");
    }

    #[test]
    fn line_breaks_in_json_become_data_lines() {
        assert_eq!(
            event("event", None, "{\"a\":\n1,\r\n\"b\":2}"),
            "event: event\ndata: {\"a\":\ndata: 1,\ndata: \"b\":2}\n\n"
        );
    }
}
