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
mod transport;

use std::future::Future;
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
    /// The client's frame rate. Here, not in the idle loop's future: that future is
    /// held by every idle connection's task, whose allocation grows in steps of 128
    /// bytes.
    limiter: RateLimiter,
}

impl Session {
    /// A session on the heap. Whatever carries it until its task starts (axum's
    /// upgrade task keeps its callback's captures for the connection's whole life)
    /// then holds one pointer instead of the session's fields.
    pub fn new(
        node: Arc<Node>,
        ident: Identity,
        reg: Registration,
        after: Option<i64>,
    ) -> Box<Self> {
        let limiter = RateLimiter::new(
            node.config.client_rate,
            node.config.client_burst,
            std::time::Instant::now(),
        );
        Box::new(Self {
            node,
            ident,
            reg,
            after,
            seam: Seam::default(),
            limiter,
        })
    }

    /// Serves the connection to its end, records how it ended, then completes the
    /// closing handshake.
    ///
    /// An `async` block, not an `async fn`: an `async fn` moves its arguments into
    /// locals of its future, which then holds both the arguments and the locals (the
    /// transport twice) for as long as the connection lives. The block uses its
    /// captures in place.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn would hold its arguments twice (see above)"
    )]
    pub fn run<T: Transport>(mut self: Box<Self>, mut ws: T) -> impl Future<Output = ()> {
        async move {
            let end = self.serve(&mut ws).await;
            self.node.metrics.closed(match &end {
                End::Close(code, _) | End::Peer(code) => *code,
                End::Gone => 1006,
            });
            Box::pin(ws.finish(&end)).await;
        }
    }

    /// An `async` block for the same reason as [`Session::run`]: the idle loop below
    /// is what every idle connection's task holds.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn would hold its arguments twice (see `run`)"
    )]
    fn serve<'a, T: Transport>(&'a mut self, ws: &'a mut T) -> impl Future<Output = End> + 'a {
        async move {
            let expiry = self.node.config.queue_expiry();
            // Every step that is not the idle wait below runs in a boxed future: a task's
            // future is as large as its largest state, and it is held for the whole life
            // of the connection; the opening (store reads), a command (store writes), a
            // write batch or a ping (with its timeout's timer) would otherwise make every
            // idle connection carry their state.
            if let Some(end) = Box::pin(self.open(ws, expiry)).await {
                return end;
            }
            let heartbeat = self.node.config.heartbeat();
            let ttl =
                Duration::from_secs(self.ident.exp.saturating_sub(now_unix()).min(365 * 86_400));
            let expires_at = Instant::now() + ttl;
            let mut next_ping = Instant::now() + heartbeat;
            let mut last_heard = Instant::now();
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
                                Box::pin(self.client_frame(ws, text.as_str(), expiry)).await
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
                            if Box::pin(timeout(expiry, ws.ping())).await.map_or(true, |r| r.is_err()) {
                                return End::Gone;
                            }
                            next_ping = now + heartbeat;
                        }
                        timer.as_mut().reset(next_ping.min(expires_at));
                    }
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
                // Encoded, and the frames' notifications let go, before the write:
                // while a client that does not read holds the write up, the node
                // keeps one copy of the opening (in the socket's buffer), not two.
                let out: Vec<Outgoing> = std::iter::once(&welcome)
                    .chain(&opening.frames)
                    .map(outgoing)
                    .collect();
                drop(opening.frames);
                if let Err(end) = write_all(ws, out, expiry).await {
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
            let mut page = match self
                .node
                .catch_ups
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
            // Held while it is written: no more of it than an opening frame holds.
            let fetched = page.len();
            page.truncate(handshake::within_budget(
                &page,
                fetched,
                herald_shared::config::OPENING_MAX_BYTES,
            ));
            let more = page.len() < fetched || (fetched as i64) == MISSED_LIMIT;
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
            if !more {
                return None;
            }
        }
    }

    /// Handles one client text frame: rate limit, parse, command, reply.
    async fn client_frame<T: Transport>(
        &mut self,
        ws: &mut T,
        text: &str,
        expiry: Duration,
    ) -> Option<End> {
        let started = std::time::Instant::now();
        let reply = match self.limiter.check(started) {
            Verdict::Abusive => {
                return Some(End::Close(close::POLICY, "rate limit exceeded repeatedly"));
            }
            Verdict::Limited => {
                self.node.metrics.rate_limited.inc();
                commands::error(ErrorCode::RateLimited, "too many frames; slow down")
            }
            Verdict::Dropped => {
                // Told once this window already: a flood gets no flood of answers.
                self.node.metrics.rate_limited.inc();
                return None;
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
    write_all(ws, frames.iter().map(|f| outgoing(f)).collect(), expiry).await
}

/// A frame encoded for the transport.
fn outgoing(f: &ServerFrame) -> Outgoing {
    Outgoing {
        text: f.to_json().into(),
        kind: f.kind(),
        resume_id: f.newest_id(),
    }
}

/// Writes encoded frames in one write (fed, then flushed once), bounded by the
/// queue expiry.
async fn write_all<T: Transport>(
    ws: &mut T,
    frames: Vec<Outgoing>,
    expiry: Duration,
) -> Result<(), End> {
    let write = async {
        for f in frames {
            ws.feed(f).await?;
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

#[cfg(test)]
mod tests {
    //! The session's timers without a socket: a [`Transport`] that records what the
    //! session writes, on a real node (SQLite in a temporary directory), with tokio's
    //! clock paused once the opening frames are out, so heartbeats and token expiry run in
    //! virtual time.

    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use herald_shared::UserId;
    use tokio::sync::{Notify, mpsc};

    use super::{End, Incoming, Outgoing, Session, Transport};
    use crate::auth::{Identity, now_unix};
    use crate::node::Node;
    use crate::session::Broken;

    /// What a [`Fake`] transport saw, shared with the test.
    #[derive(Default)]
    struct Seen {
        frames: Vec<&'static str>,
        flushes: usize,
        pings: Vec<tokio::time::Instant>,
        end: Option<String>,
    }

    #[derive(Clone, Default)]
    struct Probe {
        seen: Arc<Mutex<Seen>>,
        changed: Arc<Notify>,
    }

    impl Probe {
        fn with<T>(&self, f: impl FnOnce(&mut Seen) -> T) -> T {
            let out = f(&mut self.seen.lock().unwrap());
            self.changed.notify_waiters();
            out
        }

        /// Waits (in the test's time, real or paused) until `done` holds.
        async fn until(&self, done: impl Fn(&Seen) -> bool) {
            loop {
                let notified = self.changed.notified();
                if done(&self.seen.lock().unwrap()) {
                    return;
                }
                notified.await;
            }
        }
    }

    /// A transport that records frames, pings and the end; the client "speaks" through
    /// `input`. `TWO_WAY` picks a WebSocket-like or an SSE-like client.
    struct Fake<const TWO_WAY: bool> {
        probe: Probe,
        input: mpsc::UnboundedReceiver<Incoming>,
    }

    impl<const TWO_WAY: bool> Transport for Fake<TWO_WAY> {
        const TWO_WAY: bool = TWO_WAY;

        async fn feed(&mut self, frame: Outgoing) -> Result<(), Broken> {
            self.probe.with(|s| s.frames.push(frame.kind));
            Ok(())
        }

        async fn flush(&mut self) -> Result<(), Broken> {
            self.probe.with(|s| s.flushes += 1);
            Ok(())
        }

        async fn ping(&mut self) -> Result<(), Broken> {
            let now = tokio::time::Instant::now();
            self.probe.with(|s| s.pings.push(now));
            Ok(())
        }

        async fn recv(&mut self) -> Incoming {
            match self.input.recv().await {
                Some(m) => m,
                // The test dropped its sender: the client says nothing, ever.
                None => std::future::pending().await,
            }
        }

        async fn finish(&mut self, end: &End) {
            let end = format!("{end:?}");
            self.probe.with(|s| s.end = Some(end));
        }
    }

    /// A single node on SQLite with a 1 s heartbeat.
    async fn node(dir: &tempfile::TempDir) -> Arc<Node> {
        let cfg = crate::Config::from_args([
            "--data-dir",
            &dir.path().display().to_string(),
            "--jwt-secret",
            "session-test-jwt-secret-of-32-bytes-or-more",
            "--api-key",
            "k",
            "--admin-token",
            "a",
            "--heartbeat-s",
            "1",
        ])
        .unwrap();
        crate::server::build(cfg).await.expect("node builds")
    }

    /// Starts a session of user 42 whose token expires in `ttl_s`; returns once its
    /// opening frames are out, with tokio's clock paused from then on.
    async fn open<const TWO_WAY: bool>(
        node: &Arc<Node>,
        ttl_s: u64,
    ) -> (Probe, mpsc::UnboundedSender<Incoming>) {
        let ident = Identity {
            user: UserId::parse("42").unwrap(),
            groups: Vec::new(),
            exp: now_unix() + ttl_s,
        };
        let reg = crate::upgrade::admit(node, &ident).await.expect("admitted");
        let probe = Probe::default();
        let (tx, input) = mpsc::unbounded_channel();
        let wire = Fake::<TWO_WAY> {
            probe: probe.clone(),
            input,
        };
        tokio::spawn(Session::new(node.clone(), ident, reg, None).run(wire));
        probe.until(|s| s.frames.len() >= 2).await;
        assert_eq!(
            probe.seen.lock().unwrap().frames,
            ["welcome", "initial_state"]
        );
        tokio::time::pause();
        (probe, tx)
    }

    /// A catch-up after a broker loss writes what the store holds beyond the client's
    /// newest id in pages of at most 1 MiB of notifications (one flush each), so a
    /// session holds no more of a long outage at a time than an opening frame; every
    /// notification is written once.
    #[tokio::test]
    async fn a_catch_up_is_written_in_pages_of_at_most_a_mib() {
        let dir = tempfile::tempdir().unwrap();
        let node = node(&dir).await;
        let ident = Identity {
            user: UserId::parse("42").unwrap(),
            groups: Vec::new(),
            exp: now_unix() + 3600,
        };
        let reg = crate::upgrade::admit(&node, &ident)
            .await
            .expect("admitted");
        let probe = Probe::default();
        let (_tx, input) = mpsc::unbounded_channel();
        let wire = Fake::<true> {
            probe: probe.clone(),
            input,
        };
        tokio::spawn(Session::new(node.clone(), ident, reg, None).run(wire));
        probe.until(|s| s.frames.len() >= 2).await;
        let opened = probe.seen.lock().unwrap().flushes;
        // 2.25 MB stored behind the broker's back, then the broker asks for a resync.
        let message = format!("\"{}\"", "x".repeat(15_000));
        let items: Vec<_> = (0..150)
            .map(|_| herald_shared::api::NewNotification {
                user: UserId::parse("42").unwrap(),
                message: serde_json::value::RawValue::from_string(message.clone()).unwrap(),
            })
            .collect();
        node.store.insert(&items).await.unwrap();
        for outbox in node.hub.all() {
            outbox.resync();
        }
        probe
            .until(|s| s.frames.iter().filter(|k| **k == "notification").count() >= 150)
            .await;
        let seen = probe.seen.lock().unwrap();
        assert_eq!(seen.frames.len(), 2 + 150, "each notification once");
        assert!(
            seen.flushes - opened >= 3,
            "2.25 MB in {} pages",
            seen.flushes - opened
        );
    }

    /// A client that never answers is pinged every heartbeat and dropped (no close frame)
    /// at the first tick where it has been silent for three.
    #[tokio::test]
    async fn a_silent_client_is_dropped_after_three_heartbeats() {
        let dir = tempfile::tempdir().unwrap();
        let node = node(&dir).await;
        let (probe, tx) = open::<true>(&node, 3600).await;
        drop(tx);
        let start = tokio::time::Instant::now();
        probe.until(|s| s.end.is_some()).await;
        let seen = probe.seen.lock().unwrap();
        assert_eq!(seen.end.as_deref(), Some("Gone"));
        // Pinged at 1 and 2 s; at the 3 s tick it has been silent for three heartbeats
        // (and the timer's rounding up makes it "more than"), so it goes.
        assert_eq!(seen.pings.len(), 2, "pinged at 1 and 2 s");
        let gone_after = start.elapsed();
        assert!(
            gone_after >= Duration::from_secs(2) && gone_after < Duration::from_secs(4),
            "dropped after {gone_after:?}"
        );
    }

    /// A client that answers every ping stays open, however long.
    #[tokio::test]
    async fn a_client_that_answers_stays_open() {
        let dir = tempfile::tempdir().unwrap();
        let node = node(&dir).await;
        let (probe, tx) = open::<true>(&node, 3600).await;
        for n in 1..=20 {
            probe.until(|s| s.pings.len() >= n).await;
            tx.send(Incoming::Alive).expect("session still reading");
        }
        assert_eq!(
            probe.seen.lock().unwrap().end,
            None,
            "open after 20 heartbeats"
        );
    }

    /// An SSE client cannot answer: it is pinged, never dropped for silence.
    #[tokio::test]
    async fn a_one_way_client_is_never_dropped_for_silence() {
        let dir = tempfile::tempdir().unwrap();
        let node = node(&dir).await;
        let (probe, tx) = open::<false>(&node, 3600).await;
        drop(tx);
        probe.until(|s| s.pings.len() >= 20).await;
        assert_eq!(
            probe.seen.lock().unwrap().end,
            None,
            "open after 20 heartbeats"
        );
    }

    /// When the token expires the session closes with 1008, heartbeats or not.
    #[tokio::test]
    async fn token_expiry_closes_with_1008() {
        let dir = tempfile::tempdir().unwrap();
        let node = node(&dir).await;
        let (probe, tx) = open::<true>(&node, 30).await;
        let start = tokio::time::Instant::now();
        let answer = tokio::spawn({
            let probe = probe.clone();
            async move {
                for n in 1.. {
                    probe.until(|s| s.pings.len() >= n || s.end.is_some()).await;
                    if tx.send(Incoming::Alive).is_err() {
                        break;
                    }
                }
            }
        });
        probe.until(|s| s.end.is_some()).await;
        answer.abort();
        let end = probe.seen.lock().unwrap().end.clone().unwrap();
        assert!(end.starts_with("Close(1008, \"token expired"), "{end}");
        let after = start.elapsed();
        assert!(
            after >= Duration::from_secs(28) && after <= Duration::from_secs(31),
            "closed {after:?} after opening, for a 30 s token"
        );
    }
}
