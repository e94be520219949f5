//! One task per WebSocket connection: dial from a chosen source address (again, after
//! a backoff, when the node refuses with "try again"), wait for `initial_state`, then
//! read every frame until told to stop, recording latency, duplicates and errors into
//! the shared [`Counters`].

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use herald_shared::{ClientFrame, ServerFrame};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::timeout;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::hist::Recorder;
use crate::upgrade::upgrade;

/// Microseconds since the Unix epoch: the clock both publisher and clients stamp with.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// What every published message carries (as the notification's message or the
/// event's payload).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Probe {
    /// When the publisher built the request.
    pub sent_us: u64,
    /// Unique per published message within one process's run.
    pub seq: u64,
}

/// A live frame as the read loop needs it: one pass over the text, borrowing every
/// string, ignoring what it does not use. (Parsing into [`ServerFrame`], an
/// internally tagged enum, buffers and copies every field first: that was the
/// largest part of the generator's CPU per received message.)
#[derive(Deserialize)]
struct LiveFrame<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(default, borrow)]
    notification: Option<LiveNotification<'a>>,
    #[serde(default, borrow)]
    notifications: Option<Vec<LiveNotification<'a>>>,
    #[serde(default, borrow)]
    payload: Option<&'a serde_json::value::RawValue>,
    #[serde(default)]
    code: Option<&'a str>,
}

#[derive(Deserialize)]
struct LiveNotification<'a> {
    id: i64,
    #[serde(borrow)]
    message: &'a serde_json::value::RawValue,
}

/// Counters shared by all connection tasks of a run.
#[derive(Default)]
pub struct Counters {
    /// Publish-to-receive latency, µs.
    pub latency: Recorder,
    /// First dial to `initial_state`, µs (refused attempts and their backoff
    /// included).
    pub initial_state: Recorder,
    /// Messages received for the first time on their connection.
    pub delivered: AtomicU64,
    /// Messages received again on the same connection.
    pub duplicated: AtomicU64,
    /// Connections currently past `initial_state` and still open.
    pub open: AtomicU64,
    /// Connections that were closed by a node (1012 drain, 1013 slow consumer) and
    /// came back on another node (`--reconnect`).
    pub reconnects: AtomicU64,
    /// Close received to `initial_state` on the next node, µs.
    pub reconnect_time: Recorder,
    /// Initial dials that a node refused with "try again" ([`retryable`]) and that
    /// were dialed again, on the same node, after a backoff.
    pub connect_retries: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Counters {
    pub fn error(&self, cause: impl Into<String>) {
        *self.errors.lock().unwrap().entry(cause.into()).or_default() += 1;
    }

    pub fn errors(&self) -> BTreeMap<String, u64> {
        self.errors.lock().unwrap().clone()
    }
}

/// A node a connection may dial: its address and `ws://host:port` prefix.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub ws_base: String,
}

/// What every connection of a run dials with, held once for all of them: a held
/// connection keeps only its indices into it.
#[derive(Debug)]
pub struct DialPlan {
    /// Every node of the run; a connection starts on `nodes[Dial::first]` and, with
    /// `reconnect`, moves on to the next one when closed.
    pub nodes: Vec<Target>,
    /// Local addresses to dial from.
    pub sources: Vec<IpAddr>,
    /// User ids, by the plan's user index.
    pub users: Vec<String>,
    /// The secret client tokens are signed with. Tokens are minted on each dial
    /// rather than kept: one per connection would be held for the whole run.
    pub jwt_secret: String,
    /// Group to subscribe to after `initial_state` (and to put in the tokens).
    pub subscribe: Option<String>,
    pub timeout: Duration,
    /// Come back after a 1012 (drain) or 1013 (slow consumer) close, on the next
    /// node, with `after=<last notification id>`, as the contract asks clients to.
    pub reconnect: bool,
}

/// Where and as whom one connection dials: indices into its [`DialPlan`], kept small
/// because every held connection's task carries one.
#[derive(Debug, Clone)]
pub struct Dial {
    /// Index of the connection within this process.
    pub index: u32,
    /// Index of its user in the plan.
    pub user: u32,
    /// The node it dials first.
    pub first: u32,
    /// The local address it dials from, in `plan.sources`.
    pub source: Option<u16>,
    pub plan: Arc<DialPlan>,
}

