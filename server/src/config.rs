//! Flags and environment variables (contract §8), parsed once by clap.
//!
//! Every setting is both a flag and an environment variable, and every default makes
//! a single node work with nothing configured. Secrets are *resolved* (generated or
//! loaded from the data dir) by [`crate::secrets`], not here: this module only reads
//! what the operator said.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use herald_shared::config as names;

use crate::secret::Secret;

/// `herald-server [OPTIONS] [COMMAND]`: with no command, serve.
#[derive(Debug, Parser)]
#[command(
    name = "herald-server",
    version,
    about = "Herald real-time notification node"
)]
pub struct Cli {
    /// The node's settings (flags and environment variables).
    #[command(flatten)]
    pub config: Config,
    /// What to do; none means serve.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands of `herald-server`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node (the default).
    Serve,
    /// Print a client JWT signed with the configured secret.
    Token {
        /// The user id (the token's `sub`).
        #[arg(long)]
        user: String,
        /// Extra groups the user may subscribe to, comma separated.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
}

/// Everything a node needs to know before it starts.
///
/// Its `Debug` form shows no secret: the keys and tokens, and the database and
/// Redis URLs (which may carry a password), are [`Secret`]s.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Public listener: WebSockets, backend API, health.
    #[arg(long, env = names::LISTEN, default_value = names::DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// Admin listener: metrics, status, drain, tuning.
    #[arg(long, env = names::ADMIN_LISTEN, default_value = names::DEFAULT_ADMIN_LISTEN)]
    pub admin_listen: SocketAddr,

    /// Node id shown everywhere (default: host name plus a short random suffix).
    #[arg(long, env = names::NODE_ID)]
    pub node_id: Option<String>,

    /// `sqlite://...` or `postgres://...` (default: SQLite in the data dir).
    #[arg(long, env = names::DATABASE_URL, hide_env_values = true)]
    pub database_url: Option<Secret>,

    /// Redis for cluster mode; unset means the in-process broker (single node).
    #[arg(long, env = names::REDIS_URL, hide_env_values = true)]
    pub redis_url: Option<Secret>,

    /// TLS files for a `rediss://` `REDIS_URL`: CA, client certificate and key.
    #[command(flatten)]
    pub redis_tls: crate::redis_client::RedisTls,

    /// Key prefix for everything Herald keeps in Redis (channels, registry, presence).
    #[arg(long, env = "HERALD_REDIS_PREFIX", default_value = "herald")]
    pub redis_prefix: String,

    /// channels_redis prefix whose pub/sub-layer group messages become events
    /// (Django interop); empty turns interop off.
    #[arg(long, env = "HERALD_CHANNELS_PREFIX", default_value = "asgi")]
    pub channels_prefix: String,

    /// Key that signs (HMAC-SHA256) every message this node publishes on Redis, and
    /// without whose signature it drops what it reads there; the same on every
    /// node, at least 32 bytes. Unset: messages go unsigned (PROTOCOL.md 7.3).
    #[arg(long, env = "HERALD_BROKER_KEY", hide_env_values = true)]
    pub broker_key: Option<Secret>,

    /// Public address announced in the registry (default: the bound listener).
    #[arg(long, env = "HERALD_ADVERTISE_PUBLIC")]
    pub advertise_public: Option<String>,

    /// Admin address announced in the registry (default: the bound admin listener).
    #[arg(long, env = "HERALD_ADVERTISE_ADMIN")]
    pub advertise_admin: Option<String>,

    /// HS256 secret for client tokens (generated on a single node when unset).
    #[arg(long, env = names::JWT_SECRET, hide_env_values = true)]
    pub jwt_secret: Option<Secret>,

    /// The `aud` every client token must carry (unset: `aud` is not checked).
    #[arg(long, env = names::JWT_AUDIENCE)]
    pub jwt_audience: Option<String>,

    /// The `iss` every client token must carry (unset: `iss` is not checked).
    #[arg(long, env = names::JWT_ISSUER)]
    pub jwt_issuer: Option<String>,

    /// Bearer key for the backend API (generated on a single node when unset).
    #[arg(long, env = names::API_KEY, hide_env_values = true)]
    pub api_key: Option<Secret>,

    /// Bearer token for the admin API (generated on a single node when unset).
    #[arg(long, env = names::ADMIN_TOKEN, hide_env_values = true)]
    pub admin_token: Option<Secret>,

    /// Where the embedded SQLite file and generated secrets live.
    #[arg(long, env = names::DATA_DIR, default_value = names::DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,

