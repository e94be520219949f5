//! Client writes (`mark_read`, `mark_all_read`) against the store's capacity.
//!
//! A client write takes the same store as the backend API: on SQLite its one writer
//! connection, on PostgreSQL a pooled connection. Left alone, many connections
//! marking as fast as their frame rate allows queue enough writes that the API's
//! publishes wait past the store's acquire timeout and answer 503. Two limits keep
//! the API its share:
//!
//! - a budget per user across the user's connections on this node
//!   (`HERALD_CLIENT_WRITE_RATE` a second, as a token bucket of that size), since a
//!   user's connections share one frame rate each and would otherwise multiply it;
//! - a share of the store's write slots ([`Store::write_slots`]): a quarter of the
//!   PostgreSQL pool, at least one, and one on SQLite. A write waits for a slot at
//!   most [`SLOT_WAIT`], then is refused: it never joins an unbounded queue in
//!   front of the API's writes.
//!
//! A refused write is answered `rate_limited`, and nothing is written.
//!
//! [`Store::write_slots`]: crate::store::Store::write_slots

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use herald_shared::UserId;
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::bucket::Bucket;
use crate::lock::lock;

/// How long a client write waits for one of its store slots before it is refused.
pub const SLOT_WAIT: Duration = Duration::from_millis(200);
/// Client writes may hold this fraction of the store's write slots (at least one).
const SHARE_DIVISOR: usize = 4;

/// Why a client write was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The user spent its write budget on this node.
    User,
    /// Client writes hold their whole share of the store.
    Busy,
}

pub struct ClientWrites {
    per_sec: u32,
    users: Mutex<Users>,
    slots: Semaphore,
}

/// Buckets kept before full ones are forgotten, at most once a [`SWEEP_EVERY`].
const SWEEP_ABOVE: usize = 1024;
const SWEEP_EVERY: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Users {
    buckets: HashMap<UserId, Bucket>,
    swept: Option<Instant>,
}

impl ClientWrites {
    /// `per_sec` writes a second per user; `store_slots` from the store.
    pub fn new(per_sec: u32, store_slots: usize) -> Self {
        Self {
            per_sec,
            users: Mutex::default(),
            slots: Semaphore::new((store_slots / SHARE_DIVISOR).max(1)),
        }
    }

    /// Admits one write of `user`: a slot to write in (held until dropped), or why not.
    pub async fn admit(&self, user: &UserId) -> Result<SemaphorePermit<'_>, Refused> {
        if !self.take(user, Instant::now()) {
            return Err(Refused::User);
        }
        match tokio::time::timeout(SLOT_WAIT, self.slots.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(Refused::Busy),
        }
    }

    /// Takes a token from `user`'s budget; forgets full buckets now and then, so
    /// users who stopped writing cost nothing.
    fn take(&self, user: &UserId, now: Instant) -> bool {
        let mut u = lock(&self.users);
        if u.buckets.len() > SWEEP_ABOVE
            && u.swept
                .is_none_or(|t| now.saturating_duration_since(t) >= SWEEP_EVERY)
        {
            u.buckets.retain(|_, b| !b.full_at(now));
            u.swept = Some(now);
        }
        let per_sec = self.per_sec;
        u.buckets
            .entry(user.clone())
            .or_insert_with(|| Bucket::new(per_sec, per_sec, now))
            .take(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_user_has_its_own_budget() {
        let w = ClientWrites::new(3, 1);
        let (a, b) = (UserId::parse("a").unwrap(), UserId::parse("b").unwrap());
        let t0 = Instant::now();
        assert!((0..3).all(|_| w.take(&a, t0)));
        assert!(!w.take(&a, t0), "a's budget is spent");
        assert!(w.take(&b, t0), "b's is not");
        assert!(w.take(&a, t0 + Duration::from_millis(400)), "refilled");
    }

    #[test]
    fn full_buckets_are_forgotten() {
        let w = ClientWrites::new(10, 1);
        let t0 = Instant::now();
        for i in 0..2000 {
            w.take(&UserId::parse(format!("u{i}")).unwrap(), t0);
        }
        let later = t0 + Duration::from_secs(1);
        w.take(&UserId::parse("last").unwrap(), later);
        assert_eq!(lock(&w.users).buckets.len(), 1, "only the new one is kept");
    }

    #[tokio::test]
    async fn writes_take_a_share_of_the_store_and_wait_only_so_long() {
        // A pool of 8: client writes get 2 slots.
        let w = ClientWrites::new(100, 8);
        let u = UserId::parse("a").unwrap();
        let one = w.admit(&u).await.unwrap();
        let _two = w.admit(&u).await.unwrap();
        assert_eq!(w.admit(&u).await.err(), Some(Refused::Busy));
        drop(one);
        assert!(w.admit(&u).await.is_ok(), "a freed slot is taken again");
        // SQLite: one slot.
        assert_eq!(ClientWrites::new(1, 1).slots.available_permits(), 1);
    }
}
