//! One task per connection: sends the opening frames, then multiplexes client frames,
//! queued deliveries, heartbeats and token expiry until the connection ends.
//!
//! The connection is a WebSocket or a Server-Sent Events stream ([`Transport`]); the
//! rules are the same on both. A single task owns the socket (no split, no second
//! task), which keeps an idle connection down to its socket buffers, its outbox and
//! one timer. Deliveries are
//! written in batches: every frame waiting in the outbox is fed, then flushed once.
//! Every write is bounded by the queue expiry; a client that cannot take frames that
//! fast is a slow consumer and is closed with 1013.

pub(crate) mod commands;
mod handshake;
mod ratelimit;
#[cfg(test)]
mod tests;
mod transport;

use std::sync::Arc;
use std::time::Duration;

use herald_shared::close;
use herald_shared::config::MISSED_LIMIT;
use herald_shared::frames::encode_notification;
use herald_shared::{ClientFrame, ErrorCode, ServerFrame};
use tokio::time::{Instant, sleep_until, timeout};

use crate::auth::{Identity, now_unix};
use crate::node::Node;
use crate::outbox::{CloseReason, unix_micros};
use crate::registration::Registration;
use handshake::Seam;
use ratelimit::{RateLimiter, Verdict};
pub use transport::{Broken, Incoming, Outgoing, Transport};

/// Frames taken from the outbox per write batch.
const BATCH: usize = 64;
/// How long the node waits for the client's answer to its close frame.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// A client silent for this many heartbeats is gone.
const SILENT_HEARTBEATS: u32 = 3;

/// How a session ended.
#[derive(Debug)]
pub enum End {
    /// The node closes with this code and reason.
    Close(u16, &'static str),
    /// The client closed (with its code, 1005 when it gave none).
    Peer(u16),
    /// The transport failed or the peer vanished (recorded as 1006).
    Gone,
}

pub struct Session {
    node: Arc<Node>,
    ident: Identity,
    reg: Registration,
    after: Option<i64>,
    seam: Seam,
}

impl Session {
    pub fn new(node: Arc<Node>, ident: Identity, reg: Registration, after: Option<i64>) -> Self {
        Self {
            node,
            ident,
            reg,
            after,
            seam: Seam::default(),
        }
    }

    /// Serves the connection to its end, records how it ended, then completes the
    /// closing handshake.
    pub async fn run<T: Transport>(mut self, mut ws: T) {
        let end = self.serve(&mut ws).await;
        self.node.metrics.closed(match &end {
            End::Close(code, _) | End::Peer(code) => *code,
            End::Gone => 1006,
        });
        Box::pin(ws.finish(&end)).await;
    }

    async fn serve<T: Transport>(&mut self, ws: &mut T) -> End {
        let node = self.node.clone();
        let expiry = node.config.queue_expiry();
        // Every step that is not the idle wait below runs in a boxed future: a task's
        // future is as large as its largest state, and it is held for the whole life
        // of the connection; the opening (store reads), a command (store writes) or
        // a write batch would otherwise make every idle connection carry their
        // state.
        if let Some(end) = Box::pin(self.open(ws, expiry)).await {
            return end;
        }
        let heartbeat = node.config.heartbeat();
        let ttl = Duration::from_secs(self.ident.exp.saturating_sub(now_unix()).min(365 * 86_400));
        let expires_at = Instant::now() + ttl;
        let mut next_ping = Instant::now() + heartbeat;
        let mut last_heard = Instant::now();
        let mut limiter = RateLimiter::new(
            node.config.client_rate,
            node.config.client_burst,
            std::time::Instant::now(),
        );
        let timer = sleep_until(next_ping.min(expires_at));
        tokio::pin!(timer);

        loop {
            tokio::select! {
                _ = self.reg.outbox.ready() => {
                    if let Some(end) = Box::pin(self.write_deliveries(ws, expiry)).await {
                        return end;
                    }
                }
                msg = ws.recv() => {
                    last_heard = Instant::now();
                    let end = match msg {
                        Incoming::Gone => Some(End::Gone),
                        Incoming::TooBig => Some(End::Close(close::TOO_BIG, "frame too large")),
                        Incoming::Text(text) => {
                            Box::pin(self.client_frame(ws, &mut limiter, text.as_str(), expiry)).await
                        }
                        Incoming::Binary => {
                            Some(End::Close(close::UNSUPPORTED_DATA, "binary frames are not supported; send JSON text"))
                        }
                        Incoming::Closed(code) => Some(End::Peer(code)),
                        Incoming::Alive => None,
                    };
                    if let Some(end) = end {
                        return end;
                    }
                }
                _ = &mut timer => {
                    let now = Instant::now();
                    if now >= expires_at {
                        return End::Close(close::POLICY, "token expired; reconnect with a new token and after");
                    }
                    if now >= next_ping {
                        // A one-way client (SSE) cannot answer; a write to a peer that
                        // went away fails or stalls, which the ping's bound catches.
                        if T::TWO_WAY && now.duration_since(last_heard) > heartbeat * SILENT_HEARTBEATS {
                            return End::Gone;
                        }
                        if timeout(expiry, ws.ping()).await.map_or(true, |r| r.is_err()) {
                            return End::Gone;
                        }
                        next_ping = now + heartbeat;
                    }
                    timer.as_mut().reset(next_ping.min(expires_at));
                }
            }
        }
    }

