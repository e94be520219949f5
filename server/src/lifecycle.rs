//! Serving, draining, drained: the node's state, and the paced drain between them.
//!
//! A drain first flips readiness (load balancers stop sending new clients) and
//! refuses new upgrades, then closes open connections with 1012 spread evenly over
//! the window, so their reconnects land on the other nodes as a trickle, not a storm.
//! Closing goes through each connection's outbox, so frames already queued are still
//! written before the close frame.
//!
//! The state is a `watch` channel: whoever must see it change (shutdown waiting for
//! `drained`) subscribes instead of polling. The paced drain is one of the node's
//! background tasks ([`Tasks`]), so it ends with the node.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_shared::health::NodeState;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::hub::Hub;
use crate::lock::lock;
use crate::metrics::Metrics;
use crate::outbox::CloseReason;
use crate::tasks::Tasks;

pub struct Lifecycle {
    shared: Arc<Shared>,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    tasks: Tasks,
}

/// What the handlers and the drain task both change.
struct Shared {
    state: watch::Sender<NodeState>,
    /// Every change of state, and every step of a drain, happens under this lock:
    /// a drain that an undrain (or a newer drain) stopped can then neither close
    /// another connection nor mark the node drained after the fact.
    drain: Mutex<Drain>,
}

#[derive(Default)]
struct Drain {
    /// Cancels the running drain, if one runs.
    stop: Option<CancellationToken>,
    /// Connections the running drain still has to close (for status).
    remaining: usize,
}

impl Lifecycle {
    /// A serving node; drains run as `tasks`.
    pub fn new(hub: Arc<Hub>, metrics: Arc<Metrics>, tasks: Tasks) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: watch::Sender::new(NodeState::Serving),
                drain: Mutex::new(Drain::default()),
            }),
            hub,
            metrics,
            tasks,
        }
    }

    pub fn state(&self) -> NodeState {
        *self.shared.state.borrow()
    }

    /// Follows the state as it changes.
    pub fn subscribe(&self) -> watch::Receiver<NodeState> {
        self.shared.state.subscribe()
    }

    pub fn is_serving(&self) -> bool {
        self.state() == NodeState::Serving
    }

    /// Connections the current drain has not closed yet.
    pub fn drain_remaining(&self) -> usize {
        lock(&self.shared.drain).remaining
    }

    /// Starts (or restarts) a paced drain over `window`. Returns at once.
    pub fn drain(&self, window: Duration) {
        let stop = CancellationToken::new();
        // Taken now: status answers with the real count the moment drain returns.
        let conns = self.hub.all();
        let n = conns.len();
        {
            let mut d = lock(&self.shared.drain);
            if let Some(old) = d.stop.replace(stop.clone()) {
                old.cancel();
            }
            d.remaining = n;
            self.shared.state.send_replace(NodeState::Draining);
            self.metrics.draining.set(1);
        }
        let (shared, hub, stopped) = (self.shared.clone(), self.hub.clone(), stop.clone());
        let paced = async move {
            tracing::info!(
                connections = n,
                window_s = window.as_secs_f64(),
                "drain started"
            );
            let start = Instant::now();
            for (i, outbox) in conns.into_iter().enumerate() {
                // Connection i closes at i/n of the window: an even spread.
                tokio::time::sleep_until(start + window.mul_f64(i as f64 / n as f64)).await;
                let mut d = lock(&shared.drain);
                if stop.is_cancelled() {
                    return;
                }
                outbox.close(CloseReason::Draining);
                d.remaining -= 1;
            }
            hub.until_empty().await;
            let _d = lock(&shared.drain);
            if stop.is_cancelled() {
                return;
            }
            shared.state.send_replace(NodeState::Drained);
            tracing::info!(took_s = start.elapsed().as_secs_f64(), "drained");
        };
        self.tasks.spawn("paced drain", async move {
            tokio::select! {
                () = stopped.cancelled() => {}
                () = paced => {}
            }
        });
    }

    /// Serves again; connections already closed stay closed.
    pub fn undrain(&self) {
        {
            let mut d = lock(&self.shared.drain);
            if let Some(stop) = d.stop.take() {
                stop.cancel();
            }
            d.remaining = 0;
            self.shared.state.send_replace(NodeState::Serving);
            self.metrics.draining.set(0);
        }
        tracing::info!("serving again");
    }

    /// Waits until the node is drained, or `limit` passes; true if it is drained.
    pub async fn wait_drained(&self, limit: Duration) -> bool {
        let mut state = self.subscribe();
        matches!(
            tokio::time::timeout(limit, state.wait_for(|s| *s == NodeState::Drained)).await,
            Ok(Ok(_))
        )
    }
}

