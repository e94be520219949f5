//! Admin API bodies (contract §6), read by the console and written by the server.

use serde::{Deserialize, Serialize};

/// `GET /admin/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdminStatus {
    pub node: String,
    pub version: String,
    /// `serving`, `draining` or `drained`.
    pub state: String,
    pub connections: u64,
    pub capacity: u64,
    pub fd_limit: u64,
    pub fd_open: u64,
    pub uptime_s: u64,
    /// `up`, `down` or `off` (no Redis: single node).
    pub redis: String,
    /// `up` or `down`.
    pub store: String,
    /// Connections the running drain has yet to close.
    #[serde(default)]
    pub drain_remaining: u64,
}

/// `POST /admin/drain`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrainRequest {
    pub window_s: u64,
}

/// `GET /admin/tuning`: the OS tuning profile against this host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TuningReport {
    pub profile: String,
    pub items: Vec<TuningItem>,
}

/// One setting of the profile: what it wants and how it compares (`op`), what the
/// host has, and whether that satisfies it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TuningItem {
    pub key: String,
    /// The wanted value, e.g. `65535`.
    pub want: String,
    /// How `have` is compared with `want`: `>=`, `<=` or `=`.
    pub op: String,
    pub have: String,
    pub ok: bool,
}

impl TuningReport {
    /// Items that fall short of the profile.
    pub fn short(&self) -> impl Iterator<Item = &TuningItem> {
        self.items.iter().filter(|i| !i.ok)
    }
}

/// What `apply` did with one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApplyResult {
    Applied,
    Already,
    Failed,
}

/// `POST /admin/tuning/apply`: one entry per item, failures reported, never hidden.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApplyReport {
    pub profile: String,
    pub items: Vec<ApplyItem>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApplyItem {
    pub key: String,
    pub result: ApplyResult,
    pub detail: String,
}

/// One row of the admin audit log (`GET /admin/audit`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: i64,
    /// The node the action was made on (nodes may share one store).
    pub node: String,
    /// RFC 3339 UTC with milliseconds.
    pub at: String,
    /// `drain`, `undrain`, `tuning_apply`, `auth_failed`.
    pub action: String,
    /// The request's arguments, as JSON.
    pub args: serde_json::Value,
    /// The outcome, as JSON (status, state, or the apply report).
    pub result: serde_json::Value,
    /// Who: the admin token's fingerprint and the peer address.
    pub caller: String,
}

/// `GET /admin/audit`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditLog {
    pub entries: Vec<AuditEntry>,
}

/// A node as it announces itself in the Redis registry (refreshed every couple of
/// seconds; gone when it stops heart-beating).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: String,
    /// Public listener address (clients, backends, load balancer).
    pub public: String,
    /// Admin listener address (metrics, status, drain).
    pub admin: String,
    pub version: String,
    /// `serving`, `draining` or `drained`.
    pub state: String,
    /// Unix seconds.
    pub started_at: u64,
    pub connections: u64,
}
