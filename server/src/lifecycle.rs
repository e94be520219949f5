//! Serving, draining, drained: the node's state, and the paced drain between them.
//!
//! A drain first flips readiness (load balancers stop sending new clients) and
//! refuses new upgrades, then closes open connections with 1012 spread evenly over
//! the window, so their reconnects land on the other nodes as a trickle, not a storm.
//! Closing goes through each connection's outbox, so frames already queued are still
//! written before the close frame.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::outbox::CloseReason;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    Serving,
    Draining,
    Drained,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Serving => "serving",
            NodeState::Draining => "draining",
            NodeState::Drained => "drained",
        }
    }
}

pub struct Lifecycle {
    state: Arc<AtomicU8>,
    /// Connections the running drain still has to close (for status).
    remaining: Arc<AtomicUsize>,
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
}

fn decode(v: u8) -> NodeState {
    match v {
        0 => NodeState::Serving,
        1 => NodeState::Draining,
        _ => NodeState::Drained,
    }
}

impl Lifecycle {
    pub fn new(hub: Arc<Hub>, metrics: Arc<Metrics>) -> Self {
        Self {
            state: Arc::new(AtomicU8::new(0)),
            remaining: Arc::new(AtomicUsize::new(0)),
            task: std::sync::Mutex::new(None),
            hub,
            metrics,
        }
    }

    pub fn state(&self) -> NodeState {
        decode(self.state.load(Ordering::Acquire))
    }

    pub fn is_serving(&self) -> bool {
        self.state() == NodeState::Serving
    }

    /// Connections the current drain has not closed yet.
    pub fn drain_remaining(&self) -> usize {
        self.remaining.load(Ordering::Relaxed)
    }

    /// Starts (or restarts) a paced drain over `window`. Returns at once.
    pub fn drain(&self, window: Duration) {
        let mut task = self.task.lock().expect("lifecycle lock");
        if let Some(t) = task.take() {
            t.abort();
        }
        self.state.store(1, Ordering::Release);
        self.metrics.draining.set(1);
        // Taken now: status answers with the real count the moment drain returns.
        let conns = self.hub.all();
        let n = conns.len();
        self.remaining.store(n, Ordering::Relaxed);
        let (state, remaining, hub) =
            (self.state.clone(), self.remaining.clone(), self.hub.clone());
        *task = Some(tokio::spawn(async move {
            tracing::info!(
                connections = n,
                window_s = window.as_secs_f64(),
                "drain started"
            );
            let start = Instant::now();
            for (i, outbox) in conns.into_iter().enumerate() {
                // Connection i closes at i/n of the window: an even spread.
                tokio::time::sleep_until(start + window.mul_f64(i as f64 / n as f64)).await;
                outbox.close(CloseReason::Draining);
                remaining.fetch_sub(1, Ordering::Relaxed);
            }
            while hub.connections() > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            state.store(2, Ordering::Release);
            tracing::info!(took_s = start.elapsed().as_secs_f64(), "drained");
        }));
    }

    /// Serves again; connections already closed stay closed.
    pub fn undrain(&self) {
        if let Some(t) = self.task.lock().expect("lifecycle lock").take() {
            t.abort();
        }
        self.remaining.store(0, Ordering::Relaxed);
        self.state.store(0, Ordering::Release);
        self.metrics.draining.set(0);
        tracing::info!("serving again");
    }

    /// Waits until the node is drained, or `limit` passes.
    pub async fn wait_drained(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.state() != NodeState::Drained {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }
}