    /// Allowed `Origin`s for upgrades, comma separated; empty allows any origin.
    #[arg(long, env = "HERALD_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Most connections this node accepts (default: the open-file limit minus a reserve).
    #[arg(long, env = "HERALD_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Most connections one user may hold on this node, WebSockets and SSE streams
    /// together; one more is refused with 429, so one token cannot fill a node.
    #[arg(long, env = "HERALD_MAX_CONNECTIONS_PER_USER", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_user: u32,

    /// File descriptors kept back from connections for the store, Redis, listeners, logs.
    #[arg(long, env = "HERALD_FD_RESERVE", default_value_t = 256)]
    pub fd_reserve: usize,

    /// Frames a connection's outbound queue may hold before it is closed with 1013.
    #[arg(long, env = "HERALD_QUEUE_CAPACITY", default_value_t = 1500)]
    pub queue_capacity: usize,

    /// Age (ms) the oldest queued frame may reach before the connection is closed with 1013.
    #[arg(long, env = "HERALD_QUEUE_EXPIRY_MS", default_value_t = 10_000)]
    pub queue_expiry_ms: u64,

    /// Largest client text frame in bytes; larger closes with 1009.
    #[arg(long, env = "HERALD_MAX_FRAME_BYTES", default_value_t = 64 * 1024)]
    pub max_frame_bytes: usize,

    /// Largest notification message or event payload in bytes; larger is a 413.
    #[arg(long, env = "HERALD_MAX_MESSAGE_BYTES", default_value_t = 16 * 1024)]
    pub max_message_bytes: usize,

    /// Client frames allowed per second (token bucket rate).
    #[arg(long, env = "HERALD_CLIENT_RATE", default_value_t = 20)]
    pub client_rate: u32,

    /// Client frames allowed in a burst (token bucket size).
    #[arg(long, env = "HERALD_CLIENT_BURST", default_value_t = 40)]
    pub client_burst: u32,

    /// Store writes (`mark_read`, `mark_all_read`) one user may make a second on this
    /// node, across its connections (a bucket of as many); more get `rate_limited`.
    #[arg(long, env = "HERALD_CLIENT_WRITE_RATE", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub client_write_rate: u32,

    /// Seconds between server pings; a client silent for three of these is dropped.
    /// 1 to 3600: a ping time far in the future overflows the clock.
    #[arg(long, env = "HERALD_HEARTBEAT_S", default_value_t = 25,
          value_parser = clap::value_parser!(u64).range(1..=MAX_HEARTBEAT_S))]
    pub heartbeat_s: u64,

    /// Require the admin token for `/metrics` too (default: open to scrapers).
    #[arg(long, env = "HERALD_METRICS_REQUIRE_TOKEN", default_value_t = false)]
    pub metrics_require_token: bool,

    /// Drain window used on SIGTERM, in seconds.
    #[arg(long, env = "HERALD_SHUTDOWN_DRAIN_S", default_value_t = 5)]
    pub shutdown_drain_s: u64,

    /// OS tuning profile file (default: the one built in, ops/tuning/profile.conf).
    #[arg(long, env = "HERALD_TUNING_PROFILE")]
    pub tuning_profile: Option<PathBuf>,

    /// Where sysctls are read and written (another root stands in for tests).
    #[arg(long, env = "HERALD_SYSCTL_ROOT", default_value = "/proc/sys")]
    pub sysctl_root: PathBuf,

    /// Serve the live page at `/demo/` (`true` or `false`; default: on for a single
    /// node, off in cluster mode, where it must be asked for).
    #[arg(long, env = "HERALD_DEMO")]
    pub demo: Option<bool>,

    /// Database pool size.
    #[arg(long, env = "HERALD_DB_POOL", default_value_t = 16)]
    pub db_pool: u32,

    /// Seconds a connection has to send a complete request head, counted from the
    /// accept or from the end of its previous response (so it is also the keep-alive
    /// idle timeout); then it is closed. Idle and one-byte-a-minute connections would
    /// otherwise hold their descriptors for ever.
    #[arg(long, env = "HERALD_HEADER_TIMEOUT_S",
          default_value_t = herald_shared::config::DEFAULT_HEADER_TIMEOUT_S,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub header_timeout_s: u64,

    /// Connections on the public listener that are not sessions (yet): before their
    /// upgrade or SSE stream, or plain HTTP. Over it a new connection gets 503 and is
    /// closed. They share the descriptors left after the fd reserve with the
    /// sessions (default: a quarter of the open-file limit, at most 1024).
    #[arg(long, env = "HERALD_MAX_PENDING_CONNECTIONS",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_pending_connections: Option<u64>,

    /// Threads the `herald-server` binary runs its tokio workers on (default: one per
    /// core). One worker spends less CPU per request on a node that mostly waits
    /// between requests (no wake-ups handing work to a second thread), but caps the
    /// node at one core for connect bursts and broadcasts (bench/RESULTS.md, section
    /// 4). An embedding host runs its own runtime, and this is not read there.
    #[arg(long, env = "HERALD_WORKER_THREADS",
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: Option<u16>,

    /// How the `herald-server` binary writes its logs to stderr: `text` (coloured
    /// only on a terminal) or `json` (one object per line, for log shippers).
    #[arg(long, env = "HERALD_LOG_FORMAT", default_value = "text",
          value_parser = LogFormat::parse)]
    pub log_format: LogFormat,
}

