//! The command line, and the pure parts of a run's plan: which users and which
//! (node, source address) each connection gets.

use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "herald-bench",
    version,
    about = "Load generator for Herald nodes"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Connect, hold, publish at a fixed rate, report.
    Run(RunArgs),
    /// Connect once, then raise the rate step by step until p99 exceeds the limit.
    Ramp(RampArgs),
    /// Merge the JSON reports of several shards into one.
    Merge {
        /// Reports written with `--json`.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Where to write the merged report (the summary line always goes to stdout).
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

/// What the publisher sends, and so what each connection expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Per-user notifications: several through `/api/v1/notifications/batch`, or one
    /// per request through `/api/v1/notifications` (`--batch 1`, the way most
    /// backends publish).
    Notify,
    /// Events to each user's personal group `user_<id>`: alone through
    /// `/api/v1/groups/<group>/events`, or several through `/api/v1/events/batch`.
    Event,
    /// Events to one group every connection of this shard subscribes to.
    Broadcast,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Node base URL(s), e.g. http://127.0.0.1:8000; connections go round-robin.
    #[arg(
        long = "node",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8000"
    )]
    pub nodes: Vec<String>,

    /// Nodes no connection dials at first, but `--reconnect` moves connections to
    /// (e.g. the node that takes over while the `--node` ones drain).
    #[arg(long = "standby", value_delimiter = ',')]
    pub standby: Vec<String>,

    /// Where the backend API is called (default: the first node); with several,
    /// requests take turns.
    #[arg(long, value_delimiter = ',')]
    pub api_url: Vec<String>,

    /// Local source addresses to bind client sockets to (round-robin), e.g.
    /// 127.0.0.2,127.0.0.3: each (source, node) pair has ~28k ephemeral ports.
    #[arg(long = "source", value_delimiter = ',')]
    pub sources: Vec<IpAddr>,

    /// WebSocket connections in total, over all shards.
    #[arg(long, short = 'c', default_value_t = 100)]
    pub connections: usize,

    /// Distinct users in total (default: one per connection); connection j of a
    /// shard is user j mod (users of the shard).
    #[arg(long)]
    pub users: Option<usize>,

    /// User id pattern: `{shard}` is this process's shard, `{i}` the index within the
    /// shard, `{g}` the global index.
    #[arg(long, default_value = "u{shard}_{i}")]
    pub user_pattern: String,

    /// This process's part of the users, `i/n` (0-based).
    #[arg(long, default_value = "0/1")]
    pub shard: Shard,

    /// HS256 secret the node verifies client tokens with.
    #[arg(long, env = "HERALD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: String,

    /// Backend API key.
    #[arg(long, env = "HERALD_API_KEY", hide_env_values = true)]
    pub api_key: String,

    /// Publish mode.
    #[arg(long, value_enum, default_value = "notify")]
    pub mode: Mode,

    /// Group for `--mode broadcast` (`{shard}` is replaced by the shard index).
    #[arg(long, default_value = "bench_{shard}")]
    pub group: String,

    /// Messages per second over all shards (each shard sends rate/n); 0 = no publishing.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,

    /// Seconds to publish.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,

    /// Publish exactly one message to each user of this shard (`notify`, `event`), or
    /// one event (`broadcast`), at this shard's rate, instead of rate × `--duration`:
    /// every user's delivery is then checked once.
    #[arg(long)]
    pub once: bool,

    /// After the main phase, one event to this group, which every connection of every
    /// shard subscribes to when it connects (a group that spans every node): shard 0
    /// publishes it, every shard counts it, and `merge` expects it on every
    /// connection. Reported as `broadcast`. Not with `--mode broadcast`.
    #[arg(long)]
    pub also_broadcast: Option<String>,

    /// A directory the shards of one run share: each writes `connected-<i>` once its
    /// connections are up and waits for all the others before holding and publishing,
    /// and `published-<i>` before `--also-broadcast` (so the event finds every
    /// connection subscribed and no shard still settling its own phase). A script can
    /// watch the same files.
    #[arg(long)]
    pub barrier_dir: Option<PathBuf>,

    /// Stop dialing when the box's MemAvailable falls below this many MiB (0: never):
    /// the connections not yet tried fail as `not_dialed`, and the run goes on with
    /// those it holds. Keeps a run sized past the box from driving it out of memory.
    #[arg(long, default_value_t = 0)]
    pub min_available_mib: u64,

    /// Notifications (or user events) per request at most (1000); what falls due
    /// within one 5 ms tick goes out together.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,

    /// Publish requests in flight at most.
    #[arg(long, default_value_t = 32)]
    pub publish_concurrency: usize,

    /// Seconds to hold the connections idle after connecting, before publishing.
    #[arg(long, default_value_t = 0.0)]
    pub hold: f64,

    /// Seconds to wait after publishing for outstanding deliveries.
    #[arg(long, default_value_t = 5.0)]
    pub settle: f64,

    /// Connection attempts in flight at most.
    #[arg(long, default_value_t = 512)]
    pub connect_concurrency: usize,

    /// Connection attempts started per second at most (0 = as fast as allowed).
    #[arg(long, default_value_t = 0.0)]
    pub connect_rate: f64,

    /// Seconds a connection may take to reach `initial_state`.
    #[arg(long, default_value_t = 15.0)]
    pub connect_timeout: f64,

    /// After a 1012 (drain) or 1013 (slow consumer) close, reconnect to the next node
    /// with `after=<newest notification id known>` (from `initial_state` or live
    /// frames; 0 if none); the `missed` frame counts as delivery.
    #[arg(long)]
    pub reconnect: bool,

    /// Connect and count, but publish nothing; listen for `--duration` + `--settle`
    /// after the hold. Implied on shards other than 0 when a broadcast `--group` has
    /// no `{shard}` (one group shared by all shards, published to by shard 0 at the
    /// whole `--rate`); `merge` computes what was expected.
    #[arg(long)]
    pub listen_only: bool,

    /// Server process ids to sample from /proc (repeatable).
    #[arg(long = "server-pid")]
    pub server_pids: Vec<u32>,

    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,

    /// Print no progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Clone, Args)]