impl Dial {
    fn url(&self, node: usize, after: Option<i64>) -> Result<String, String> {
        let plan = &self.plan;
        let token = token(
            &plan.jwt_secret,
            &plan.users[self.user as usize],
            plan.subscribe.as_deref().map(|g| vec![g]),
        )
        .map_err(|_| "token".to_owned())?;
        let mut url = format!(
            "{}{}?token={token}",
            plan.nodes[node].ws_base,
            herald_shared::config::WS_PATH,
        );
        if let Some(a) = after {
            url += &format!("&after={a}");
        }
        Ok(url)
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    groups: Option<Vec<&'a str>>,
}

/// An HS256 client token for `user`, valid one day.
pub fn token(secret: &str, user: &str, groups: Option<Vec<&str>>) -> anyhow::Result<String> {
    let exp = now_us() / 1_000_000 + 86_400;
    let claims = Claims {
        sub: user,
        exp,
        groups,
    };
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

/// Why a read loop ended.
enum Ended {
    /// The run told it to stop.
    Stopped,
    /// The node closed with this code.
    Closed(u16),
    /// Anything else (reset, EOF, protocol error): already counted as an error.
    Failed,
}

/// How a connection attempt ended: ready (with its user), or failed with a cause.
pub type Ready = Result<usize, String>;

/// Small buffers: the bench holds tens of thousands of these.
///
/// The read buffer is what an idle connection keeps besides its task: tungstenite
/// allocates `read_buffer_size`, reads at most that much per `read`, and grows the
/// buffer to hold a larger frame (to twice the size, as `Vec` grows), never shrinking
/// it. At 128 bytes an idle connection keeps 256 after the opening frames; a
/// notification frame (about 160 bytes) takes two reads instead of one. It also
/// zero-fills the buffer up to this size before every read, so a large one costs a
/// memset per message.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(128)
        .write_buffer_size(0)
        .max_write_buffer_size(1 << 20)
        .max_message_size(Some(16 << 20))
}

/// Connects, reports readiness on `ready`, then reads until `stop` is cancelled,
/// reconnecting when a node closes it and `dial.plan.reconnect` is set.
///
/// This task's state is what every held connection keeps, and an async fn's state
/// is as large as its largest await point: connecting is boxed, the connection is
/// read in place (`read_loop` borrows it), and the rare steps (reconnecting,
/// closing) are boxed too.
pub async fn run(
    dial: Dial,
    counters: Arc<Counters>,
    gate: Arc<Semaphore>,
    ready: mpsc::UnboundedSender<Ready>,
    stop: CancellationToken,
) {
    let Some((mut ws, newest)) = Box::pin(connect(&dial, &counters, gate, ready)).await else {
        return;
    };
    let mut seen = Seen {
        last_id: newest,
        ..Seen::default()
    };
    let mut node = dial.first as usize;
    let mut stopped = std::pin::pin!(stop.cancelled());
    loop {
        match read_loop(&mut ws, &dial, &counters, stopped.as_mut(), &mut seen).await {
            Ended::Closed(code @ (1012 | 1013)) if dial.plan.reconnect => {
                let closed = Instant::now();
                // The newest id the client knows, from `initial_state` or live
                // frames; a client that knows none asks for everything (after=0).
                let after = seen.last_id.unwrap_or(0);
                match Box::pin(reopen(&dial, &mut node, Some(after), &stop)).await {
                    Some(next) => {
                        counters.reconnects.fetch_add(1, Ordering::Relaxed);
                        counters
                            .reconnect_time
                            .record(dial.index as usize, closed.elapsed().as_micros() as u64);
                        ws = next;
                    }
                    None => {
                        if !stop.is_cancelled() {
                            counters.error(format!("reconnect_failed_after_{code}"));
                        }
                        break;
                    }
                }
            }
            Ended::Closed(code) => {
                counters.error(format!("closed_{code}"));
                break;
            }
            Ended::Stopped => {
                let _ = Box::pin(timeout(Duration::from_secs(2), ws.close(None))).await;
                break;
            }
            Ended::Failed => break,
        }
    }
    counters.open.fetch_sub(1, Ordering::Relaxed);
}

/// The first wait before dialing a refused connection again; it doubles per refusal
/// up to [`RETRY_MAX`], and each wait adds up to half of it again at random, so that
/// connections refused in the same moment do not all come back in the same moment.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Whether an attempt that failed with `cause` (as [`open`] names it) was refused by a
/// node that asks to be tried again, as `@herald/client` retries it: 1013 (try again
/// later), 1011 and the `internal` error frame before it (the node could not load
/// `initial_state`: its store pool timed out on an overloaded box), and a 503 to the
/// upgrade (over capacity, over the bound on connections not yet sessions, or not
/// serving yet).
///
/// Not retried: refusals that another attempt cannot change (401, 403, a 400 about
/// the request, a bad frame, a 429 over the per-user cap, which only the run's own
/// plan of users can cause), and transport failures
/// (refused, reset, out of ports or files): those are the generator's own limits or a
/// node that is gone, and retrying would hide them in a slower connect rate. Nor is
/// `connect_timeout`: each attempt is given all the time left before the dial
/// deadline, so a timeout means none is left; and cutting an attempt short to try
/// again would throw away the work an overloaded node has already put into it.
pub fn retryable(cause: &str) -> bool {
    matches!(
        cause,
        "closed_1011" | "closed_1013" | "handshake_http_503" | "server_error_internal"
    )
}

/// How long to wait before dialing again: `backoff` plus up to half of it at random.
fn jittered(backoff: Duration, dial: u32, attempt: u32) -> Duration {
    use std::hash::BuildHasher;
    let r = std::hash::RandomState::new().hash_one((dial, attempt));
    let half = backoff.as_micros() as u64 / 2;
    backoff + Duration::from_micros(r % half.max(1))
}

/// Opens the connection (at most `connect_concurrency` at a time), counts it open,
/// and reports it ready or failed on `ready`.
///
/// A refusal that asks to be tried again ([`retryable`]) is dialed again on the same
/// node (its user was assigned there), with a growing, jittered backoff, within the
/// dial timeout counted from the first attempt; time to `initial_state` is measured
/// from the first attempt too. The permit is kept while backing off: the gate bounds
/// the connections being set up, and one waiting to retry is still being set up
/// (letting a fresh dial in would only add load to a node that is refusing).
///
/// The loop lives here, in the future `run` boxes and drops once connected, so a
/// held connection's task is no larger for it.
async fn connect(
    dial: &Dial,
    counters: &Counters,
    gate: Arc<Semaphore>,
    ready: mpsc::UnboundedSender<Ready>,
) -> Option<(WebSocketStream<TcpStream>, Option<i64>)> {
    let Ok(_permit) = gate.acquire_owned().await else {
        // The run closed the gate (its memory floor): this connection is never tried.
        counters.error("not_dialed");
        let _ = ready.send(Err("not_dialed".into()));
        return None;
    };
    let started = Instant::now();
    let deadline = started + dial.plan.timeout;
    let mut backoff = RETRY_FIRST;
    let mut attempt = 0u32;
    let opened = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match open(dial, dial.first as usize, None, left).await {
            Err(cause) if retryable(&cause) => {
                let wait = jittered(backoff, dial.index, attempt);
                if Instant::now() + wait >= deadline {
                    break Err(cause);
                }
                counters.connect_retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(wait).await;
                backoff = (backoff * 2).min(RETRY_MAX);
                attempt += 1;
            }
            other => break other,
        }
    };
    match opened {
        Ok(opened) => {
            counters
                .initial_state
                .record(dial.index as usize, started.elapsed().as_micros() as u64);
            counters.open.fetch_add(1, Ordering::Relaxed);
            let _ = ready.send(Ok(dial.user as usize));
            Some(opened)
        }
        Err(cause) => {
            counters.error(cause.clone());
            let _ = ready.send(Err(cause));
            None
        }
    }
}

