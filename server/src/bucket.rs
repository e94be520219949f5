//! A token bucket, the one rate limit shape: a client's frames on one connection
//! ([`crate::session`]), and a user's store writes across its connections
//! ([`crate::client_writes`]).

use std::time::Instant;

/// A token bucket: `burst` tokens, refilled at `per_sec` a second.
#[derive(Debug)]
pub struct Bucket {
    per_sec: f32,
    burst: f32,
    tokens: f32,
    last: Instant,
}

impl Bucket {
    pub fn new(per_sec: u32, burst: u32, now: Instant) -> Self {
        let burst = burst.max(1) as f32;
        Self {
            per_sec: per_sec as f32,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes a token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f32();
        self.last = now;
        self.tokens = (self.tokens + dt * self.per_sec).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether the bucket would be full at `now`: it is then no different from a
    /// new one, and may be forgotten.
    pub fn full_at(&self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f32();
        self.tokens + dt * self.per_sec >= self.burst
    }
}