#[cfg(test)]
mod tests {
    use herald_shared::UserId;

    use super::*;
    use crate::outbox::Outbox;

    struct Fixture {
        hub: Arc<Hub>,
        tasks: Tasks,
        lifecycle: Lifecycle,
        conns: Vec<Arc<Outbox>>,
        user: UserId,
    }

    fn with_connections(n: usize) -> Fixture {
        let (hub, metrics, tasks) = (Arc::new(Hub::new()), Arc::new(Metrics::new()), Tasks::new());
        let user = UserId::parse("1").unwrap();
        let conns = (0..n)
            .map(|_| {
                let o = Outbox::new(10, Duration::from_secs(60), metrics.clone());
                assert!(hub.register(o.clone(), &user, n, usize::MAX).is_ok());
                o
            })
            .collect();
        let lifecycle = Lifecycle::new(hub.clone(), metrics, tasks.clone());
        Fixture {
            hub,
            tasks,
            lifecycle,
            conns,
            user,
        }
    }

    impl Fixture {
        fn closed(&self) -> usize {
            self.conns
                .iter()
                .filter(|o| o.take(0).close == Some(CloseReason::Draining))
                .count()
        }

        fn all_gone(&self) {
            for o in &self.conns {
                self.hub.unregister(o.id, &self.user);
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_paced_drain_spreads_its_closes_and_is_drained_when_the_last_one_is_gone() {
        let f = with_connections(2);
        let lc = &f.lifecycle;
        assert_eq!(lc.state(), NodeState::Serving);
        lc.drain(Duration::from_secs(10));
        assert_eq!((lc.state(), lc.drain_remaining()), (NodeState::Draining, 2));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!((f.closed(), lc.drain_remaining()), (1, 1));
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!((f.closed(), lc.drain_remaining()), (2, 0));
        assert!(
            !lc.wait_drained(Duration::from_secs(1)).await,
            "connections still open"
        );
        f.all_gone();
        assert!(lc.wait_drained(Duration::from_secs(1)).await);
        assert_eq!(lc.state(), NodeState::Drained);
    }

    #[tokio::test(start_paused = true)]
    async fn undrain_stops_the_drain_for_good() {
        let f = with_connections(2);
        let lc = &f.lifecycle;
        let mut states = lc.subscribe();
        lc.drain(Duration::from_secs(10));
        tokio::time::sleep(Duration::from_secs(1)).await;
        lc.undrain();
        assert_eq!((lc.state(), lc.drain_remaining()), (NodeState::Serving, 0));
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(f.closed(), 1, "the second connection stays open");
        f.all_gone();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(*states.borrow_and_update(), NodeState::Serving);
        assert_eq!(lc.state(), NodeState::Serving, "never marked drained");
    }

    #[tokio::test(start_paused = true)]
    async fn the_drain_is_a_node_task_and_stops_with_the_node() {
        let f = with_connections(2);
        f.lifecycle.drain(Duration::from_secs(10));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(f.closed(), 1);
        f.tasks.stop(Duration::from_secs(1)).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(f.closed(), 1, "no close after the node stopped");
        f.all_gone();
        assert!(!f.lifecycle.wait_drained(Duration::from_secs(1)).await);
    }
}
