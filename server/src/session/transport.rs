//! What a session talks through: a WebSocket, or a Server-Sent Events stream
//! ([`crate::sse`]) for networks that block WebSockets.
//!
//! The session's rules (opening frames, seam, batches, slow consumers, heartbeat,
//! token expiry, drain) are the same on both; only how a frame is written, how the
//! client is heard, and how the end is told differ, and those live behind this trait.

use std::future::Future;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::SinkExt;
use tokio::time::timeout;

use super::{CLOSE_GRACE, End};

/// One frame on its way out.
pub struct Outgoing {
    /// The frame's JSON text, exactly as a WebSocket client receives it.
    pub text: Utf8Bytes,
    /// Its `"type"` (an SSE stream names the event after it).
    pub kind: &'static str,
    /// The id a client resumes after once it has this frame: set on the user's own
    /// notifications and on opening frames that carry any (an SSE event `id`).
    pub resume_id: Option<i64>,
}

/// What the client did.
pub enum Incoming {
    Text(Utf8Bytes),
    Binary,
    /// A ping or a pong: a sign of life and nothing more.
    Alive,
    /// The client closed, with its code (1005 when it gave none).
    Closed(u16),
    /// A client message over the frame size limit.
    TooBig,
    /// The transport failed or the peer vanished.
    Gone,
}

/// The transport failed; the session ends as [`End::Gone`].
pub struct Broken;

/// A session's transport. Writes are fed, then flushed once per batch; the session
/// bounds each by the queue expiry.
pub trait Transport: Send {
    /// Whether the client can talk back (and so must be heard from to stay open).
    const TWO_WAY: bool;

    fn feed(&mut self, frame: Outgoing) -> impl Future<Output = Result<(), Broken>> + Send;

    fn flush(&mut self) -> impl Future<Output = Result<(), Broken>> + Send;

    /// Sends a heartbeat now.
    fn ping(&mut self) -> impl Future<Output = Result<(), Broken>> + Send;

    /// The client's next message; pending forever on a one-way transport until the
    /// client goes away.
    fn recv(&mut self) -> impl Future<Output = Incoming> + Send;

    /// Tells the client how the session ended, as far as the transport can.
    fn finish(&mut self, end: &End) -> impl Future<Output = ()> + Send;
}

impl Transport for WebSocket {
    const TWO_WAY: bool = true;

    async fn feed(&mut self, frame: Outgoing) -> Result<(), Broken> {
        SinkExt::feed(self, Message::Text(frame.text))
            .await
            .map_err(|_| Broken)
    }

    async fn flush(&mut self) -> Result<(), Broken> {
        SinkExt::flush(self).await.map_err(|_| Broken)
    }

    async fn ping(&mut self) -> Result<(), Broken> {
        self.send(Message::Ping(Default::default()))
            .await
            .map_err(|_| Broken)
    }

    async fn recv(&mut self) -> Incoming {
        match WebSocket::recv(self).await {
            None => Incoming::Gone,
            Some(Err(e)) => read_error(e),
            Some(Ok(Message::Text(text))) => Incoming::Text(text),
            Some(Ok(Message::Binary(_))) => Incoming::Binary,
            Some(Ok(Message::Close(f))) => Incoming::Closed(f.map_or(1005, |f| f.code)),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => Incoming::Alive,
        }
    }

    async fn finish(&mut self, end: &End) {
        match end {
            End::Close(code, reason) => {
                let frame = CloseFrame {
                    code: *code,
                    reason: Utf8Bytes::from_static(reason),
                };
                if let Ok(Ok(())) =
                    timeout(CLOSE_GRACE, self.send(Message::Close(Some(frame)))).await
                {
                    // Let the client answer, so it (not the node) holds TIME_WAIT.
                    let _ = timeout(CLOSE_GRACE, async {
                        while let Some(Ok(m)) = WebSocket::recv(self).await {
                            if matches!(m, Message::Close(_)) {
                                break;
                            }
                        }
                    })
                    .await;
                }
            }
            // The protocol layer queued the echo of the client's close frame when it
            // read it; write it out before the socket goes.
            End::Peer(_) => {
                let _ = timeout(CLOSE_GRACE, SinkExt::flush(self)).await;
            }
            End::Gone => {}
        }
    }
}

/// Maps a read error: an oversized frame is the client's fault and gets 1009;
/// anything else means the transport is gone.
fn read_error(e: axum::Error) -> Incoming {
    match e.into_inner().downcast::<tungstenite::Error>() {
        Ok(err) if matches!(*err, tungstenite::Error::Capacity(_)) => Incoming::TooBig,
        _ => Incoming::Gone,
    }
}
