//! Group commit: requests that arrive while the store is busy share its next round
//! trip.
//!
//! Two kinds of store work come in many small, concurrent requests that one query can
//! answer together: publishes (one transaction for many `POST`s, [`crate::publish`])
//! and catch-up reads (one query for many sessions, [`crate::catch_up`]). Both queue
//! their requests here, and *flushers* take whatever has queued up at that moment as
//! one group.
//!
//! There is no timer. A request that finds fewer than `flushers` at work starts one,
//! which takes the queue as it finds it, so an idle node serves a lone request at once;
//! under load the flushers are busy and what arrives meanwhile waits for the next
//! group, which grows with the load. The queue, not the store's pool, is where a burst
//! waits: a request queued here holds no connection and has no acquire timeout.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use crate::lock::lock;

/// A queue of waiting requests and the flushers working on it.
pub(crate) struct Combiner<T> {
    state: Mutex<Queue<T>>,
    /// Groups in flight at most.
    flushers: usize,
}

struct Queue<T> {
    waiting: VecDeque<T>,
    flushing: usize,
}

impl<T> Combiner<T> {
    pub(crate) fn new(flushers: usize) -> Self {
        Self {
            state: Mutex::new(Queue {
                waiting: VecDeque::new(),
                flushing: 0,
            }),
            flushers: flushers.max(1),
        }
    }

    /// Queues `request`. Returns a flusher when fewer than `flushers` are at work:
    /// the caller must run it (on a task of its own, so a caller that goes away
    /// cannot cancel a group half done) until it returns `None`.
    #[must_use = "a returned flusher must be run, or the queue waits for nobody"]
    pub(crate) fn push(self: &Arc<Self>, request: T) -> Option<Flusher<T>> {
        let mut q = lock(&self.state);
        q.waiting.push_back(request);
        (q.flushing < self.flushers).then(|| {
            q.flushing += 1;
            Flusher {
                combiner: self.clone(),
                counted: true,
            }
        })
    }
}

/// One flusher's turn at the queue. Counted out of the queue's flushers when its
/// queue runs dry, or when it is dropped early (a panic in a group), so the queue
/// never waits for a flusher that is gone: what is still queued then goes with the
/// next request's flusher.
pub(crate) struct Flusher<T> {
    combiner: Arc<Combiner<T>>,
    counted: bool,
}

impl<T> Flusher<T> {
    /// The next group: requests in arrival order while their `weight`s stay within
    /// `max` (one request is never split, so a group may pass `max` by its last
    /// request's weight). `None` once the queue is empty, decided under the lock: a
    /// request queued after that sees one flusher fewer and starts its own.
    pub(crate) fn next_group(
        &mut self,
        weight: impl Fn(&T) -> usize,
        max: usize,
    ) -> Option<Vec<T>> {
        let mut q = lock(&self.combiner.state);
        let mut group = Vec::new();
        let mut total = 0;
        while total < max
            && let Some(request) = q.waiting.pop_front()
        {
            total += weight(&request);
            group.push(request);
        }
        if group.is_empty() {
            q.flushing -= 1;
            self.counted = false;
            return None;
        }
        Some(group)
    }
}

impl<T> Drop for Flusher<T> {
    fn drop(&mut self) {
        if self.counted {
            lock(&self.combiner.state).flushing -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flusher_starts_only_below_the_limit_and_leaves_when_the_queue_is_dry() {
        let c = Arc::new(Combiner::new(1));
        let mut f = c.push(1).expect("the first request starts a flusher");
        assert!(c.push(2).is_none(), "one flusher at most");
        assert!(c.push(3).is_none());
        assert_eq!(f.next_group(|_| 1, 2), Some(vec![1, 2]));
        assert_eq!(f.next_group(|_| 1, 2), Some(vec![3]));
        assert_eq!(f.next_group(|_| 1, 2), None);
        drop(f);
        assert!(
            c.push(4).is_some(),
            "the queue ran dry: the next request starts one"
        );
    }

    #[test]
    fn a_group_is_cut_by_weight_but_never_splits_a_request() {
        let c = Arc::new(Combiner::new(1));
        let mut f = c.push(600).expect("flusher");
        let _ = c.push(600);
        let _ = c.push(10);
        assert_eq!(f.next_group(|n| *n, 1000), Some(vec![600, 600]));
        assert_eq!(f.next_group(|n| *n, 1000), Some(vec![10]));
    }

    #[test]
    fn a_dropped_flusher_is_counted_out() {
        let c = Arc::new(Combiner::new(1));
        let f = c.push(1).expect("flusher");
        drop(f);
        assert!(c.push(2).is_some(), "a flusher gone early frees its place");
    }
}