    /// Sends `welcome`, then the opening frames (`initial_state`, `missed`), in one
    /// write: one send on the socket instead of one per frame took a node's CPU per
    /// connect from 332 to 299 µs (bench/RESULTS.md).
    async fn open<T: Transport>(&mut self, ws: &mut T, expiry: Duration) -> Option<End> {
        let node = self.node.clone();
        let welcome = ServerFrame::Welcome {
            user: self.ident.user.to_string(),
            node: node.id.clone(),
            connection: format!("{}-{}", node.id, self.reg.outbox.id),
            heartbeat_s: node.config.heartbeat_s,
        };
        match handshake::opening(&node, &self.ident.user, self.after).await {
            Ok(opening) => {
                if opening.replayed > 0 || self.after.is_some() {
                    node.metrics.resumes.inc();
                    node.metrics.resume_replayed.inc_by(opening.replayed as u64);
                }
                let frames: Vec<&ServerFrame> =
                    std::iter::once(&welcome).chain(&opening.frames).collect();
                if let Err(end) = send_all(ws, &frames, expiry).await {
                    return Some(end);
                }
                self.seam = opening.seam;
                self.reg.opened();
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "opening snapshot failed");
                let error = commands::error(ErrorCode::Internal, "store unavailable");
                if let Err(end) = send_all(ws, &[&welcome, &error], expiry).await {
                    return Some(end);
                }
                Some(End::Close(
                    close::INTERNAL,
                    "store unavailable; reconnect with after",
                ))
            }
        }
    }

