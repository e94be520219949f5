//! What a node says about itself (contract §5 and §6): its lifecycle state and the
//! health of its dependencies, as `/readyz`, the admin status object and the
//! registry report them.

use serde::{Deserialize, Serialize};

use crate::wire_enum::wire_enum;

wire_enum! {
    /// Where a node is in its lifecycle. Only a `serving` node takes new clients;
    /// a drain moves it to `draining`, and to `drained` once no connection is left.
    pub enum NodeState {
        Serving = "serving",
        Draining = "draining",
        /// Draining, and no connection is left: safe to stop.
        Drained = "drained",
    }
}

wire_enum! {
    /// The broker's health, reported as `redis`. A single node has no Redis, which
    /// is `off`, not `down`: only `down` makes a node unready.
    pub enum BrokerHealth {
        /// No external broker (single node).
        Off = "off",
        /// Subscriber connected and the end-to-end probe came back in time.
        Up = "up",
        Down = "down",
    }
}

wire_enum! {
    /// The store's health: the last store probe's outcome.
    pub enum StoreHealth {
        Up = "up",
        Down = "down",
    }
}

/// The `GET /readyz` body, whatever the status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readiness {
    pub state: NodeState,
    pub store: StoreHealth,
    pub redis: BrokerHealth,
}

impl Readiness {
    /// Ready for new clients (200): serving, store up, and Redis not `down`. A node
    /// at capacity stays ready; it refuses upgrades instead.
    pub fn is_ready(&self) -> bool {
        self.state == NodeState::Serving
            && self.store == StoreHealth::Up
            && self.redis != BrokerHealth::Down
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Serialises to exactly `wire`, reads back from it, and `as_str` agrees.
    pub(crate) fn pins<T>(pairs: &[(T, &str)], all: &[T])
    where
        T: Copy + PartialEq + std::fmt::Debug + std::fmt::Display + Serialize,
        T: for<'de> Deserialize<'de>,
    {
        assert_eq!(pairs.len(), all.len(), "every variant is pinned");
        for &(v, wire) in pairs {
            assert_eq!(serde_json::to_string(&v).unwrap(), format!("\"{wire}\""));
            assert_eq!(
                serde_json::from_str::<T>(&format!("\"{wire}\"")).unwrap(),
                v
            );
            assert_eq!(v.to_string(), wire);
        }
    }

    #[test]
    fn wire_names_are_todays_strings() {
        use BrokerHealth as B;
        use NodeState as N;
        use StoreHealth as S;
        pins(
            &[
                (N::Serving, "serving"),
                (N::Draining, "draining"),
                (N::Drained, "drained"),
            ],
            N::ALL,
        );
        pins(&[(B::Off, "off"), (B::Up, "up"), (B::Down, "down")], B::ALL);
        pins(&[(S::Up, "up"), (S::Down, "down")], S::ALL);
        assert!(serde_json::from_str::<NodeState>("\"Serving\"").is_err());
    }

    #[test]
    fn the_readyz_body_is_byte_identical_and_ready_follows_section_5() {
        let r = Readiness {
            state: NodeState::Serving,
            store: StoreHealth::Up,
            redis: BrokerHealth::Off,
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"state":"serving","store":"up","redis":"off"}"#
        );
        assert!(r.is_ready());
        assert!(
            Readiness {
                redis: BrokerHealth::Up,
                ..r
            }
            .is_ready()
        );
        for not in [
            Readiness {
                state: NodeState::Draining,
                ..r
            },
            Readiness {
                state: NodeState::Drained,
                ..r
            },
            Readiness {
                store: StoreHealth::Down,
                ..r
            },
            Readiness {
                redis: BrokerHealth::Down,
                ..r
            },
        ] {
            assert!(!not.is_ready(), "{not:?}");
        }
    }
}
