//! Number formatting shared by the views and the `status` table.

/// Seconds as `350µs`, `1.2ms`, `1.20s`; `-` when unknown.
pub fn latency(s: Option<f64>) -> String {
    match s {
        None => "-".into(),
        Some(s) if s < 1e-3 => format!("{:.0}µs", s * 1e6),
        Some(s) if s < 1.0 => format!("{:.1}ms", s * 1e3),
        Some(s) => format!("{s:.2}s"),
    }
}

pub fn rate(r: Option<f64>) -> String {
    match r {
        None => "-".into(),
        Some(r) if r >= 10_000.0 => format!("{:.1}k", r / 1e3),
        Some(r) => format!("{r:.0}"),
    }
}

pub fn tuning(short: Option<usize>) -> String {
    match short {
        None => "?".into(),
        Some(0) => "ok".into(),
        Some(n) => format!("{n} short"),
    }
}

pub fn uptime(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}
