//! Per-connection token bucket for client frames (default 20/s, burst 40), and the
//! judgement of abuse over a time window.
//!
//! A refused frame is not handled. Abuse is judged by how many frames were refused
//! within a [`WINDOW`], not by refusals in a row: a client sending steadily above the
//! rate gets a token back now and then, and a count that every accepted frame reset
//! would never reach its limit. More refused frames in one window than the burst is
//! abusive (1008). Only the first refusal of a window is answered with a notice, so
//! a flood is not answered by a flood of error frames.

use std::time::{Duration, Instant};

use crate::bucket::Bucket;

/// How long a window of refusals lasts, from its first refused frame.
pub const WINDOW: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Refused, the first time in this window: tell the client (`rate_limited`).
    Limited,
    /// Refused again in the same window: dropped without an answer.
    Dropped,
    /// More refusals in one window than the burst: close with 1008.
    Abusive,
}

#[derive(Debug)]
pub struct RateLimiter {
    bucket: Bucket,
    burst: u32,
    /// When the current window of refusals began (none refused yet, or it is over).
    window_start: Option<Instant>,
    refused: u32,
}

impl RateLimiter {
    pub fn new(per_sec: u32, burst: u32, now: Instant) -> Self {
        Self {
            bucket: Bucket::new(per_sec, burst, now),
            burst: burst.max(1),
            window_start: None,
            refused: 0,
        }
    }

    pub fn check(&mut self, now: Instant) -> Verdict {
        if self.bucket.take(now) {
            return Verdict::Allowed;
        }
        match self.window_start {
            Some(start) if now.saturating_duration_since(start) < WINDOW => {
                self.refused += 1;
                if self.refused > self.burst {
                    Verdict::Abusive
                } else {
                    Verdict::Dropped
                }
            }
            _ => {
                self.window_start = Some(now);
                self.refused = 1;
                Verdict::Limited
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(20, 40, t0);
        for _ in 0..40 {
            assert_eq!(r.check(t0), Verdict::Allowed);
        }
        assert_eq!(r.check(t0), Verdict::Limited);
        // 50 ms later one token (20/s) has come back.
        assert_eq!(r.check(t0 + ms(50)), Verdict::Allowed);
        assert_eq!(
            r.check(t0 + ms(50)),
            Verdict::Dropped,
            "one notice a window"
        );
    }

    /// 100 frames/s against 20/s: a token comes back every fifth frame, which used
    /// to forgive the refusals before it. Over a window the refusals add up.
    #[test]
    fn a_steady_flood_above_the_rate_is_abusive() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(20, 40, t0);
        let verdicts: Vec<Verdict> = (0..400).map(|i| r.check(t0 + ms(10 * i))).collect();
        let abusive = verdicts.iter().position(|v| *v == Verdict::Abusive);
        let limited = verdicts.iter().filter(|v| **v == Verdict::Limited).count();
        // Bucket empty after ~0.5 s, then ~80 refusals a second: the 41st refusal of
        // the window comes well within the first 2 s.
        let at = abusive.expect("judged abusive") as u64 * 10;
        assert!(at <= 2_000, "abusive only after {at} ms");
        assert_eq!(limited, 1, "one notice before the close");
        assert!(verdicts.contains(&Verdict::Allowed));
    }

    /// A client just under the rate is never refused, however long it goes on.
    #[test]
    fn just_under_the_rate_is_never_refused() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(20, 40, t0);
        // 19 frames a second for ten minutes.
        for i in 0..19 * 600 {
            let now = t0 + Duration::from_secs_f64(i as f64 / 19.0);
            assert_eq!(r.check(now), Verdict::Allowed, "frame {i}");
        }
    }

    /// Refusals spread thinner than the burst per window never add up to abuse, and
    /// each new window gets one notice.
    #[test]
    fn occasional_refusals_are_forgiven_window_by_window() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(20, 4, t0);
        // Empties the bucket, then is refused `more` times after the notice.
        let mut refuse = |now: Instant, more: usize| {
            let mut v = r.check(now);
            while v == Verdict::Allowed {
                v = r.check(now);
            }
            assert_eq!(v, Verdict::Limited, "a new window's first refusal");
            (0..more).map(|_| r.check(now)).collect::<Vec<_>>()
        };
        let mut now = t0;
        for _ in 0..10 {
            // Four refusals in the window: at the burst, not over it.
            assert_eq!(refuse(now, 3), [Verdict::Dropped; 3]);
            now += WINDOW;
        }
        let last = refuse(now, 4);
        assert_eq!(last[..3], [Verdict::Dropped; 3]);
        assert_eq!(last[3], Verdict::Abusive, "the fifth refusal of a window");
    }
}
