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

/// Where and as whom one connection dials.
#[derive(Debug, Clone)]
pub struct Dial {
    /// Index of the connection within this process.
    pub index: usize,
    /// Index of its user in the plan.
    pub user: usize,
    pub addr: SocketAddr,
    pub source: Option<IpAddr>,
    /// Full `ws://.../ws/notifications/?token=...` URL.
    pub url: String,
    /// Group to subscribe to after `initial_state`.
    pub subscribe: Option<String>,
    pub timeout: Duration,
}

/// How a connection attempt ended: ready (with its user), or failed with a cause.
pub type Ready = Result<usize, String>;

/// Small buffers: the bench holds tens of thousands of these.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(1 << 20)
        .max_message_size(Some(16 << 20))
}

/// Connects, reports readiness on `ready`, then reads until `stop` turns true.
pub async fn run(
    dial: Dial,
    counters: Arc<Counters>,
    gate: Arc<Semaphore>,
    ready: mpsc::UnboundedSender<Ready>,
    mut stop: watch::Receiver<bool>,
) {
    let permit = gate.acquire_owned().await;
    let started = Instant::now();
    let ws = match timeout(dial.timeout, open(&dial)).await {
        Ok(Ok(ws)) => ws,
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
    read_loop(ws, &dial, &counters, &mut stop).await;
    counters.open.fetch_sub(1, Ordering::Relaxed);
}

/// Dials and reads up to `initial_state` (and `subscribed`, if asked to subscribe).
async fn open(dial: &Dial) -> Result<WebSocketStream<TcpStream>, String> {
    let socket = if dial.addr.is_ipv4() {
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
        .connect(dial.addr)
        .await
        .map_err(|e| io_cause("connect", &e))?;
    let _ = stream.set_nodelay(true);
    let (mut ws, _) = client_async_with_config(dial.url.as_str(), stream, Some(ws_config()))
        .await
        .map_err(|e| ws_cause("handshake", e))?;
    let mut subscribed = dial.subscribe.is_none();
    let mut initial = false;
    while !(initial && subscribed) {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => match serde_json::from_str::<ServerFrame>(&t) {
                Ok(ServerFrame::InitialState { .. }) => {
                    initial = true;
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
    Ok(ws)
}

/// Lets `connect` pick the port per (source, destination) pair, so each source
/// address gets ~28k ports per node rather than ~28k in all.
fn bind_no_port(socket: &TcpSocket) {
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
) {
    let mut seen: HashSet<u64> = HashSet::new();
    loop {
        let msg = tokio::select! {
            biased;
            m = ws.next() => m,
            _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                let _ = timeout(Duration::from_secs(2), ws.close(None)).await;
                return;
            }
        };
        match msg {
            Some(Ok(Message::Text(t))) => {
                let now = now_us();
                let probe = match serde_json::from_str::<ServerFrame>(&t) {
                    Ok(ServerFrame::Notification { notification }) => {
                        serde_json::from_str::<Probe>(notification.message.get()).ok()
                    }
                    Ok(ServerFrame::Event { payload, .. }) => {
                        serde_json::from_str::<Probe>(payload.get()).ok()
                    }
                    Ok(ServerFrame::Error { code, .. }) => {
                        counters.error(format!("server_error_{}", snake(&code)));
                        continue;
                    }
                    Ok(_) => continue,
                    Err(_) => {
                        counters.error("bad_frame");
                        continue;
                    }
                };
                let Some(p) = probe else {
                    counters.error("foreign_message");
                    continue;
                };
                if seen.insert(p.seq) {
                    counters.delivered.fetch_add(1, Ordering::Relaxed);
                    counters
                        .latency
                        .record(dial.index, now.saturating_sub(p.sent_us));
                } else {
                    counters.duplicated.fetch_add(1, Ordering::Relaxed);
                }
            }
            Some(Ok(Message::Close(c))) => {
                counters.error(format!(
                    "closed_{}",
                    c.map(|c| u16::from(c.code)).unwrap_or(1005)
                ));
                return;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                counters.error(ws_cause("read", e));
                return;
            }
            None => {
                counters.error("eof");
                return;
            }
        }
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
