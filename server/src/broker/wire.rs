//! What a Herald node publishes on Redis: one line of JSON header, a newline, then
//! the client frame exactly as it goes on the WebSocket.
//!
//! The frame is serialised once by the publishing node and never parsed by the
//! receiving ones: they read the small header (publish time, notification id and
//! owner) and hand the frame bytes to their hub.

use std::sync::Arc;

use herald_shared::UserId;
use serde::{Deserialize, Serialize};

use crate::outbox::{Delivery, NotificationTag};

#[derive(Debug, Serialize, Deserialize)]
struct Header<'a> {
    /// When the publish was accepted (Unix µs).
    t: u64,
    /// Notification id and owner, for notification frames.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    u: Option<&'a str>,
}

/// Encodes a delivery for Redis.
pub fn encode(d: &Delivery) -> Vec<u8> {
    let header = Header {
        t: d.accepted_us,
        id: d.notification.as_ref().map(|n| n.id),
        u: d.notification.as_ref().map(|n| n.user.as_str()),
    };
    let mut out = serde_json::to_vec(&header).expect("plain header");
    out.push(b'\n');
    out.extend_from_slice(d.frame.as_bytes());
    out
}

/// Decodes what [`encode`] wrote; `None` for anything else (logged by the caller).
pub fn decode(bytes: &[u8]) -> Option<Arc<Delivery>> {
    let nl = bytes.iter().position(|b| *b == b'\n')?;
    let header: Header = serde_json::from_slice(&bytes[..nl]).ok()?;
    let frame = std::str::from_utf8(&bytes[nl + 1..]).ok()?.to_owned();
    let tag = match (header.id, header.u) {
        (Some(id), Some(u)) => Some(NotificationTag {
            id,
            user: UserId::parse(u).ok()?,
        }),
        _ => None,
    };
    Some(Delivery::with_time(frame, tag, header.t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_notifications_and_events() {
        let user = UserId::parse("42").unwrap();
        let d = Delivery::notification(r#"{"type":"notification"}"#.into(), 7, &user);
        let back = decode(&encode(&d)).unwrap();
        assert_eq!(back.frame.as_str(), d.frame.as_str());
        assert_eq!(back.notification, d.notification);
        assert_eq!(back.accepted_us, d.accepted_us);

        let e = Delivery::event("{\"a\":\"x\\ny\"}".into());
        let back = decode(&encode(&e)).unwrap();
        assert_eq!(back.frame.as_str(), e.frame.as_str());
        assert!(back.notification.is_none());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Any bytes on a group channel: a delivery exactly when the header line
        /// reads, the frame is UTF-8 and a notification's user is valid; the frame
        /// is then the bytes after the header, unchanged. Never a panic.
        #[test]
        fn any_bytes_decode_or_not(
            head in "\\{(\"t\":[0-9]{1,3})?,?(\"id\":-?[0-9]{1,3})?,?(\"u\":\"[a-z ]{0,3}\")?\\}|.{0,12}",
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..16),
        ) {
            let nl = head.len();
            let mut bytes = head.into_bytes();
            bytes.push(b'\n');
            bytes.extend(tail);
            let nl = bytes[..=nl].iter().position(|b| *b == b'\n').unwrap();
            let header = serde_json::from_slice::<Header>(&bytes[..nl]).ok();
            let frame = std::str::from_utf8(&bytes[nl + 1..]).ok();
            let user_ok = header.as_ref().is_some_and(|h| match (h.id, h.u) {
                (Some(_), Some(u)) => UserId::parse(u).is_ok(),
                _ => true,
            });
            match decode(&bytes) {
                Some(d) => {
                    proptest::prop_assert!(user_ok);
                    proptest::prop_assert_eq!(Some(d.frame.as_str()), frame);
                }
                None => proptest::prop_assert!(header.is_none() || frame.is_none() || !user_ok),
            }
        }
    }

    #[test]
    fn garbage_is_refused() {
        assert!(decode(b"no header").is_none());
        assert!(decode(b"{\"t\":1}\n\xff").is_none());
        assert!(decode(b"{\"t\":1,\"id\":3,\"u\":\"bad user\"}\n{}").is_none());
    }
}