pub struct RampArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// First rate tried (messages/s).
    #[arg(long, default_value_t = 1000.0)]
    pub start_rate: f64,
    /// Each next rate is the previous one times this.
    #[arg(long, default_value_t = 1.5)]
    pub factor: f64,
    /// Highest rate tried.
    #[arg(long, default_value_t = 1_000_000.0)]
    pub max_rate: f64,
    /// A step passes while its p99 is under this (ms) and nothing is lost.
    #[arg(long, default_value_t = 50.0)]
    pub p99_limit_ms: f64,
    /// Seconds of publishing at the start rate before the first step, not counted:
    /// a fresh node's first writes also grow its database files.
    #[arg(long, default_value_t = 0.0)]
    pub warmup: f64,
}

/// `i/n`: this process handles the i-th of n parts of the users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (i, n) = s.split_once('/').ok_or("shard must be i/n")?;
        let index: usize = i.trim().parse().map_err(|_| "bad shard index")?;
        let count: usize = n.trim().parse().map_err(|_| "bad shard count")?;
        if count == 0 || index >= count {
            return Err(format!("shard {index}/{count}: need 0 <= i < n"));
        }
        Ok(Self { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Shard {
    /// The contiguous part `[start, end)` of `0..total` this shard owns; the parts of
    /// all shards cover `0..total` exactly once and differ in size by at most one.
    pub fn range(&self, total: usize) -> std::ops::Range<usize> {
        let start = total * self.index / self.count;
        let end = total * (self.index + 1) / self.count;
        start..end
    }
}

/// One user of this shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Global index in `0..users`.
    pub global: usize,
    pub id: String,
}

/// The plan of one process: its users and its connections.
#[derive(Debug, Clone)]
pub struct Plan {
    pub users: Vec<User>,
    /// For each connection of this shard, the index into `users`.
    pub conn_user: Vec<usize>,
}

impl RunArgs {
    pub fn total_users(&self) -> usize {
        self.users.unwrap_or(self.connections).max(1)
    }

    /// One broadcast group shared by every shard (no `{shard}` in its name).
    pub fn shared_group(&self) -> bool {
        self.mode == Mode::Broadcast && !self.group.contains("{shard}")
    }

    /// This shard publishes nothing (see `--listen-only`).
    pub fn listens_only(&self) -> bool {
        self.listen_only || (self.shared_group() && self.shard.index > 0)
    }

    /// The rate this shard publishes at: its part of `--rate`, or all of it when it
    /// alone publishes to a shared group.
    pub fn shard_rate(&self) -> f64 {
        if self.listens_only() {
            0.0
        } else if self.shared_group() {
            self.rate
        } else {
            self.rate / self.shard.count as f64
        }
    }

    pub fn group_name(&self) -> String {
        self.group.replace("{shard}", &self.shard.index.to_string())
    }

    /// The backend API base URLs that publishing requests take turns on.
    pub fn api_bases(&self) -> Vec<String> {
        let bases = if self.api_url.is_empty() {
            self.nodes.iter().take(1).cloned().collect()
        } else {
            self.api_url.clone()
        };
        bases
            .iter()
            .map(|b| b.trim_end_matches('/').to_owned())
            .collect()
    }

    /// Users and connections of this shard.
    pub fn plan(&self) -> Plan {
        let users: Vec<User> = self
            .shard
            .range(self.total_users())
            .enumerate()
            .map(|(i, g)| User {
                global: g,
                id: self
                    .user_pattern
                    .replace("{shard}", &self.shard.index.to_string())
                    .replace("{i}", &i.to_string())
                    .replace("{g}", &g.to_string()),
            })
            .collect();
        let conns = self.shard.range(self.connections).len();
        let conn_user = if users.is_empty() {
            Vec::new()
        } else {
            (0..conns).map(|j| j % users.len()).collect()
        };
        Plan { users, conn_user }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_exactly_once() {
        for total in [0, 1, 7, 100, 19_500] {
            for n in 1..6 {
                let mut next = 0;
                for i in 0..n {
                    let r = Shard { index: i, count: n }.range(total);
                    assert_eq!(r.start, next);
                    next = r.end;
                }
                assert_eq!(next, total);
            }
        }
    }

    #[test]
    fn shard_parses() {
        assert_eq!("1/3".parse(), Ok(Shard { index: 1, count: 3 }));
        assert!("3/3".parse::<Shard>().is_err());
        assert!("1".parse::<Shard>().is_err());
    }
}
