//! WebSocket frames (contract §3) and the notification object they carry.
//!
//! Frames are JSON text, tagged by `"type"`. The server side serialises through
//! [`ServerFrame`] or, on the hot path, through the borrowing [`encode_notification`]
//! so a stored notification is never cloned just to be framed. Clients (tests, bench,
//! console) deserialise [`ServerFrame`] and send [`ClientFrame`].

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A stored notification, exactly as clients and backends see it.
///
/// `message` is kept as raw JSON text: the node never needs to look inside it, so it
/// is validated once when the backend posts it and then copied as bytes, never
/// re-parsed or re-ordered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// Positive, increasing in creation order across the whole store.
    pub id: i64,
    pub user: String,
    pub message: RawJson,
    /// RFC 3339 UTC with milliseconds, e.g. `2026-11-25T19:21:08.123Z`.
    pub created_at: String,
    pub read: bool,
}

/// JSON text with value semantics: cloned and compared as its bytes.
///
/// Messages and payloads are opaque to Herald. The node takes them from the backend
/// as `RawValue` (exact bytes, see [`crate::api`]) and from the store as text, and
/// only ever copies them.
///
/// *Deserialising* a `RawJson` (what clients do when they parse a [`ServerFrame`])
/// goes through `serde_json::Value` with key order preserved, because `RawValue`
/// cannot be read from inside an internally tagged enum. A client parsing frames
/// with this crate therefore sees compacted text; the bytes on the wire are exact.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct RawJson(pub Box<RawValue>);

impl<'de> Deserialize<'de> for RawJson {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        let text = serde_json::to_string(&value).map_err(serde::de::Error::custom)?;
        RawValue::from_string(text)
            .map(Self)
            .map_err(serde::de::Error::custom)
    }
}

impl RawJson {
    /// Validates `text` as JSON.
    pub fn parse(text: impl Into<String>) -> Result<Self, serde_json::Error> {
        RawValue::from_string(text.into()).map(Self)
    }

    pub fn get(&self) -> &str {
        self.0.get()
    }
}

impl Clone for RawJson {
    fn clone(&self) -> Self {
        Self(self.0.to_owned())
    }
}

impl PartialEq for RawJson {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}

/// The machine-readable `code` of an `error` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Forbidden,
    NotFound,
    RateLimited,
    Internal,
}

/// Every frame the node sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Welcome {
        user: String,
        node: String,
        connection: String,
        heartbeat_s: u64,
    },
    InitialState {
        unread_count: i64,
        notifications: Vec<Notification>,
    },
    Missed {
        notifications: Vec<Notification>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        truncated: bool,
    },
    Notification {
        notification: Notification,
    },
    Event {
        group: String,
        payload: RawJson,
    },
    Pong,
    MarkedRead {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ids: Option<Vec<i64>>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        all: bool,
        unread_count: i64,
    },
    Subscribed {
        group: String,
    },
    Unsubscribed {
        group: String,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
    /// The last event of a Server-Sent Events stream, which has no close frame: the
    /// code and reason a WebSocket would have closed with (contract §3.10).
    Close {
        code: u16,
        reason: String,
    },
}

impl ServerFrame {
    /// The frame's `"type"`, which also names its Server-Sent Event.
    pub fn kind(&self) -> &'static str {
        match self {
            ServerFrame::Welcome { .. } => "welcome",
            ServerFrame::InitialState { .. } => "initial_state",
            ServerFrame::Missed { .. } => "missed",
            ServerFrame::Notification { .. } => "notification",
            ServerFrame::Event { .. } => "event",
            ServerFrame::Pong => "pong",
            ServerFrame::MarkedRead { .. } => "marked_read",
            ServerFrame::Subscribed { .. } => "subscribed",
            ServerFrame::Unsubscribed { .. } => "unsubscribed",
            ServerFrame::Error { .. } => "error",
            ServerFrame::Close { .. } => "close",
        }
    }

    /// The newest notification id the frame carries (opening frames and live
    /// notifications): what a client resumes after.
    pub fn newest_id(&self) -> Option<i64> {
        match self {
            ServerFrame::InitialState { notifications, .. }
            | ServerFrame::Missed { notifications, .. } => notifications.iter().map(|n| n.id).max(),
            ServerFrame::Notification { notification } => Some(notification.id),
            _ => None,
        }
    }

    /// Serialises the frame to JSON text. Frames are plain data, so this cannot fail.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("frames always serialise")
    }
}

/// Encodes `{"type":"notification","notification":N}` from a borrowed notification:
/// the hot path frames each new notification exactly once per node.
pub fn encode_notification(n: &Notification) -> String {
    #[derive(Serialize)]
    struct Frame<'a> {
        r#type: &'static str,
        notification: &'a Notification,
    }
    serde_json::to_string(&Frame {
        r#type: "notification",
        notification: n,
    })
    .expect("frames always serialise")
}

