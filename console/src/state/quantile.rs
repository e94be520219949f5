//! Rates and quantiles over an interval, from the DELTAS of two scrapes' counters and
//! cumulative histogram buckets, so the figures describe the last interval, not the
//! node's whole life. A counter that went down (the node restarted) yields nothing.

/// Subtracts two cumulative bucket lists with the same bounds; `None` if the bounds
/// differ or a count went down (restart).
pub fn bucket_delta(prev: &[(f64, f64)], cur: &[(f64, f64)]) -> Option<Vec<(f64, f64)>> {
    if prev.len() != cur.len() || prev.iter().zip(cur).any(|(p, c)| p.0 != c.0 || c.1 < p.1) {
        return None;
    }
    Some(
        cur.iter()
            .zip(prev)
            .map(|(c, p)| (c.0, c.1 - p.1))
            .collect(),
    )
}

/// Adds `other` into `acc` (same bounds); used for cluster-wide quantiles.
pub fn bucket_add(acc: &mut Vec<(f64, f64)>, other: &[(f64, f64)]) {
    if acc.is_empty() {
        acc.extend_from_slice(other);
    } else if acc.len() == other.len() {
        for (a, o) in acc.iter_mut().zip(other) {
            a.1 += o.1;
        }
    }
}

/// The `q` quantile (0..1) of cumulative buckets, interpolated linearly inside the
/// bucket it falls in; `None` when nothing was observed. Observations beyond the
/// last finite bound report that bound.
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let span = count - lower.1;
            let frac = if span > 0.0 {
                (rank - lower.1) / span
            } else {
                1.0
            };
            return Some(lower.0 + (le - lower.0) * frac);
        }
        lower = (le, count);
    }
    Some(lower.0)
}

/// Per-second rate of a counter between two readings `dt_s` apart.
pub fn rate(prev: f64, cur: f64, dt_s: f64) -> Option<f64> {
    (cur >= prev && dt_s > 0.0).then(|| (cur - prev) / dt_s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Quantiles come from the interval's deltas, not the totals since start.
    #[test]
    fn quantiles_from_deltas() {
        let inf = f64::INFINITY;
        let prev = [(0.001, 100.0), (0.01, 100.0), (0.1, 100.0), (inf, 100.0)];
        let cur = [(0.001, 100.0), (0.01, 150.0), (0.1, 200.0), (inf, 200.0)];
        let d = bucket_delta(&prev, &cur).unwrap();
        // 100 new observations: 50 in (1 ms, 10 ms], 50 in (10 ms, 100 ms].
        let p50 = quantile(&d, 0.5).unwrap();
        assert!((p50 - 0.01).abs() < 1e-9, "{p50}");
        let p99 = quantile(&d, 0.99).unwrap();
        assert!(p99 > 0.09 && p99 <= 0.1, "{p99}");
        // Since start, p50 would have been under 1 ms.
        assert!(quantile(&cur, 0.5).unwrap() <= 0.001);
    }

    /// No observations, a restart, or a +Inf-only tail are handled.
    #[test]
    fn empty_restart_and_overflow() {
        let inf = f64::INFINITY;
        let a = [(0.1, 5.0), (inf, 5.0)];
        assert_eq!(quantile(&bucket_delta(&a, &a).unwrap(), 0.99), None);
        assert!(bucket_delta(&a, &[(0.1, 1.0), (inf, 1.0)]).is_none());
        assert_eq!(quantile(&[(0.1, 0.0), (inf, 3.0)], 0.5), Some(0.1));
        assert_eq!(rate(10.0, 20.0, 2.0), Some(5.0));
        assert_eq!(rate(10.0, 2.0, 2.0), None);
    }
}
