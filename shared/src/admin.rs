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
