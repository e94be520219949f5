//! How a listener is served: an accept loop around hyper's HTTP/1 connection, in
//! place of `axum::serve`, which sets no header-read timeout and counts nothing.
//! Both listeners (and the start-up listener) go through [`serve`].
//!
//! - **Header-read timeout** (`HERALD_HEADER_TIMEOUT_S`): a connection must send a
//!   complete request head within it, counted from the accept or from the end of
//!   its previous response (hyper starts the timer whenever the connection waits for
//!   a request head, so it is also the keep-alive idle timeout); then hyper closes
//!   it. Without it an idle or one-byte-a-minute connection holds its descriptor for
//!   ever.
//! - **Pending bound** (`HERALD_MAX_PENDING_CONNECTIONS`): every accepted connection
//!   holds a permit until it becomes a session (a 101, or an SSE stream's 200),
//!   which capacity counts from then on ([`crate::limits`]). Over the bound, or when
//!   the node's sessions and pending connections together would pass the
//!   descriptor budget they share ([`crate::limits::connection_budget`]), a new
//!   connection is answered 503 and closed, so connections that are not sessions can
//!   never take the descriptors the store and Redis need.
//!
//! The router is resolved once and shared by every connection (a clone is an `Arc`),
//! as `into_make_service` does: `axum::serve` given a bare router rebuilds the route
//! table per connection, and each WebSocket is one. On the admin listener each
//! request carries the peer's address as `ConnectInfo`, which the audit reads.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

use crate::config::Config;
use crate::node::Node;

/// The pending bound of the admin listener: a private plane with few callers.
const ADMIN_PENDING: usize = 64;
/// Refusals still writing their 503 at once; past this a refused connection is
/// closed without an answer, so a flood cannot pile up refusals either.
const REFUSING: usize = 64;
/// How long a refusal may take to write its 503 and read what the client sent.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// The answer over the pending bound, written straight to the socket.
const OVER_BOUND: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\n\
retry-after: 1\r\n\
connection: close\r\n\
content-length: 49\r\n\
\r\n\
{\"error\":\"node has too many pending connections\"}";

/// How one listener is served.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Options {
    header_timeout: Duration,
    max_pending: usize,
    /// Set `TCP_NODELAY`: frames are small and latency matters; Nagle would hold
    /// them back.
    nodelay: bool,
    /// Add the peer's address to every request as `ConnectInfo<SocketAddr>`.
    connect_info: bool,
}

impl Options {
    /// The public listener (and the start-up one on the same socket).
    pub(crate) fn public(cfg: &Config) -> Self {
        Self {
            header_timeout: cfg.header_timeout(),
            max_pending: crate::limits::pending_bound(cfg, crate::limits::fd_limit()),
            nodelay: true,
            connect_info: false,
        }
    }

    /// The admin listener.
    pub(crate) fn admin(cfg: &Config) -> Self {
        Self {
            header_timeout: cfg.header_timeout(),
            max_pending: ADMIN_PENDING,
            nodelay: false,
            connect_info: true,
        }
    }
}

/// A connection's place among the pending ones, given back when dropped (at its
/// session's start, or its end), and counted in `herald_pending_connections`.
struct Pending {
    _permit: OwnedSemaphorePermit,
    gauge: Option<Gauge>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(g) = &self.gauge {
            g.dec();
        }
    }
}

/// Serves `router` on `listener` until `stop` is cancelled; then stops accepting,
/// shuts every connection down gracefully and waits for them (upgraded ones are no
/// longer connections here: the node tracks their sessions). With `node` (the
/// public listener's), pending connections share the node's descriptor budget with
/// its sessions and are counted in its metrics.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    opts: Options,
    node: Option<Arc<Node>>,
    stop: CancellationToken,
) {
    let gauge = node.as_ref().map(|n| n.metrics.pending_connections.clone());
    let refused: Option<Counter> = node.as_ref().map(|n| n.metrics.pending_refused.clone());
    let pending = Arc::new(Semaphore::new(opts.max_pending));
    let refusing = Arc::new(Semaphore::new(REFUSING));
    let connections = TaskTracker::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(opts.header_timeout);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, or a connection reset before its accept:
                    // wait a little rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        if opts.nodelay {
            let _ = tcp.set_nodelay(true);
        }
        let admitted = pending.clone().try_acquire_owned().ok().filter(|_| {
            let in_use = opts.max_pending - pending.available_permits();
            node.as_deref().is_none_or(|n| within_budget(n, in_use))
        });
        let Some(permit) = admitted else {
            if let Some(c) = &refused {
                c.inc();
            }
            if let Ok(slot) = refusing.clone().try_acquire_owned() {
                connections.spawn(refuse(tcp, slot));
            }
            continue;
        };
        let conn = http
            .serve_connection(
                TokioIo::new(tcp),
                Connection::new(&router, permit, gauge.clone(), peer, opts.connect_info),
            )
            .with_upgrades();
        let stop = stop.clone();
        connections.spawn(async move {
            tokio::pin!(conn);
            let served = tokio::select! {
                served = conn.as_mut() => served,
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
        });
    }
    connections.close();
    connections.wait().await;
}

