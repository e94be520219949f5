//! Prometheus text → [`Metrics`]: the figures the console shows, nothing else.
//!
//! Parsed with prometheus-parse, whose 0.2.5 quirks matter here: histogram
//! `_sum`/`_count` come out as untyped samples (ignored; the `+Inf` bucket is the
//! count), and the buckets of one histogram are grouped into one sample.

use prometheus_parse::{Scrape, Value};

/// One scrape of a node's `/metrics`. Counters are totals since the node started;
/// rates come from deltas between two scrapes (see [`crate::state`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    pub connections: u64,
    pub capacity: u64,
    /// `herald_messages_delivered_total`.
    pub delivered: f64,
    /// `herald_delivery_latency_seconds` as cumulative `(le, count)`, ascending,
    /// ending with `+Inf`.
    pub latency: Vec<(f64, f64)>,
    pub queue_depth: u64,
    pub queue_capacity: u64,
    pub slow_closes: f64,
    pub fd_open: u64,
    pub fd_limit: u64,
    pub draining: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    #[error("unparseable metrics: {0}")]
    Parse(#[from] std::io::Error),
}

fn num(v: &Value) -> Option<f64> {
    match v {
        Value::Counter(x) | Value::Gauge(x) | Value::Untyped(x) => Some(*x),
        _ => None,
    }
}

/// Parses a `/metrics` body. Unknown metrics are ignored; missing ones stay 0.
pub fn parse(text: &str) -> Result<Metrics, ScrapeError> {
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))?;
    let mut m = Metrics::default();
    for s in &scrape.samples {
        let n = num(&s.value).unwrap_or(0.0);
        match s.metric.as_str() {
            "herald_connections" => m.connections = n as u64,
            "herald_connection_capacity" => m.capacity = n as u64,
            "herald_messages_delivered_total" | "herald_messages_delivered" => m.delivered = n,
            "herald_slow_consumer_disconnects_total" | "herald_slow_consumer_disconnects" => {
                m.slow_closes = n
            }
            "herald_queue_depth" => m.queue_depth = n as u64,
            "herald_queue_capacity" => m.queue_capacity = n as u64,
            "herald_fd_open" => m.fd_open = n as u64,
            "herald_fd_limit" => m.fd_limit = n as u64,
            "herald_draining" => m.draining = n > 0.0,
            "herald_delivery_latency_seconds" => {
                if let Value::Histogram(buckets) = &s.value {
                    let mut b: Vec<(f64, f64)> =
                        buckets.iter().map(|h| (h.less_than, h.count)).collect();
                    b.sort_by(|x, y| x.0.total_cmp(&y.0));
                    m.latency = b;
                }
            }
            _ => {}
        }
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A typed exposition in prometheus-client's text format yields every figure.
    #[test]
    fn parses_the_figures_and_buckets() {
        let text = "\
# TYPE herald_connections gauge
herald_connections 3
# TYPE herald_connection_capacity gauge
herald_connection_capacity 1000
# TYPE herald_messages_delivered counter
herald_messages_delivered_total 42
# TYPE herald_draining gauge
herald_draining 1
# TYPE herald_delivery_latency_seconds histogram
herald_delivery_latency_seconds_sum 0.5
herald_delivery_latency_seconds_count 4
herald_delivery_latency_seconds_bucket{le=\"0.001\"} 1
herald_delivery_latency_seconds_bucket{le=\"0.01\"} 3
herald_delivery_latency_seconds_bucket{le=\"+Inf\"} 4
";
        let m = parse(text).unwrap();
        assert_eq!(m.connections, 3);
        assert_eq!(m.capacity, 1000);
        assert_eq!(m.delivered, 42.0);
        assert!(m.draining);
        assert_eq!(m.latency.len(), 3);
        assert_eq!(m.latency[1], (0.01, 3.0));
        assert!(m.latency[2].0.is_infinite());
    }
}
