//! Admin API bodies (contract §6), read by the console and written by the server.

use serde::{Deserialize, Serialize};

use crate::health::{BrokerHealth, NodeState, StoreHealth};
use crate::seconds::Seconds;
use crate::wire_enum::wire_enum;

/// `GET /admin/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdminStatus {
    pub node: String,
    pub version: String,
    pub state: NodeState,
    pub connections: u64,
    pub capacity: u64,
    pub fd_limit: u64,
    pub fd_open: u64,
    pub uptime_s: u64,
    pub redis: BrokerHealth,
    pub store: StoreHealth,
    /// Connections the running drain has yet to close.
    #[serde(default)]
    pub drain_remaining: u64,
}

/// `POST /admin/drain`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrainRequest {
    /// Seconds, fractions allowed ([`Seconds`]); the node allows 0 to 3600.
    pub window_s: Seconds,
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
    /// How `have` is compared with `want`.
    pub op: TuningOp,
    pub have: String,
    pub ok: bool,
}

impl TuningReport {
    /// Items that fall short of the profile.
    pub fn short(&self) -> impl Iterator<Item = &TuningItem> {
        self.items.iter().filter(|i| !i.ok)
    }
}

wire_enum! {
    /// How a tuning item compares the host's value with the wanted one. The
    /// profile file writes it the same way; `ALL` lists `=` last, so a parser that
    /// tries them in turn never reads `>=` as `=`.
    pub enum TuningOp {
        /// At least the wanted number.
        AtLeast = ">=",
        /// At most the wanted number.
        AtMost = "<=",
        /// Exactly the wanted numbers (a list compares as a whole).
        Exactly = "=",
    }
}

wire_enum! {
    /// What `apply` did with one item.
    pub enum ApplyResult {
        /// The host already satisfied the item; nothing was written.
        Already = "already",
        /// Written, and the host now satisfies the item.
        Applied = "applied",
        /// Not satisfied: the detail says why.
        Failed = "failed",
    }
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
    pub state: NodeState,
    /// Unix seconds.
    pub started_at: u64,
    pub connections: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::tests::pins;

    #[test]
    fn wire_names_are_todays_strings() {
        use ApplyResult as A;
        use TuningOp as O;
        pins(
            &[(O::AtLeast, ">="), (O::AtMost, "<="), (O::Exactly, "=")],
            O::ALL,
        );
        pins(
            &[
                (A::Already, "already"),
                (A::Applied, "applied"),
                (A::Failed, "failed"),
            ],
            A::ALL,
        );
    }

    #[test]
    fn the_status_object_reads_and_writes_the_contracts_example() {
        let text = r#"{"node":"vm-fcd6","version":"0.1.0","state":"serving","connections":3,"capacity":19744,"fd_limit":20000,"fd_open":23,"uptime_s":41,"redis":"off","store":"up","drain_remaining":0}"#;
        let s: AdminStatus = serde_json::from_str(text).unwrap();
        assert_eq!(
            (s.state, s.redis, s.store),
            (NodeState::Serving, BrokerHealth::Off, StoreHealth::Up)
        );
        assert_eq!(serde_json::to_string(&s).unwrap(), text);
    }

    #[test]
    fn tuning_and_registry_bodies_keep_their_strings() {
        let item =
            r#"{"key":"net.core.somaxconn","want":"65535","op":">=","have":"4096","ok":false}"#;
        let i: TuningItem = serde_json::from_str(item).unwrap();
        assert_eq!(i.op, TuningOp::AtLeast);
        assert_eq!(serde_json::to_string(&i).unwrap(), item);
        let applied = r#"{"key":"nofile","result":"failed","detail":"x"}"#;
        let a: ApplyItem = serde_json::from_str(applied).unwrap();
        assert_eq!(a.result, ApplyResult::Failed);
        assert_eq!(serde_json::to_string(&a).unwrap(), applied);
        let info = r#"{"id":"n1","public":"127.0.0.1:8080","admin":"127.0.0.1:9091","version":"0.1.0","state":"draining","started_at":1,"connections":2}"#;
        let n: NodeInfo = serde_json::from_str(info).unwrap();
        assert_eq!(n.state, NodeState::Draining);
        assert_eq!(serde_json::to_string(&n).unwrap(), info);
    }
}