/// The format of the binary's log lines (`HERALD_LOG_FORMAT`). An embedding host
/// keeps its own logging: this only tells `herald-server` which subscriber to install.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Lines for people: time, level, target, message and fields. Coloured only
    /// when stderr is a terminal and `NO_COLOR` is unset, so files and journald
    /// get no escape codes.
    Text,
    /// One JSON object per line, for log shippers: `node`, `timestamp`, `level`,
    /// `target`, `message` and the event's fields, at the top level.
    Json,
}

impl LogFormat {
    /// Every format, as written in `HERALD_LOG_FORMAT`.
    pub const ALL: [(&'static str, LogFormat); 2] = [("text", Self::Text), ("json", Self::Json)];

    /// Parses `text` or `json`; anything else names the setting and its values.
    pub fn parse(s: &str) -> Result<Self, String> {
        Self::ALL
            .iter()
            .find(|(name, _)| *name == s)
            .map(|(_, f)| *f)
            .ok_or_else(|| format!("HERALD_LOG_FORMAT must be `text` or `json` (got {s:?})"))
    }
}

/// Default node id: host name plus a short random suffix, so two processes on one
/// host (a restart overlapping its predecessor) are told apart.
pub fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "herald".to_owned());
    format!("{host}-{:04x}", rand::random::<u16>())
}

/// The longest heartbeat: `Instant + Duration` panics on overflow, and no client
/// needs a ping less often than once an hour.
pub const MAX_HEARTBEAT_S: u64 = 3600;