    /// Writes every queued delivery (batched, one flush per batch) and reports a
    /// close request from the outbox once the queue is empty.
    async fn write_deliveries<T: Transport>(
        &mut self,
        ws: &mut T,
        expiry: Duration,
    ) -> Option<End> {
        loop {
            let batch = self.reg.outbox.take(BATCH);
            let full = batch.frames.len() == BATCH;
            // Catch up first: frames queued behind the gap come after what it lost,
            // and their copies of caught-up ids are dropped by the seam.
            if batch.resync
                && let Some(end) = self.catch_up(ws, expiry).await
            {
                return Some(end);
            }
            let mut written = Vec::with_capacity(batch.frames.len());
            for d in batch.frames {
                // Only the user's own notifications can repeat its opening frames;
                // another user's (a subscribed `user_<x>` group) must not close the seam.
                if let Some(tag) = &d.notification
                    && tag.user == self.ident.user
                    && !self.seam.admit(tag.id)
                {
                    continue;
                }
                written.push(d);
            }
            if !written.is_empty() {
                let user = &self.ident.user;
                let write = async {
                    for d in &written {
                        ws.feed(Outgoing {
                            text: d.frame.clone(),
                            kind: if d.notification.is_some() {
                                "notification"
                            } else {
                                "event"
                            },
                            resume_id: d
                                .notification
                                .as_ref()
                                .filter(|tag| tag.user == *user)
                                .map(|tag| tag.id),
                        })
                        .await?;
                    }
                    ws.flush().await
                };
                match timeout(expiry, write).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Some(End::Gone),
                    Err(_) => {
                        return Some(End::Close(
                            close::TRY_AGAIN_LATER,
                            "slow consumer; reconnect with after",
                        ));
                    }
                }
                let now = unix_micros();
                let m = &self.node.metrics;
                m.delivered.inc_by(written.len() as u64);
                for d in &written {
                    m.delivery_latency
                        .observe(now.saturating_sub(d.accepted_us) as f64 / 1e6);
                }
            }
            match batch.close {
                Some(CloseReason::SlowConsumer) => {
                    return Some(End::Close(
                        close::TRY_AGAIN_LATER,
                        "slow consumer; reconnect with after",
                    ));
                }
                Some(CloseReason::Draining | CloseReason::Shutdown) if !full => {
                    return Some(End::Close(
                        close::SERVICE_RESTART,
                        "node draining; reconnect to another node with jitter and after",
                    ));
                }
                _ if full => continue,
                _ => return None,
            }
        }
    }

    /// Sends what the store has for this user beyond the newest id the client has
    /// seen, after the broker may have lost messages; live copies of those are then
    /// filtered by the seam like at connect time.
    async fn catch_up<T: Transport>(&mut self, ws: &mut T, expiry: Duration) -> Option<End> {
        const SLOW: End = End::Close(
            close::TRY_AGAIN_LATER,
            "slow consumer; reconnect with after",
        );
        // Page by page, so a long outage is replayed whole, never cut at one page.
        loop {
            let since = self.seam.newest();
            let page = match self
                .node
                .store
                .after(&self.ident.user, since, MISSED_LIMIT)
                .await
            {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "catch-up read failed");
                    return Some(End::Close(
                        close::INTERNAL,
                        "store unavailable; reconnect with after",
                    ));
                }
            };
            if page.is_empty() {
                return None;
            }
            self.node.metrics.resume_replayed.inc_by(page.len() as u64);
            self.seam.extend(page.iter().map(|n| n.id));
            for n in &page {
                let frame = Outgoing {
                    text: encode_notification(n).into(),
                    kind: "notification",
                    resume_id: Some(n.id),
                };
                match timeout(expiry, ws.feed(frame)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Some(End::Gone),
                    Err(_) => return Some(SLOW),
                }
            }
            match timeout(expiry, ws.flush()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Some(End::Gone),
                Err(_) => return Some(SLOW),
            }
            if (page.len() as i64) < MISSED_LIMIT {
                return None;
            }
        }
    }

    /// Handles one client text frame: rate limit, parse, command, reply.
    async fn client_frame<T: Transport>(
        &mut self,
        ws: &mut T,
        limiter: &mut RateLimiter,
        text: &str,
        expiry: Duration,
    ) -> Option<End> {
        let started = std::time::Instant::now();
        let reply = match limiter.check(started) {
            Verdict::Abusive => {
                return Some(End::Close(close::POLICY, "rate limit exceeded repeatedly"));
            }
            Verdict::Limited => {
                self.node.metrics.rate_limited.inc();
                commands::error(ErrorCode::RateLimited, "too many frames; slow down")
            }
            Verdict::Allowed => match ClientFrame::parse(text) {
                Ok(frame) => commands::handle(&self.node, &self.ident, &mut self.reg, frame).await,
                Err(why) => commands::error(ErrorCode::BadRequest, why),
            },
        };
        let sent = send(ws, &reply, expiry).await;
        self.node
            .metrics
            .message_duration
            .observe(started.elapsed().as_secs_f64());
        sent.err()
    }
}

/// Sends one frame now, bounded by the queue expiry.
async fn send<T: Transport>(ws: &mut T, frame: &ServerFrame, expiry: Duration) -> Result<(), End> {
    send_all(ws, &[frame], expiry).await
}

/// Sends `frames` in one write (fed, then flushed once), bounded by the queue expiry.
async fn send_all<T: Transport>(
    ws: &mut T,
    frames: &[&ServerFrame],
    expiry: Duration,
) -> Result<(), End> {
    let write = async {
        for f in frames {
            ws.feed(Outgoing {
                text: f.to_json().into(),
                kind: f.kind(),
                resume_id: f.newest_id(),
            })
            .await?;
        }
        ws.flush().await
    };
    match timeout(expiry, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(End::Gone),
        Err(_) => Err(End::Close(
            close::TRY_AGAIN_LATER,
            "slow consumer; reconnect with after",
        )),
    }
}