/// Whether the node's sessions and `pending` connections (the new one included)
/// fit the descriptors that client connections may hold.
fn within_budget(node: &Node, pending: usize) -> bool {
    let budget = crate::limits::connection_budget(&node.config, node.fd_limit());
    node.hub.connections() + pending <= budget
}

/// Answers a connection over the pending bound with 503 once its request head is
/// in (an HTTP client takes an answer before its request for a broken connection),
/// then reads what else it sent before closing, so the close does not reset the
/// answer away. All within [`REFUSAL_LINGER`]: one that sends nothing is closed
/// unanswered.
async fn refuse(mut tcp: TcpStream, _slot: OwnedSemaphorePermit) {
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        let mut head = Vec::with_capacity(1024);
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
            let n = tcp.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            head.extend_from_slice(&buf[..n]);
        }
        tcp.write_all(OVER_BOUND).await?;
        tcp.shutdown().await?;
        while tcp.read(&mut buf).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// One connection's service: the shared router, and the connection's pending
/// permit until a response makes it a session.
#[derive(Clone)]
struct Connection {
    router: Router,
    pending: Arc<Mutex<Option<Pending>>>,
    peer: Option<SocketAddr>,
}

impl Connection {
    fn new(
        router: &Router,
        permit: OwnedSemaphorePermit,
        gauge: Option<Gauge>,
        peer: SocketAddr,
        info: bool,
    ) -> Self {
        if let Some(g) = &gauge {
            g.inc();
        }
        let pending = Pending {
            _permit: permit,
            gauge,
        };
        Self {
            router: router.clone(),
            pending: Arc::new(Mutex::new(Some(pending))),
            peer: info.then_some(peer),
        }
    }
}

/// Whether `response` turns its connection into a session, which capacity counts:
/// a WebSocket's 101, or an SSE stream's 200.
fn starts_session(response: &Response<Body>) -> bool {
    match response.status() {
        StatusCode::SWITCHING_PROTOCOLS => true,
        StatusCode::OK => response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream")),
        _ => false,
    }
}

impl hyper::service::Service<Request<Incoming>> for Connection {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response<Body>, Infallible>> + Send>,
    >;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        if let Some(peer) = self.peer {
            req.extensions_mut().insert(ConnectInfo(peer));
        }
        let mut router = self.router.clone();
        let pending = self.pending.clone();
        Box::pin(async move {
            let response = router.call(req.map(Body::new)).await?;
            if starts_session(&response) {
                crate::lock::lock(&pending).take();
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_over_bound_answer_is_well_formed() {
        let text = std::str::from_utf8(OVER_BOUND).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(json["error"].as_str().unwrap().contains("pending"));
    }

    #[test]
    fn upgrades_and_event_streams_are_sessions() {
        let with = |status: StatusCode, ct: Option<&str>| {
            let mut r = Response::builder().status(status);
            if let Some(ct) = ct {
                r = r.header(header::CONTENT_TYPE, ct);
            }
            starts_session(&r.body(Body::empty()).unwrap())
        };
        assert!(with(StatusCode::SWITCHING_PROTOCOLS, None));
        assert!(with(StatusCode::OK, Some("text/event-stream")));
        assert!(!with(StatusCode::OK, Some("application/json")));
        assert!(!with(
            StatusCode::SERVICE_UNAVAILABLE,
            Some("text/event-stream")
        ));
    }
}
