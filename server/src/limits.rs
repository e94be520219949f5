//! The process's file-descriptor budget, which bounds how many sockets a node holds.
//!
//! Every WebSocket is one descriptor. A node that runs out accepts nothing at all
//! (not even health checks), so it refuses upgrades with 503 well before the limit:
//! capacity is the soft RLIMIT_NOFILE minus a reserve for the store pool, Redis,
//! listeners and logs, or the configured maximum if that is lower.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::lock::lock;

/// The soft open-file limit (what `accept` runs into).
pub fn fd_limit() -> u64 {
    rlimit::getrlimit(rlimit::Resource::NOFILE)
        .map(|(soft, _hard)| soft)
        .unwrap_or(1024)
}

/// How old a count of open descriptors [`fd_open`] may answer with.
const FD_COUNT_MAX_AGE: Duration = Duration::from_secs(2);

/// Descriptors open in this process (entries of `/proc/self/fd`), counted at most
/// [`FD_COUNT_MAX_AGE`] ago. The kernel lists that directory entry by entry, so a
/// count costs milliseconds on a node holding its 19,000 sockets, and every
/// `/metrics` scrape and `/admin/status` asks for it: a console polling 52 such nodes
/// every second, on a box busy holding a million connections, spent most of each
/// node's answer counting, and the answers missed the console's timeout. For a gauge
/// of descriptor headroom, a count two seconds old says the same. The count is the
/// process's, so the cache is too (several embedded nodes share it); concurrent
/// callers wait for one count instead of each making their own.
pub fn fd_open() -> u64 {
    static LAST: Mutex<Option<(Instant, u64)>> = Mutex::new(None);
    let mut last = lock(&LAST);
    if let Some((at, n)) = *last
        && at.elapsed() < FD_COUNT_MAX_AGE
    {
        return n;
    }
    let n = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    *last = Some((Instant::now(), n));
    n
}

/// The capacity `cfg` leaves a node with `fd_limit` descriptors: sessions may use
/// every descriptor but the reserve ([`connection_budget`]).
pub fn capacity_for(cfg: &crate::config::Config, fd_limit: u64) -> usize {
    capacity(fd_limit, cfg.fd_reserve, cfg.max_connections)
}

/// The descriptors that client connections of any kind may hold: the soft limit
/// minus the reserve. Sessions and pending connections (not sessions yet) share it,
/// so together they always leave the reserve to the store, Redis and the logs,
/// without keeping a pending bound's worth of descriptors idle at capacity.
pub fn connection_budget(cfg: &crate::config::Config, fd_limit: u64) -> usize {
    capacity(fd_limit, cfg.fd_reserve, None)
}

/// How many connections of the public listener may be pending (not sessions):
/// `HERALD_MAX_PENDING_CONNECTIONS`, else a quarter of `fd_limit`, at most 1024,
/// so a small limit (a shell's 1024) still leaves most descriptors to sessions.
pub fn pending_bound(cfg: &crate::config::Config, fd_limit: u64) -> usize {
    let bound = cfg
        .max_pending_connections
        .unwrap_or((fd_limit / 4).min(1024));
    usize::try_from(bound).unwrap_or(usize::MAX).max(1)
}

/// How many connections a node with `fd_limit` descriptors may accept.
pub fn capacity(fd_limit: u64, reserve: usize, configured: Option<usize>) -> usize {
    let by_fds = (fd_limit as usize).saturating_sub(reserve);
    configured.map_or(by_fds, |c| c.min(by_fds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_keeps_a_reserve() {
        assert_eq!(capacity(20_000, 256, None), 19_744);
        assert_eq!(capacity(20_000, 256, Some(5_000)), 5_000);
        assert_eq!(capacity(20_000, 256, Some(50_000)), 19_744);
        assert_eq!(capacity(100, 256, None), 0);
    }

    /// Sessions and pending connections share one budget: the pending bound is
    /// not kept back from capacity, and a configured maximum limits sessions only.
    #[test]
    fn sessions_and_pending_connections_share_the_budget() {
        let mut cfg = crate::config::Config::defaults();
        assert_eq!(pending_bound(&cfg, 20_000), 1024);
        assert_eq!(capacity_for(&cfg, 20_000), 20_000 - 256);
        assert_eq!(connection_budget(&cfg, 20_000), 20_000 - 256);
        // A shell's usual limit: a quarter may be pending.
        assert_eq!(pending_bound(&cfg, 1024), 256);
        assert_eq!(capacity_for(&cfg, 1024), 768);
        cfg.max_connections = Some(5_000);
        assert_eq!(capacity_for(&cfg, 20_000), 5_000);
        assert_eq!(connection_budget(&cfg, 20_000), 20_000 - 256);
    }

    #[test]
    fn reads_this_process_within_the_max_age() {
        assert!(fd_limit() >= 64);
        let open = fd_open();
        assert!(open > 2, "stdin, stdout, stderr at least");
        let files: Vec<_> = (0..20)
            .map(|_| std::fs::File::open("/proc/self/status").unwrap())
            .collect();
        std::thread::sleep(FD_COUNT_MAX_AGE + Duration::from_millis(100));
        // Other tests of this binary open and close files meanwhile, but not 20 of
        // them for good.
        assert!(
            fd_open() >= open + 10,
            "{} after opening 20 more than {open}",
            fd_open()
        );
        drop(files);
    }
}