/// Dials the nodes after `node` in turn until one answers with `initial_state`
/// (a draining node answers 503), with a short backoff, within the dial timeout.
async fn reopen(
    dial: &Dial,
    node: &mut usize,
    after: Option<i64>,
    stop: &CancellationToken,
) -> Option<WebSocketStream<TcpStream>> {
    let deadline = Instant::now() + dial.plan.timeout;
    let mut backoff = Duration::from_millis(50);
    while Instant::now() < deadline && !stop.is_cancelled() {
        *node = (*node + 1) % dial.plan.nodes.len();
        let left = deadline.saturating_duration_since(Instant::now());
        if let Ok((ws, _)) = open(dial, *node, after, left).await {
            return Some(ws);
        }
        tokio::time::sleep(backoff.min(left)).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
    None
}

/// What one logical connection has received, across its reconnects.
#[derive(Default)]
struct Seen {
    /// Boxed on first use: an idle connection's task then holds a pointer, not the
    /// set's 48 bytes.
    #[allow(clippy::box_collection)]
    seqs: Option<Box<HashSet<u64>>>,
    /// Highest notification id received or in `initial_state`: the `after` of a
    /// reconnect.
    last_id: Option<i64>,
}

/// Dials `dial.plan.nodes[node]` and reads up to `initial_state` (and `subscribed`,
/// if asked to subscribe) `within` a time limit; also returns the newest notification
/// id `initial_state` held.
///
/// Boxed: the handshake's state is large, and an async fn's state is as large as its
/// largest await point, so held inline it would stay in every idle connection's task.
async fn open(
    dial: &Dial,
    node: usize,
    after: Option<i64>,
    within: Duration,
) -> Result<(WebSocketStream<TcpStream>, Option<i64>), String> {
    match Box::pin(timeout(within, open_inline(dial, node, after))).await {
        Ok(opened) => opened,
        Err(_) => Err("connect_timeout".into()),
    }
}

async fn open_inline(
    dial: &Dial,
    node: usize,
    after: Option<i64>,
) -> Result<(WebSocketStream<TcpStream>, Option<i64>), String> {
    let addr = dial.plan.nodes[node].addr;
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| io_cause("socket", &e))?;
    if let Some(src) = dial.source.map(|s| dial.plan.sources[s as usize]) {
        bind_no_port(&socket);
        socket
            .bind(SocketAddr::new(src, 0))
            .map_err(|e| io_cause("bind", &e))?;
    }
    let stream = socket
        .connect(addr)
        .await
        .map_err(|e| io_cause("connect", &e))?;
    let _ = stream.set_nodelay(true);
    let (mut ws, _) = upgrade(dial.url(node, after)?, stream, ws_config())
        .await
        .map_err(|e| ws_cause("handshake", e))?;
    let mut subscribed = dial.plan.subscribe.is_none();
    let mut initial = false;
    let mut newest = None;
    while !(initial && subscribed) {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => match serde_json::from_str::<ServerFrame>(&t) {
                Ok(ServerFrame::InitialState { notifications, .. }) => {
                    initial = true;
                    newest = notifications.iter().map(|n| n.id).max();
                    if let Some(group) = &dial.plan.subscribe {
                        let f = serde_json::to_string(&ClientFrame::Subscribe {
                            group: group.clone(),
                        })
                        .expect("frames serialise");
                        ws.send(Message::text(f))
                            .await
                            .map_err(|e| ws_cause("subscribe", e))?;
                    }
                }
                Ok(ServerFrame::Subscribed { .. }) => subscribed = true,
                Ok(ServerFrame::Error { code, .. }) => {
                    return Err(format!("server_error_{}", snake(&code)));
                }
                Ok(_) => {}
                Err(_) => return Err("bad_frame".into()),
            },
            Some(Ok(Message::Close(c))) => {
                return Err(format!(
                    "closed_{}",
                    c.map(|c| u16::from(c.code)).unwrap_or(1005)
                ));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(ws_cause("opening", e)),
            None => return Err("eof_opening".into()),
        }
    }
    Ok((ws, newest))
}

