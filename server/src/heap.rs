//! Gives the heap's free pages back to the OS once a burst of connects or closes is
//! over, where the allocator is glibc's: a Rust host that embeds Herald on the
//! system allocator, and the C libraries (SQLite) inside the binary, which itself
//! allocates with jemalloc (`main.rs`).
//!
//! A connect burst allocates far more than the connections then keep: HTTP parsing,
//! the upgrade, the opening's store reads, hundreds of handshakes in flight. glibc
//! keeps what they free resident, in holes between the allocations the live
//! connections keep, where it cannot shrink the heap from its top. `malloc_trim(0)`
//! releases the free pages inside the heap as well. It walks every arena under its
//! lock, so it runs once per burst, when the burst is over, on a blocking thread: not
//! on a fixed timer, and never while connections keep arriving.

use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::node::Node;

/// How often the node looks at its connection churn.
const TICK: Duration = Duration::from_secs(2);
/// Connects plus closes since the last trim that make a burst worth trimming after.
const BURST: u64 = 1_000;
/// Fewer connects plus closes than this in one tick: the burst is over.
const QUIET: u64 = 50;

/// Decides, tick by tick, when a burst is over.
#[derive(Debug, Default)]
struct Burst {
    accepted: u64,
    open: u64,
    since_trim: u64,
}

impl Burst {
    /// Takes the node's connections accepted since start and open now; true when a
    /// trim is due (and counts from zero again).
    fn tick(&mut self, accepted: u64, open: u64) -> bool {
        let connects = accepted.saturating_sub(self.accepted);
        // Closes are what left beyond what arrived: open' = open + connects - closes.
        let closes = (self.open + connects).saturating_sub(open);
        self.accepted = accepted;
        self.open = open;
        let churn = connects + closes;
        self.since_trim += churn;
        if churn < QUIET && self.since_trim >= BURST {
            self.since_trim = 0;
            return true;
        }
        false
    }
}

/// Starts the trimming task on the node's tasks. A no-op where the allocator is not
/// glibc's.
pub(crate) fn spawn_trim(node: &Arc<Node>) {
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        return;
    }
    // Weak: the task must not keep the node alive; it ends with the node's tasks.
    let weak: Weak<Node> = Arc::downgrade(node);
    node.tasks.spawn("heap trim", async move {
        let mut burst = Burst::default();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(node) = weak.upgrade() else { return };
            let due = burst.tick(
                node.metrics.connections_accepted.get(),
                node.hub.connections() as u64,
            );
            drop(node);
            if due {
                let _ = tokio::task::spawn_blocking(trim).await;
            }
        }
    });
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only takes the allocator's own locks; any thread may call it.
    let released = unsafe { libc::malloc_trim(0) } == 1;
    tracing::debug!(released, "heap trimmed after a burst of connections");
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_when_a_burst_of_connects_is_over() {
        let mut b = Burst::default();
        assert!(!b.tick(600, 600), "still connecting");
        assert!(!b.tick(1_200, 1_200), "still connecting");
        assert!(b.tick(1_210, 1_210), "quiet after 1,210 connects");
        assert!(!b.tick(1_215, 1_215), "nothing new since the trim");
        assert!(!b.tick(1_215, 1_215));
    }

    #[test]
    fn closes_count_as_churn() {
        let mut b = Burst::default();
        b.tick(2_000, 2_000);
        assert!(b.tick(2_000, 2_000), "the connect burst");
        assert!(!b.tick(2_000, 900), "1,100 closes in this tick: not quiet");
        assert!(b.tick(2_000, 900), "quiet after the close burst");
    }

    #[test]
    fn a_steady_trickle_never_looks_quiet_until_it_stops() {
        let mut b = Burst::default();
        let mut accepted = 0;
        for _ in 0..30 {
            accepted += 100;
            assert!(!b.tick(accepted, accepted), "100 per tick is not quiet");
        }
        assert!(b.tick(accepted, accepted));
    }

    #[test]
    fn a_quiet_trickle_trims_once_per_burst_worth_of_churn() {
        let mut b = Burst::default();
        let mut accepted = 0;
        let trims: Vec<usize> = (1..=120)
            .filter(|_| {
                accepted += 10;
                b.tick(accepted, 0) // 10 connects and 10 closes a tick
            })
            .collect();
        assert_eq!(trims, [50, 100], "every 1,000 of churn, 20 a tick");
    }
}
