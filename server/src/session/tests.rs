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
        "s",
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