/// Lets `connect` pick the port per (source, destination) pair, so each source
/// address gets ~28k ports per node rather than ~28k in all.
pub fn bind_no_port(socket: &TcpSocket) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: a valid socket fd and a c_int option of the right size.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &one as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

async fn read_loop(
    ws: &mut WebSocketStream<TcpStream>,
    dial: &Dial,
    counters: &Counters,
    mut stopped: Pin<&mut WaitForCancellationFuture<'_>>,
    seen: &mut Seen,
) -> Ended {
    loop {
        // Frames first while there are any, then the stop: by hand rather than with
        // `select!`, whose state (in every held connection's task) is larger.
        let msg = std::future::poll_fn(|cx| match ws.poll_next_unpin(cx) {
            Poll::Ready(m) => Poll::Ready(Some(m)),
            Poll::Pending => stopped.as_mut().poll(cx).map(|()| None),
        })
        .await;
        let Some(msg) = msg else {
            return Ended::Stopped;
        };
        match msg {
            Some(Ok(Message::Text(t))) => {
                let now = now_us();
                match serde_json::from_str::<LiveFrame>(&t) {
                    Ok(f) => match f.kind {
                        "notification" => match f.notification {
                            Some(n) => {
                                receive(dial, counters, seen, now, n.message.get());
                                seen.last_id = seen.last_id.max(Some(n.id));
                            }
                            None => counters.error("bad_frame"),
                        },
                        "missed" => {
                            for n in f.notifications.unwrap_or_default() {
                                receive(dial, counters, seen, now, n.message.get());
                                seen.last_id = seen.last_id.max(Some(n.id));
                            }
                        }
                        "event" => match f.payload {
                            Some(p) => receive(dial, counters, seen, now, p.get()),
                            None => counters.error("bad_frame"),
                        },
                        "error" => {
                            counters.error(format!("server_error_{}", f.code.unwrap_or("unknown")))
                        }
                        _ => {}
                    },
                    Err(_) => counters.error("bad_frame"),
                }
            }
            Some(Ok(Message::Close(c))) => {
                return Ended::Closed(c.map(|c| u16::from(c.code)).unwrap_or(1005));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                counters.error(ws_cause("read", e));
                return Ended::Failed;
            }
            None => {
                counters.error("eof");
                return Ended::Failed;
            }
        }
    }
}

