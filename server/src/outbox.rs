//! One connection's outbound queue: bounded by count and by age, never blocking the
//! publisher.
//!
//! Publishers (the hub, on behalf of the broker) push shared frames without awaiting;
//! the connection's session task drains them. The slow-consumer policy is the
//! seed's: a queue that holds `capacity` frames (1500) or whose oldest frame is older
//! than `expiry` (10 s) marks its connection for closing with 1013. The queued frames
//! are dropped at once (freeing memory); the client resumes with `after` and the
//! store replays what it missed, so nothing stored is lost. The lock is a std mutex:
//! it is never held across an await, each critical section is a few pointer moves,
//! and a panic inside one does not poison it for later pushes ([`crate::lock`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::ws::Utf8Bytes;
use futures_util::task::AtomicWaker;
use herald_shared::UserId;

use crate::lock::lock;
use crate::metrics::Metrics;

/// A frame ready for the wire, shared by every recipient on this node: serialised
/// once per publish, cloned by reference count per connection.
#[derive(Debug)]
pub struct Delivery {
    pub frame: Utf8Bytes,
    /// Set on notification frames, for de-duplication at the connect seam.
    pub notification: Option<NotificationTag>,
    /// When the publish was accepted (Unix µs), for the delivery latency histogram.
    pub accepted_us: u64,
}

/// Which notification a frame carries: its id and owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationTag {
    pub id: i64,
    pub user: UserId,
}

impl Delivery {
    /// A `notification` frame for `user`'s notification `id`, accepted now.
    pub fn notification(frame: String, id: i64, user: &UserId) -> Arc<Self> {
        Self::with_time(
            frame,
            Some(NotificationTag {
                id,
                user: user.clone(),
            }),
            unix_micros(),
        )
    }

    /// An `event` frame, accepted now.
    pub fn event(frame: String) -> Arc<Self> {
        Self::with_time(frame, None, unix_micros())
    }

    pub fn with_time(
        frame: String,
        notification: Option<NotificationTag>,
        accepted_us: u64,
    ) -> Arc<Self> {
        Arc::new(Self {
            frame: Utf8Bytes::from(frame),
            notification,
            accepted_us,
        })
    }
}

pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Why the node is closing a connection, decided outside its session task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Queue overflowed or aged: 1013, queued frames discarded.
    SlowConsumer,
    /// Drain: 1012 after the queued frames are written.
    Draining,
    /// Process exit after the drain window: 1012 as well (reconnect elsewhere).
    Shutdown,
}

/// What happened to a pushed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    Queued,
    /// This push overflowed the queue: the connection is now closing with 1013.
    Overflowed,
    /// The connection was already closing; the frame was dropped.
    Closed,
}

struct Queued {
    delivery: Arc<Delivery>,
    at: Instant,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Queued>,
    close: Option<CloseReason>,
    /// The broker lost messages: the session must catch up from the store.
    resync: bool,
}

pub struct Outbox {
    /// Node-local connection number (hub and registry key).
    pub id: u64,
    state: Mutex<State>,
    /// The session's wake-up: a flag and the one waker of the one task that waits.
    /// Not a `Notify`, whose wait future is much larger, and every idle
    /// connection's task holds that future while it waits.
    woken: AtomicBool,
    waker: AtomicWaker,
    capacity: usize,
    expiry: Duration,
    metrics: Arc<Metrics>,
}