/// Encodes `{"type":"event","group":G,"payload":P}` from borrowed parts.
pub fn encode_event(group: &str, payload: &RawValue) -> String {
    #[derive(Serialize)]
    struct Frame<'a> {
        r#type: &'static str,
        group: &'a str,
        payload: &'a RawValue,
    }
    serde_json::to_string(&Frame {
        r#type: "event",
        group,
        payload,
    })
    .expect("frames always serialise")
}

/// Every frame a client may send. Anything else is answered with `bad_request`.
/// Unknown extra fields are ignored, so newer clients can talk to older nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    Ping,
    MarkRead { ids: Vec<i64> },
    MarkAllRead,
    Subscribe { group: String },
    Unsubscribe { group: String },
}

impl ClientFrame {
    /// Parses a text frame, which must be a JSON object ([`crate::object`]); the error
    /// text is what the client sees in its `error` frame.
    pub fn parse(text: &str) -> Result<Self, String> {
        crate::object::from_slice(text.as_bytes()).map_err(|e| {
            let msg = e.to_string();
            if msg.contains("missing field `type`") {
                "frame has no \"type\"".to_owned()
            } else {
                msg
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(id: i64) -> Notification {
        Notification {
            id,
            user: "42".into(),
            message: RawJson::parse(r#"{"text":"hi"}"#).unwrap(),
            created_at: "2026-11-25T19:21:08.123Z".into(),
            read: false,
        }
    }

    #[test]
    fn notification_frame_matches_the_contract() {
        let bytes = encode_notification(&n(124));
        assert_eq!(
            bytes,
            r#"{"type":"notification","notification":{"id":124,"user":"42","message":{"text":"hi"},"created_at":"2026-11-25T19:21:08.123Z","read":false}}"#
        );
        let back: ServerFrame = serde_json::from_str(&bytes).unwrap();
        assert_eq!(
            back,
            ServerFrame::Notification {
                notification: n(124)
            }
        );
    }

    #[test]
    fn event_frame_keeps_payload_bytes() {
        let p = RawValue::from_string(r#"{"b":1,"a":2}"#.into()).unwrap();
        let bytes = encode_event("org_5", &p);
        assert_eq!(
            bytes,
            r#"{"type":"event","group":"org_5","payload":{"b":1,"a":2}}"#
        );
    }

    #[test]
    fn welcome_and_pong_shapes() {
        let w = ServerFrame::Welcome {
            user: "42".into(),
            node: "n1".into(),
            connection: "c1".into(),
            heartbeat_s: 25,
        };
        assert_eq!(
            w.to_json(),
            r#"{"type":"welcome","user":"42","node":"n1","connection":"c1","heartbeat_s":25}"#
        );
        assert_eq!(ServerFrame::Pong.to_json(), r#"{"type":"pong"}"#);
        let c = ServerFrame::Close {
            code: 1012,
            reason: "node draining".into(),
        };
        assert_eq!(
            c.to_json(),
            r#"{"type":"close","code":1012,"reason":"node draining"}"#
        );
        for f in [&w, &c, &ServerFrame::Pong] {
            assert!(
                f.to_json()
                    .starts_with(&format!(r#"{{"type":"{}""#, f.kind()))
            );
        }
        let e = ServerFrame::Error {
            code: ErrorCode::RateLimited,
            message: "slow down".into(),
        };
        assert_eq!(
            e.to_json(),
            r#"{"type":"error","code":"rate_limited","message":"slow down"}"#
        );
    }

    #[test]
    fn missed_omits_truncated_unless_set() {
        let m = ServerFrame::Missed {
            notifications: vec![],
            truncated: false,
        };
        assert_eq!(m.to_json(), r#"{"type":"missed","notifications":[]}"#);
        let m = ServerFrame::Missed {
            notifications: vec![],
            truncated: true,
        };
        assert_eq!(
            m.to_json(),
            r#"{"type":"missed","notifications":[],"truncated":true}"#
        );
    }

    #[test]
    fn client_frames_parse_and_reject() {
        assert_eq!(
            ClientFrame::parse(r#"{"type":"ping"}"#),
            Ok(ClientFrame::Ping)
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type":"mark_read","ids":[1,2]}"#),
            Ok(ClientFrame::MarkRead { ids: vec![1, 2] })
        );
        assert!(ClientFrame::parse("not json").is_err());
        // serde reads an internally tagged enum from a sequence too; the node does not.
        for positional in [
            r#"["ping"]"#,
            r#"["subscribe","g"]"#,
            r#"["mark_read",[1]]"#,
        ] {
            let e = ClientFrame::parse(positional).unwrap_err();
            assert!(e.contains("expected a JSON object"), "{positional}: {e}");
        }
        assert!(ClientFrame::parse(r#"{"type":"fly"}"#).is_err());
        assert!(ClientFrame::parse(r#"{"type":"mark_read"}"#).is_err());
        assert!(ClientFrame::parse(r#"{"type":"mark_read","ids":"1"}"#).is_err());
        assert!(ClientFrame::parse(r#"{"type":"subscribe","group":5}"#).is_err());
        assert_eq!(
            ClientFrame::parse(r#"{"ids":[1]}"#),
            Err("frame has no \"type\"".into())
        );
    }
}
