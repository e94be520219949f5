//! One task per WebSocket connection: dial from a chosen source address, wait for
//! `initial_state`, then read every frame until told to stop, recording latency,
//! duplicates and errors into the shared [`Counters`].

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use herald_shared::{ClientFrame, ServerFrame};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

use crate::hist::Recorder;

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
    /// Dial start to `initial_state`, µs.
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

/// Where and as whom one connection dials.
#[derive(Debug, Clone)]
pub struct Dial {
    /// Index of the connection within this process.
    pub index: usize,
    /// Index of its user in the plan.
    pub user: usize,
    /// Every node of the run; the connection starts on `nodes[first]` and, with
    /// `reconnect`, moves on to the next one when closed.
    pub nodes: Arc<Vec<Target>>,
    pub first: usize,
    pub source: Option<IpAddr>,
    /// The client token (query parameter `token`).
    pub token: String,
    /// Group to subscribe to after `initial_state`.
    pub subscribe: Option<String>,
    pub timeout: Duration,
    /// Come back after a 1012 (drain) or 1013 (slow consumer) close, on the next
    /// node, with `after=<last notification id>`, as the contract asks clients to.
    pub reconnect: bool,
}

impl Dial {
    fn url(&self, node: usize, after: Option<i64>) -> String {
        let mut url = format!(
            "{}{}?token={}",
            self.nodes[node].ws_base,
            herald_shared::config::WS_PATH,
            self.token
        );
        if let Some(a) = after {
            url += &format!("&after={a}");
        }
        url
    }
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
fn ws_config() -> WebSocketConfig {
    // tungstenite zero-fills the read buffer up to this size before every read, so a
    // large one costs a memset per message (7% of the generator's CPU at 4 KiB).
    WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .max_write_buffer_size(1 << 20)
        .max_message_size(Some(16 << 20))
}

/// Connects, reports readiness on `ready`, then reads until `stop` turns true,
/// reconnecting when a node closes it and `dial.reconnect` is set.
pub async fn run(
    dial: Dial,
    counters: Arc<Counters>,
    gate: Arc<Semaphore>,
    ready: mpsc::UnboundedSender<Ready>,
    mut stop: watch::Receiver<bool>,
) {
    let Ok(permit) = gate.acquire_owned().await else {
        // The run closed the gate (its memory floor): this connection is never tried.
        counters.error("not_dialed");
        let _ = ready.send(Err("not_dialed".into()));
        return;
    };
    let started = Instant::now();
    let (ws, newest) = match timeout(dial.timeout, open(&dial, dial.first, None)).await {
        Ok(Ok(opened)) => opened,
        Ok(Err(cause)) => {
            counters.error(cause.clone());
            let _ = ready.send(Err(cause));
            return;
        }
        Err(_) => {
            counters.error("connect_timeout");
            let _ = ready.send(Err("connect_timeout".into()));
            return;
        }
    };
    counters
        .initial_state
        .record(dial.index, started.elapsed().as_micros() as u64);
    drop(permit);
    counters.open.fetch_add(1, Ordering::Relaxed);
    let _ = ready.send(Ok(dial.user));
    let mut seen = Seen {
        last_id: newest,
        ..Seen::default()
    };
    let mut ws = ws;
    let mut node = dial.first;
    loop {
        match read_loop(ws, &dial, &counters, &mut stop, &mut seen).await {
            Ended::Closed(code @ (1012 | 1013)) if dial.reconnect => {
                let closed = Instant::now();
                // The newest id the client knows, from `initial_state` or live
                // frames; a client that knows none asks for everything (after=0).
                let after = seen.last_id.unwrap_or(0);
                match reopen(&dial, &mut node, Some(after), &mut stop).await {
                    Some(next) => {
                        counters.reconnects.fetch_add(1, Ordering::Relaxed);
                        counters
                            .reconnect_time
                            .record(dial.index, closed.elapsed().as_micros() as u64);
                        ws = next;
                    }
                    None => {
                        if !*stop.borrow() {
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
            Ended::Stopped | Ended::Failed => break,
        }
    }
    counters.open.fetch_sub(1, Ordering::Relaxed);
}

/// Dials the nodes after `node` in turn until one answers with `initial_state`
/// (a draining node answers 503), with a short backoff, within the dial timeout.
async fn reopen(
    dial: &Dial,
    node: &mut usize,
    after: Option<i64>,
    stop: &mut watch::Receiver<bool>,
) -> Option<WebSocketStream<TcpStream>> {
    let deadline = Instant::now() + dial.timeout;
    let mut backoff = Duration::from_millis(50);
    while Instant::now() < deadline && !*stop.borrow() {
        *node = (*node + 1) % dial.nodes.len();
        let left = deadline.saturating_duration_since(Instant::now());
        if let Ok(Ok((ws, _))) = timeout(left, open(dial, *node, after)).await {
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
    seqs: HashSet<u64>,
    /// Highest notification id received or in `initial_state`: the `after` of a
    /// reconnect.
    last_id: Option<i64>,
}

/// Dials `dial.nodes[node]` and reads up to `initial_state` (and `subscribed`, if
/// asked to subscribe); also returns the newest notification id `initial_state` held.
async fn open(
    dial: &Dial,
    node: usize,
    after: Option<i64>,
) -> Result<(WebSocketStream<TcpStream>, Option<i64>), String> {
    let addr = dial.nodes[node].addr;
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| io_cause("socket", &e))?;
    if let Some(src) = dial.source {
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
    let (mut ws, _) = client_async_with_config(dial.url(node, after), stream, Some(ws_config()))
        .await
        .map_err(|e| ws_cause("handshake", e))?;
    let mut subscribed = dial.subscribe.is_none();
    let mut initial = false;
    let mut newest = None;
    while !(initial && subscribed) {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => match serde_json::from_str::<ServerFrame>(&t) {
                Ok(ServerFrame::InitialState { notifications, .. }) => {
                    initial = true;
                    newest = notifications.iter().map(|n| n.id).max();
                    if let Some(group) = &dial.subscribe {
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
    mut ws: WebSocketStream<TcpStream>,
    dial: &Dial,
    counters: &Counters,
    stop: &mut watch::Receiver<bool>,
    seen: &mut Seen,
) -> Ended {
    loop {
        let msg = tokio::select! {
            biased;
            m = ws.next() => m,
            _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                let _ = timeout(Duration::from_secs(2), ws.close(None)).await;
                return Ended::Stopped;
            }
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
    if seen.seqs.insert(p.seq) {
        counters.delivered.fetch_add(1, Ordering::Relaxed);
        counters
            .latency
            .record(dial.index, now.saturating_sub(p.sent_us));
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