/// What the session should do next, taken from the outbox in one lock.
pub struct Batch {
    pub frames: Vec<Arc<Delivery>>,
    pub close: Option<CloseReason>,
    /// Catch up from the store (set once per request).
    pub resync: bool,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Outbox {
    pub fn new(capacity: usize, expiry: Duration, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            state: Mutex::new(State::default()),
            woken: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            capacity: capacity.max(1),
            expiry,
            metrics,
        })
    }

    /// Queues a frame without waiting; enforces the slow-consumer policy.
    pub fn push(&self, delivery: Arc<Delivery>) -> Push {
        let mut s = lock(&self.state);
        if s.close.is_some() {
            return Push::Closed;
        }
        let now = Instant::now();
        let aged = s
            .queue
            .front()
            .is_some_and(|f| now.duration_since(f.at) > self.expiry);
        if s.queue.len() >= self.capacity || aged {
            s.close = Some(CloseReason::SlowConsumer);
            self.metrics.queue_depth.dec_by(s.queue.len() as i64);
            s.queue = VecDeque::new();
            drop(s);
            self.wake();
            return Push::Overflowed;
        }
        let was_empty = s.queue.is_empty();
        s.queue.push_back(Queued { delivery, at: now });
        drop(s);
        self.metrics.queue_depth.inc();
        if was_empty {
            self.wake();
        }
        Push::Queued
    }

    /// Asks the session to close; the first reason wins.
    pub fn close(&self, reason: CloseReason) {
        let mut s = lock(&self.state);
        if s.close.is_none() {
            s.close = Some(reason);
            if reason == CloseReason::SlowConsumer {
                self.metrics.queue_depth.dec_by(s.queue.len() as i64);
                s.queue = VecDeque::new();
            }
        }
        drop(s);
        self.wake();
    }

    /// Asks the session to fetch from the store what the broker may have lost.
    pub fn resync(&self) {
        lock(&self.state).resync = true;
        self.wake();
    }

    /// Takes up to `max` queued frames, and the close request if there is one.
    ///
    /// Fails the age rule here too: a session that could not write for longer than
    /// the expiry must not keep a connection whose oldest frame is already stale.
    pub fn take(&self, max: usize) -> Batch {
        let mut s = lock(&self.state);
        if s.close.is_none()
            && s.queue
                .front()
                .is_some_and(|f| f.at.elapsed() > self.expiry)
        {
            s.close = Some(CloseReason::SlowConsumer);
            self.metrics.queue_depth.dec_by(s.queue.len() as i64);
            s.queue = VecDeque::new();
        }
        let n = s.queue.len().min(max);
        let frames: Vec<_> = s.queue.drain(..n).map(|q| q.delivery).collect();
        if s.queue.is_empty() && s.queue.capacity() > 64 {
            // A burst grew the ring; give the memory back while idle.
            s.queue = VecDeque::new();
        }
        let close = s.close;
        let resync = std::mem::take(&mut s.resync);
        drop(s);
        self.metrics.queue_depth.dec_by(n as i64);
        Batch {
            frames,
            close,
            resync,
        }
    }

    /// Resolves when something was pushed or a close was requested since the last take.
    pub fn ready(&self) -> impl std::future::Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.woken.swap(false, Ordering::AcqRel) {
                return Poll::Ready(());
            }
            self.waker.register(cx.waker());
            // A wake between the swap and the registration found no waker: look again.
            if self.woken.swap(false, Ordering::AcqRel) {
                return Poll::Ready(());
            }
            Poll::Pending
        })
    }

    /// Wakes the session, or has its next `ready` return at once (like a `Notify`
    /// permit, one wake is kept until it is taken).
    fn wake(&self) {
        self.woken.store(true, Ordering::Release);
        self.waker.wake();
    }
}

#[cfg(test)]
impl Outbox {
    /// Frames waiting now.
    pub fn depth(&self) -> usize {
        lock(&self.state).queue.len()
    }

    /// Panics while holding the queue's lock, as a bug in a critical section would.
    pub(crate) fn panic_holding_lock(&self) {
        let _state = lock(&self.state);
        panic!("a bug while the outbox is locked");
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        // Recovered like every lock here (see `crate::lock`): the count is still right.
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        let n = state.queue.len();
        self.metrics.queue_depth.dec_by(n as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(i: i64) -> Arc<Delivery> {
        Delivery::notification(format!("{{\"n\":{i}}}"), i, &UserId::parse("42").unwrap())
    }

    #[test]
    fn overflow_closes_and_frees() {
        let m = Arc::new(Metrics::new());
        let o = Outbox::new(3, Duration::from_secs(10), m.clone());
        for i in 0..3 {
            assert_eq!(o.push(d(i)), Push::Queued);
        }
        assert_eq!(m.queue_depth.get(), 3);
        assert_eq!(o.push(d(3)), Push::Overflowed);
        assert_eq!(o.push(d(4)), Push::Closed);
        assert_eq!(m.queue_depth.get(), 0);
        let b = o.take(100);
        assert!(b.frames.is_empty());
        assert_eq!(b.close, Some(CloseReason::SlowConsumer));
    }

    #[test]
    fn aged_queue_closes_on_push_and_on_take() {
        let m = Arc::new(Metrics::new());
        let o = Outbox::new(100, Duration::from_millis(20), m.clone());
        assert_eq!(o.push(d(1)), Push::Queued);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(o.push(d(2)), Push::Overflowed);

        let o = Outbox::new(100, Duration::from_millis(20), m.clone());
        o.push(d(1));
        std::thread::sleep(Duration::from_millis(30));
        let b = o.take(10);
        assert_eq!(b.close, Some(CloseReason::SlowConsumer));
        assert!(b.frames.is_empty());
        assert_eq!(m.queue_depth.get(), 0);
    }

    #[test]
    fn take_is_fifo_and_bounded() {
        let m = Arc::new(Metrics::new());
        let o = Outbox::new(100, Duration::from_secs(10), m.clone());
        for i in 0..5 {
            o.push(d(i));
        }
        let b = o.take(3);
        let ids: Vec<_> = b
            .frames
            .iter()
            .map(|f| f.notification.as_ref().unwrap().id)
            .collect();
        assert_eq!(ids, vec![0, 1, 2]);
        assert_eq!(o.depth(), 2);
        assert_eq!(m.queue_depth.get(), 2);
        drop(o);
        assert_eq!(m.queue_depth.get(), 0);
    }

    #[test]
    fn drain_close_keeps_queued_frames() {
        let m = Arc::new(Metrics::new());
        let o = Outbox::new(10, Duration::from_secs(10), m);
        o.push(d(1));
        o.close(CloseReason::Draining);
        o.close(CloseReason::SlowConsumer);
        let b = o.take(10);
        assert_eq!(b.frames.len(), 1);
        assert_eq!(b.close, Some(CloseReason::Draining));
    }
}