impl Config {
    /// Refuses what flags cannot (a `Config` built in code, by an embedding host):
    /// a heartbeat outside 1 to [`MAX_HEARTBEAT_S`] seconds.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=MAX_HEARTBEAT_S).contains(&self.heartbeat_s) {
            return Err(format!(
                "HERALD_HEARTBEAT_S must be 1 to {MAX_HEARTBEAT_S} seconds (got {})",
                self.heartbeat_s
            ));
        }
        Ok(())
    }

    /// Parses a config from flags alone (environment variables still apply), as tests do.
    pub fn from_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            config: Config,
        }
        let args = std::iter::once(std::ffi::OsString::from("herald-server"))
            .chain(args.into_iter().map(Into::into));
        Only::try_parse_from(args).map(|o| o.config)
    }

    /// The defaults of a single node, as from code: no flag and no environment
    /// variable is read (what an embedding host starts from; see [`crate::Herald`]).
    pub fn defaults() -> Self {
        use clap::{CommandFactory, FromArgMatches};
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            config: Config,
        }
        let cmd = Only::command().mut_args(|a| a.env(None::<&str>));
        let matches = cmd
            .try_get_matches_from(["herald"])
            .expect("the defaults parse");
        Only::from_arg_matches(&matches)
            .expect("the defaults parse")
            .config
    }

    /// `HERALD_QUEUE_EXPIRY_MS` as a duration.
    pub fn queue_expiry(&self) -> Duration {
        Duration::from_millis(self.queue_expiry_ms)
    }

    /// `HERALD_HEARTBEAT_S` as a duration.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.heartbeat_s)
    }

    /// `HERALD_HEADER_TIMEOUT_S` as a duration.
    pub fn header_timeout(&self) -> Duration {
        Duration::from_secs(self.header_timeout_s)
    }

    /// The store URL, defaulting to a SQLite file in the data dir.
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.expose().to_owned(),
            None => format!("sqlite://{}/herald.db", self.data_dir.display()),
        }
    }

    /// Whether the node serves the live page: unless told, only a single node does.
    pub fn demo_enabled(&self) -> bool {
        self.demo.unwrap_or(!self.cluster_mode())
    }

    /// The node id: the configured one, or (chosen once, and kept in the config so
    /// the logs and the node agree) [`default_node_id`].
    pub fn resolve_node_id(&mut self) -> &str {
        self.node_id.get_or_insert_with(default_node_id)
    }

    /// Cluster mode: Redis between nodes, secrets must be given, not generated.
    pub fn cluster_mode(&self) -> bool {
        self.redis_url.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::Config;

    #[test]
    fn the_live_page_is_on_alone_and_off_in_a_cluster_unless_asked() {
        let cfg = |args: &[&str]| Config::from_args(args.iter().copied()).unwrap();
        assert!(cfg(&[]).demo_enabled());
        assert!(!cfg(&["--demo", "false"]).demo_enabled());
        let cluster = ["--redis-url", "redis://127.0.0.1:6379"];
        assert!(!cfg(&cluster).demo_enabled());
        assert!(cfg(&[&cluster[..], &["--demo", "true"]].concat()).demo_enabled());
    }

    #[test]
    fn log_format_is_text_or_json_and_names_itself_when_wrong() {
        use super::LogFormat;
        let cfg = |args: &[&str]| Config::from_args(args.iter().copied());
        assert_eq!(cfg(&[]).unwrap().log_format, LogFormat::Text);
        let json = cfg(&["--log-format", "json"]).unwrap();
        assert_eq!(json.log_format, LogFormat::Json);
        let err = cfg(&["--log-format", "xml"]).unwrap_err().to_string();
        assert!(
            err.contains("HERALD_LOG_FORMAT must be `text` or `json` (got \"xml\")"),
            "{err}"
        );
    }

    /// Every secret a config can hold, given as flags, is missing from its `Debug`
    /// form (and so from the secrets resolved from it), while the rest still shows.
    #[test]
    fn debug_shows_no_secret() {
        let secrets = [
            "jwt-secret-4f9a2c7e-at-least-32-bytes-long",
            "api-key-81b3d5",
            "admin-token-c60e19",
            "broker-key-7d24aa-at-least-32-bytes-long",
            "db-password-5e8f01",
            "redis-password-93c4b2",
        ];
        let db = format!("postgres://herald:{}@db.internal:5432/herald", secrets[4]);
        let redis = format!("rediss://default:{}@redis.internal:6380", secrets[5]);
        let cfg = Config::from_args([
            "--jwt-secret",
            secrets[0],
            "--api-key",
            secrets[1],
            "--admin-token",
            secrets[2],
            "--broker-key",
            secrets[3],
            "--database-url",
            &db,
            "--redis-url",
            &redis,
            "--redis-prefix",
            "visible-prefix",
        ])
        .unwrap();
        let resolved = crate::secrets::resolve(&cfg).unwrap();
        for shown in [
            format!("{cfg:?}"),
            format!("{cfg:#?}"),
            format!("{resolved:?}"),
        ] {
            for secret in secrets {
                assert!(!shown.contains(secret), "{secret} in {shown}");
            }
            assert!(shown.contains("[redacted]"), "{shown}");
        }
        assert!(format!("{cfg:?}").contains("visible-prefix"));
        assert_eq!(cfg.database_url(), db, "the value itself is intact");
    }

    #[test]
    fn a_resolved_node_id_is_kept() {
        let mut cfg = Config::from_args(std::iter::empty::<&str>()).unwrap();
        let id = cfg.resolve_node_id().to_owned();
        assert_eq!(cfg.resolve_node_id(), id);
        assert_eq!(cfg.node_id.as_deref(), Some(id.as_str()));
    }

    #[test]
    fn defaults_read_no_environment() {
        // SAFETY: this test alone touches HERALD_HEARTBEAT_S in this process.
        unsafe { std::env::set_var("HERALD_HEARTBEAT_S", "7") };
        let from_env = Config::from_args(std::iter::empty::<&str>()).unwrap();
        let defaults = Config::defaults();
        unsafe { std::env::remove_var("HERALD_HEARTBEAT_S") };
        assert_eq!(from_env.heartbeat_s, 7, "flags and environment apply");
        assert_eq!(defaults.heartbeat_s, 25, "defaults ignore the environment");
        assert_eq!(defaults.listen.to_string(), "127.0.0.1:8000");
    }
}
