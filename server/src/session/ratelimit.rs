//! Per-connection token bucket for client frames (default 20/s, burst 40).
//!
//! A refused frame is answered with `rate_limited`; a client that keeps sending
//! while refused (more refused frames in a row than the burst) is abusive and is
//! closed with 1008. One accepted frame forgives past refusals.

use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    Limited,
    Abusive,
}

#[derive(Debug)]
pub struct RateLimiter {
    per_sec: f32,
    burst: f32,
    tokens: f32,
    last: Instant,
    strikes: u32,
}

impl RateLimiter {
    pub fn new(per_sec: u32, burst: u32, now: Instant) -> Self {
        let burst = burst.max(1) as f32;
        Self {
            per_sec: per_sec as f32,
            burst,
            tokens: burst,
            last: now,
            strikes: 0,
        }
    }

    pub fn check(&mut self, now: Instant) -> Verdict {
        let dt = now.saturating_duration_since(self.last).as_secs_f32();
        self.last = now;
        self.tokens = (self.tokens + dt * self.per_sec).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.strikes = 0;
            Verdict::Allowed
        } else {
            self.strikes += 1;
            if self.strikes as f32 > self.burst {
                Verdict::Abusive
            } else {
                Verdict::Limited
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(20, 40, t0);
        for _ in 0..40 {
            assert_eq!(r.check(t0), Verdict::Allowed);
        }
        assert_eq!(r.check(t0), Verdict::Limited);
        // 50 ms later one token (20/s) has come back.
        assert_eq!(r.check(t0 + Duration::from_millis(50)), Verdict::Allowed);
        assert_eq!(r.check(t0 + Duration::from_millis(50)), Verdict::Limited);
    }

    #[test]
    fn sustained_abuse_is_detected_and_forgiven() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(20, 4, t0);
        for _ in 0..4 {
            r.check(t0);
        }
        for _ in 0..4 {
            assert_eq!(r.check(t0), Verdict::Limited);
        }
        assert_eq!(r.check(t0), Verdict::Abusive);
        let later = t0 + Duration::from_secs(1);
        assert_eq!(r.check(later), Verdict::Allowed);
        assert_eq!(r.check(later), Verdict::Allowed);
    }
}
