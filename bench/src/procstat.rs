//! RSS and CPU time of processes, from `/proc/<pid>/status` and `/proc/<pid>/stat`,
//! and the box's available memory, from `/proc/meminfo`.

use serde::{Deserialize, Serialize};

/// Clock ticks per second of `/proc/<pid>/stat` times.
fn ticks_per_s() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// One process at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcSample {
    /// Resident set size (VmRSS), KiB.
    pub rss_kib: u64,
    /// User plus system CPU time consumed so far, seconds.
    pub cpu_s: f64,
}

/// Reads `pid` now; `None` if it is gone or unreadable.
pub fn sample(pid: u32) -> Option<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(ProcSample {
        rss_kib: parse_rss_kib(&status)?,
        cpu_s: parse_cpu_ticks(&stat)? as f64 / ticks_per_s(),
    })
}

/// `VmRSS:    1234 kB` → 1234.
pub fn parse_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// utime + stime (fields 14 and 15) of a stat line; the command name may hold spaces
/// and parentheses, so fields are counted after the last `)`.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14 → index 11.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The box's `MemAvailable` now, KiB (`None` if /proc/meminfo cannot be read).
pub fn mem_available_kib() -> Option<u64> {
    parse_mem_available_kib(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

/// `MemAvailable:   1234 kB` → 1234.
pub fn parse_mem_available_kib(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// A server process sampled at the run's milestones.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerProc {
    pub pid: u32,
    /// Before the first connection.
    pub before: Option<ProcSample>,
    /// After every connection reached `initial_state` (and the idle hold).
    pub connected: Option<ProcSample>,
    /// After publishing and settling, connections still open.
    pub after: Option<ProcSample>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        assert_eq!(parse_rss_kib("Name:\tx\nVmRSS:\t   5120 kB\n"), Some(5120));
        let stat = "42 (my (odd) prog) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15";
        assert_eq!(parse_cpu_ticks(stat), Some(11 + 12));
        let meminfo = "MemTotal:       24000000 kB\nMemFree: 1 kB\nMemAvailable:   20971520 kB\n";
        assert_eq!(parse_mem_available_kib(meminfo), Some(20_971_520));
        assert_eq!(parse_mem_available_kib("MemTotal: 5 kB\n"), None);
        assert!(mem_available_kib().unwrap() > 0);
        let me = sample(std::process::id()).unwrap();
        assert!(me.rss_kib > 0);
    }
}
