//! The one way a node starts and stops its background tasks (store probe, registry
//! heartbeat, broker subscriber and probe, presence writer, SQLite checkpoints, heap trim, paced
//! drain, resync fan-out, deferred unsubscribes).
//!
//! Every such task is spawned through [`Tasks::spawn`]: it runs until its future ends
//! or the node stops, whichever comes first. Stopping cancels them all at once and
//! waits for each to be gone; dropping the last [`Tasks`] (the node, with everything
//! that held a clone) cancels them too. So a node that has shut down, or that an
//! embedding host or a test dropped, leaves nothing running, and no task needs an
//! abort handle, a closed channel or a `Drop` of its own to learn that it should end.
//! A task must not hold a `Tasks` clone itself, or it would keep them all alive. Sessions are not background
//! tasks: they are tracked apart ([`crate::node::Node::sessions`]) because shutdown
//! drains them first, while these keep serving them.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A node's background tasks. Cloning shares them; they are cancelled when the last
/// clone is dropped.
#[derive(Clone, Debug, Default)]
pub struct Tasks {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    stop: CancellationToken,
    tracker: TaskTracker,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Tasks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `task` in the background until it ends or the node stops. `name` is for
    /// the log line a panicking or lingering task leaves.
    pub fn spawn<F>(&self, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let stop = self.inner.stop.clone();
        self.inner.tracker.spawn(async move {
            tokio::select! {
                biased;
                () = stop.cancelled() => tracing::debug!(task = name, "stopped"),
                () = task => {}
            }
        });
    }

    /// Stops every task and waits up to `within` for them to be gone. No task can be
    /// started afterwards (a late `spawn` is cancelled at once).
    pub async fn stop(&self, within: Duration) {
        let Inner { stop, tracker } = &*self.inner;
        stop.cancel();
        tracker.close();
        if tokio::time::timeout(within, tracker.wait()).await.is_err() {
            tracing::warn!(
                left = tracker.len(),
                "background tasks still running {within:?} after stop"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stop_cancels_every_task_and_waits_for_it() {
        let tasks = Tasks::new();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        for _ in 0..3 {
            let tx = tx.clone();
            tasks.spawn("forever", async move {
                let _tx = tx; // dropped when the task is
                std::future::pending::<()>().await;
            });
        }
        drop(tx);
        tasks.stop(Duration::from_secs(1)).await;
        assert!(rx.recv().await.is_none(), "every task dropped its state");
        assert!(tasks.inner.stop.is_cancelled());
        // A task spawned after stop never runs its body.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        tasks.spawn("late", async move {
            let _ = tx.send(()).await;
        });
        tokio::task::yield_now().await;
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test]
    async fn dropping_the_last_clone_cancels_every_task() {
        let tasks = Tasks::new();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        let clone = tasks.clone();
        clone.spawn("forever", async move {
            let _tx = tx;
            std::future::pending::<()>().await;
        });
        drop(tasks);
        tokio::task::yield_now().await;
        assert!(
            tokio::time::timeout(Duration::from_millis(50), rx.recv())
                .await
                .is_err(),
            "still running while a clone lives"
        );
        drop(clone);
        let ended = tokio::time::timeout(Duration::from_secs(1), rx.recv()).await;
        assert_eq!(ended, Ok(None), "cancelled once the last clone is gone");
    }

    #[tokio::test]
    async fn a_task_that_ends_is_not_waited_for_again() {
        let tasks = Tasks::new();
        tasks.spawn("short", async {});
        tokio::time::timeout(Duration::from_secs(1), tasks.stop(Duration::from_secs(5)))
            .await
            .expect("stop returns at once");
    }
}
