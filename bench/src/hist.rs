//! HDR histograms of microseconds: recorded from many tasks, summarised and
//! serialised (base64 of the V2 HDR encoding, readable by every HdrHistogram port).

use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use serde::{Deserialize, Serialize};

/// Highest recordable value: 10 minutes in µs (larger values saturate).
const HIGHEST_US: u64 = 600_000_000;

pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_US, 3).expect("valid bounds")
}

/// A histogram many tasks record into; striped so they rarely contend.
pub struct Recorder {
    stripes: Vec<Mutex<Histogram<u64>>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    pub fn new() -> Self {
        Self {
            stripes: (0..16).map(|_| Mutex::new(new_hist())).collect(),
        }
    }

    /// Records `us` on stripe `key % stripes`.
    pub fn record(&self, key: usize, us: u64) {
        let mut h = self.stripes[key % self.stripes.len()].lock().unwrap();
        h.saturating_record(us.max(1));
    }

    /// Everything recorded so far, leaving the recorder empty.
    pub fn take(&self) -> Histogram<u64> {
        let mut out = new_hist();
        for s in &self.stripes {
            let mut h = s.lock().unwrap();
            out.add(&*h).expect("same bounds");
            h.reset();
        }
        out
    }
}

/// A histogram as it appears in the report: the usual percentiles and the whole
/// distribution, so reports of shards can be merged exactly.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HistSummary {
    pub count: u64,
    pub min: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    /// Base64 of the V2 HDR encoding.
    pub hdr: String,
}

impl HistSummary {
    pub fn of(h: &Histogram<u64>) -> Self {
        let mut buf = Vec::new();
        V2Serializer::new()
            .serialize(h, &mut buf)
            .expect("serialising to memory");
        let empty = h.is_empty();
        let q = |x: f64| if empty { 0 } else { h.value_at_quantile(x) };
        Self {
            count: h.len(),
            min: if empty { 0 } else { h.min() },
            mean: if empty { 0.0 } else { h.mean() },
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p999: q(0.999),
            max: if empty { 0 } else { h.max() },
            hdr: STANDARD.encode(buf),
        }
    }

    /// The histogram back from `hdr`.
    pub fn histogram(&self) -> anyhow::Result<Histogram<u64>> {
        if self.hdr.is_empty() {
            return Ok(new_hist());
        }
        let bytes = STANDARD.decode(&self.hdr)?;
        let h: Histogram<u64> = Deserializer::new()
            .deserialize(&mut std::io::Cursor::new(bytes))
            .map_err(|e| anyhow::anyhow!("bad HDR histogram: {e:?}"))?;
        Ok(h)
    }

    /// The sum of several summaries' distributions.
    pub fn merge<'a>(all: impl IntoIterator<Item = &'a HistSummary>) -> anyhow::Result<Self> {
        let mut out = new_hist();
        for s in all {
            out.add(s.histogram()?)
                .map_err(|e| anyhow::anyhow!("merging histograms: {e:?}"))?;
        }
        Ok(Self::of(&out))
    }
}

/// `1234` µs as `1.23ms`, for the summary line.
pub fn fmt_us(us: u64) -> String {
    if us < 1_000 {
        format!("{us}us")
    } else if us < 1_000_000 {
        format!("{:.2}ms", us as f64 / 1e3)
    } else {
        format!("{:.2}s", us as f64 / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_round_trips_and_merges() {
        let r = Recorder::new();
        for i in 1..=1000u64 {
            r.record(i as usize, i);
        }
        let a = HistSummary::of(&r.take());
        assert_eq!(a.count, 1000);
        assert_eq!(a.histogram().unwrap().len(), 1000);
        let m = HistSummary::merge([&a, &a]).unwrap();
        assert_eq!(m.count, 2000);
        assert_eq!(m.max, a.max);
        assert_eq!(HistSummary::of(&r.take()).count, 0);
    }
}