/// Counts one received message: delivered the first time its probe's sequence
/// number shows up on this connection, duplicated after that.
fn receive(dial: &Dial, counters: &Counters, seen: &mut Seen, now: u64, body: &str) {
    let Ok(p) = serde_json::from_str::<Probe>(body) else {
        counters.error("foreign_message");
        return;
    };
    if seen.seqs.get_or_insert_default().insert(p.seq) {
        counters.delivered.fetch_add(1, Ordering::Relaxed);
        counters
            .latency
            .record(dial.index as usize, now.saturating_sub(p.sent_us));
    } else {
        counters.duplicated.fetch_add(1, Ordering::Relaxed);
    }
}

fn snake(code: &herald_shared::ErrorCode) -> String {
    serde_json::to_value(code)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

/// A short, stable name for an I/O failure at `stage`.
pub fn io_cause(stage: &str, e: &std::io::Error) -> String {
    let what = match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "refused",
        Some(libc::EADDRNOTAVAIL) => "addr_not_available",
        Some(libc::EADDRINUSE) => "addr_in_use",
        Some(libc::EMFILE) | Some(libc::ENFILE) => "too_many_open_files",
        Some(libc::ECONNRESET) => "reset",
        Some(libc::ETIMEDOUT) => "timed_out",
        Some(libc::ENOBUFS) | Some(libc::ENOMEM) => "no_memory",
        _ => return format!("{stage}_{:?}", e.kind()).to_lowercase(),
    };
    format!("{stage}_{what}")
}

fn ws_cause(stage: &str, e: tokio_tungstenite::tungstenite::Error) -> String {
    use tokio_tungstenite::tungstenite::Error;
    match e {
        Error::Http(resp) => format!("{stage}_http_{}", resp.status().as_u16()),
        Error::Io(io) => io_cause(stage, &io),
        Error::ConnectionClosed | Error::AlreadyClosed => format!("{stage}_closed"),
        Error::Protocol(_) => format!("{stage}_protocol"),
        Error::Capacity(_) => format!("{stage}_capacity"),
        _ => format!("{stage}_other"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only the refusals that ask to be tried again are retried.
    #[test]
    fn retries_only_try_again_refusals() {
        for cause in [
            "closed_1011",
            "closed_1013",
            "handshake_http_503",
            "server_error_internal",
        ] {
            assert!(retryable(cause), "{cause}");
        }
        for cause in [
            "handshake_http_401",
            "handshake_http_403",
            "handshake_http_400",
            "handshake_http_429",
            "server_error_forbidden",
            "bad_frame",
            "closed_1008",
            "connect_refused",
            "connect_addr_not_available",
            "handshake_reset",
            "eof_opening",
            "connect_timeout",
        ] {
            assert!(!retryable(cause), "{cause}");
        }
    }

    /// The wait is the backoff plus less than half of it again.
    #[test]
    fn jitter_stays_within_half_the_backoff() {
        for attempt in 0..100 {
            let w = jittered(RETRY_MAX, 7, attempt);
            assert!(w >= RETRY_MAX && w < RETRY_MAX * 3 / 2, "{w:?}");
        }
    }
}
