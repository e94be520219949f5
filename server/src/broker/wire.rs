//! What a Herald node publishes on a group channel: one line of JSON header, a
//! newline, then the client frame exactly as it goes on the WebSocket.
//!
//! The frame is serialised once by the publishing node and never parsed by the
//! receiving ones: they read the small header (publish time, notification id and
//! owner, and the signature when the cluster has a key) and hand the frame bytes to
//! their hub.
//!
//! Redis is shared, so [`decode`] treats a message as input. The checks are bounded
//! scans, not parses: the header line is found within its first [`MAX_HEADER`]
//! bytes and parsed (a few dozen bytes); the frame is checked by length, by its
//! first and last bytes (a JSON object), as UTF-8, and by the depth scan of
//! [`herald_shared::depth`], all linear and allocation-free. A full JSON parse of
//! every frame would cost the receiving nodes what the publishing node already
//! paid when it accepted the message; a frame that passes these checks and is
//! still not JSON can only come from a publisher that is not a Herald node, which
//! the signature ([`super::signing`]) rules out.

use std::sync::Arc;

use herald_shared::UserId;
use herald_shared::depth::{MAX_DEPTH, depth};
use herald_shared::dropped::DropReason;
use serde::{Deserialize, Serialize};

use super::signing::BrokerKey;
use crate::outbox::{Delivery, NotificationTag};

/// The longest header line read: `t`, `id`, `u` (64 characters at most) and `s`
/// fit in well under half of it.
pub const MAX_HEADER: usize = 512;

/// What a frame adds around the message it carries (type, id, user, created_at,
/// read): the frame may be this much larger than `HERALD_MAX_MESSAGE_BYTES`.
pub const FRAME_ENVELOPE: usize = 512;

/// How much deeper a frame nests than its message: `{"notification":{"message":M}}`.
pub const FRAME_DEPTH: usize = MAX_DEPTH + 2;

/// How far a signed message's `t` may be from this node's clock: a signed message
/// captured and published again later is refused past this.
pub const REPLAY_WINDOW_US: u64 = 60_000_000;

#[derive(Debug, Serialize, Deserialize)]
struct Header<'a> {
    /// When the publish was accepted (Unix µs).
    t: u64,
    /// Notification id and owner, for notification frames.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    u: Option<&'a str>,
    /// HMAC-SHA256 of channel, header without `s`, and frame ([`super::signing`]).
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    s: Option<&'a str>,
}

impl Header<'_> {
    /// The header as signed: without `s`, fields in their fixed order.
    fn unsigned_bytes(&self) -> Vec<u8> {
        let h = Header { s: None, ..*self };
        serde_json::to_vec(&h).expect("plain header")
    }
}

/// Encodes a delivery for `channel`, signed when the cluster has a key.
pub fn encode(d: &Delivery, channel: &str, key: Option<&BrokerKey>) -> Vec<u8> {
    let mut header = Header {
        t: d.accepted_us,
        id: d.notification.as_ref().map(|n| n.id),
        u: d.notification.as_ref().map(|n| n.user.as_str()),
        s: None,
    };
    let tag;
    if let Some(key) = key {
        tag = key.sign(channel, &[&header.unsigned_bytes(), d.frame.as_bytes()]);
        header.s = Some(&tag);
    }
    let mut out = serde_json::to_vec(&header).expect("plain header");
    out.push(b'\n');
    out.extend_from_slice(d.frame.as_bytes());
    out
}

/// A group message that passed every check that needs no store: its delivery, and
/// whether its signature verified (then its id is a Herald node's word).
#[derive(Debug)]
pub struct Decoded {
    pub delivery: Arc<Delivery>,
    pub signed: Signature,
}

/// What the signature said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signature {
    /// Verified with this node's key.
    Verified,
    /// This node has no key, and the message has no signature.
    None,
    /// This node has no key, but the message is signed: another node has one.
    Unchecked,
}

/// Decodes and checks what [`encode`] wrote on `channel`: shape, size (`max_frame`
/// bytes of frame), depth, user, and with `key` the signature and its time.
pub fn decode(
    bytes: &[u8],
    channel: &str,
    max_frame: usize,
    key: Option<&BrokerKey>,
    now_us: u64,
) -> Result<Decoded, DropReason> {
    let head = &bytes[..bytes.len().min(MAX_HEADER + 1)];
    let nl = head
        .iter()
        .position(|b| *b == b'\n')
        .ok_or(DropReason::Malformed)?;
    // An object only (serde would also read the header from a positional array),
    // and nothing after it.
    let mut de = serde_json::Deserializer::from_slice(&bytes[..nl]);
    let header: Header = herald_shared::object::object(&mut de)
        .and_then(|h| de.end().map(|()| h))
        .map_err(|_| DropReason::Malformed)?;
    let frame = &bytes[nl + 1..];
    if frame.len() > max_frame {
        return Err(DropReason::Oversized);
    }
    let frame = std::str::from_utf8(frame).map_err(|_| DropReason::Malformed)?;
    if !(frame.starts_with('{') && frame.ends_with('}')) {
        return Err(DropReason::Malformed);
    }
    if depth(frame) > FRAME_DEPTH {
        return Err(DropReason::TooDeep);
    }
    let tag = match (header.id, header.u) {
        (Some(id), Some(u)) => Some(NotificationTag {
            id,
            user: UserId::parse(u).map_err(|_| DropReason::Malformed)?,
        }),
        (None, None) => None,
        _ => return Err(DropReason::Malformed),
    };
    let signed = match (key, header.s) {
        (Some(_), None) => return Err(DropReason::Unsigned),
        (Some(key), Some(s)) => {
            if !key.verify(channel, &[&header.unsigned_bytes(), frame.as_bytes()], s) {
                return Err(DropReason::BadSignature);
            }
            if now_us.abs_diff(header.t) > REPLAY_WINDOW_US {
                return Err(DropReason::Stale);
            }
            Signature::Verified
        }
        (None, None) => Signature::None,
        (None, Some(_)) => Signature::Unchecked,
    };
    Ok(Decoded {
        delivery: Delivery::with_time(frame.to_owned(), tag, header.t),
        signed,
    })
}

/// A control message (a probe, a resync announcement): `body`, then with a key a
/// newline and the body's tag on `channel`.
pub fn encode_control(body: &str, channel: &str, key: Option<&BrokerKey>) -> Vec<u8> {
    match key {
        Some(key) => format!("{body}\n{}", key.sign(channel, &[body.as_bytes()])).into_bytes(),
        None => body.as_bytes().to_vec(),
    }
}

/// The body of a control message, checked as [`encode_control`] wrote it: at most
/// `max` bytes of text without control characters, signed when this node has a key (a node without
/// one ignores a tag).
pub fn decode_control<'a>(
    bytes: &'a [u8],
    channel: &str,
    max: usize,
    key: Option<&BrokerKey>,
) -> Result<&'a str, DropReason> {
    if bytes.len() > max + 1 + super::signing::TAG_HEX {
        return Err(DropReason::Oversized);
    }
    let text = std::str::from_utf8(bytes).map_err(|_| DropReason::Malformed)?;
    let (body, tag) = match text.rsplit_once('\n') {
        Some((body, tag)) => (body, Some(tag)),
        None => (text, None),
    };
    if body.is_empty() || body.len() > max || body.chars().any(char::is_control) {
        return Err(DropReason::Malformed);
    }
    match (key, tag) {
        (Some(_), None) => Err(DropReason::Unsigned),
        (Some(key), Some(tag)) if !key.verify(channel, &[body.as_bytes()], tag) => {
            Err(DropReason::BadSignature)
        }
        _ => Ok(body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::unix_micros;

    const MAX: usize = 16 * 1024 + FRAME_ENVELOPE;
    const CH: &str = "h:g:user_42";

    fn key() -> BrokerKey {
        BrokerKey::new("0123456789abcdef0123456789abcdef").unwrap()
    }

    fn dec(bytes: &[u8]) -> Result<Decoded, DropReason> {
        decode(bytes, CH, MAX, None, unix_micros())
    }

    #[test]
    fn round_trips_notifications_and_events() {
        let user = UserId::parse("42").unwrap();
        let d = Delivery::notification(r#"{"type":"notification"}"#.into(), 7, &user);
        let back = dec(&encode(&d, CH, None)).unwrap();
        assert_eq!(back.delivery.frame.as_str(), d.frame.as_str());
        assert_eq!(back.delivery.notification, d.notification);
        assert_eq!(back.delivery.accepted_us, d.accepted_us);
        assert_eq!(back.signed, Signature::None);

        let e = Delivery::event("{\"a\":\"x\\ny\"}".into());
        let back = dec(&encode(&e, CH, None)).unwrap();
        assert_eq!(back.delivery.frame.as_str(), e.frame.as_str());
        assert!(back.delivery.notification.is_none());
    }

    #[test]
    fn signed_messages_verify_with_the_key_only() {
        let user = UserId::parse("42").unwrap();
        let d = Delivery::notification(r#"{"type":"notification"}"#.into(), 7, &user);
        let signed = encode(&d, CH, Some(&key()));
        let now = unix_micros();
        let back = decode(&signed, CH, MAX, Some(&key()), now).unwrap();
        assert_eq!(back.signed, Signature::Verified);
        assert_eq!(back.delivery.notification, d.notification);
        // A node without the key delivers it, and says it saw a signature.
        assert_eq!(dec(&signed).unwrap().signed, Signature::Unchecked);
        // Unsigned, on another channel, tampered, another key, replayed late.
        let unsigned = encode(&d, CH, None);
        assert_eq!(
            decode(&unsigned, CH, MAX, Some(&key()), now).unwrap_err(),
            DropReason::Unsigned
        );
        let moved = decode(&signed, "h:g:user_43", MAX, Some(&key()), now).unwrap_err();
        assert_eq!(moved, DropReason::BadSignature);
        let text = String::from_utf8(signed.clone()).unwrap();
        let forged = text.replacen("\"id\":7", "\"id\":8", 1);
        assert_eq!(
            decode(forged.as_bytes(), CH, MAX, Some(&key()), now).unwrap_err(),
            DropReason::BadSignature
        );
        let other = BrokerKey::new("another key of at least thirty-two bytes").unwrap();
        assert_eq!(
            decode(&signed, CH, MAX, Some(&other), now).unwrap_err(),
            DropReason::BadSignature
        );
        let later = now + REPLAY_WINDOW_US + 1_000_000;
        assert_eq!(
            decode(&signed, CH, MAX, Some(&key()), later).unwrap_err(),
            DropReason::Stale
        );
    }

    #[test]
    fn bad_input_is_dropped_with_its_reason() {
        use DropReason::*;
        let cases: Vec<(Vec<u8>, DropReason)> = vec![
            (b"no header".to_vec(), Malformed),
            (b"{\"t\":1}\n\xff".to_vec(), Malformed),
            (
                b"{\"t\":1,\"id\":3,\"u\":\"bad user\"}\n{}".to_vec(),
                Malformed,
            ),
            (b"{\"t\":1,\"id\":3}\n{}".to_vec(), Malformed),
            (b"{\"t\":1}\nnot json".to_vec(), Malformed),
            (b"[1]\n{}".to_vec(), Malformed),
            (
                format!("{{\"t\":1,\"x\":\"{}\"}}\n{{}}", "a".repeat(MAX_HEADER)).into_bytes(),
                Malformed,
            ),
            (
                format!("{{\"t\":1}}\n{{\"a\":\"{}\"}}", "a".repeat(MAX)).into_bytes(),
                Oversized,
            ),
            (
                format!(
                    "{{\"t\":1}}\n{{\"a\":{}1{}}}",
                    "[".repeat(FRAME_DEPTH),
                    "]".repeat(FRAME_DEPTH)
                )
                .into_bytes(),
                TooDeep,
            ),
        ];
        for (bytes, reason) in cases {
            assert_eq!(
                dec(&bytes).unwrap_err(),
                reason,
                "{}",
                String::from_utf8_lossy(&bytes)
            );
        }
        let at_limit = format!(
            "{{\"a\":{}1{}}}",
            "[".repeat(FRAME_DEPTH - 1),
            "]".repeat(FRAME_DEPTH - 1)
        );
        assert!(dec(format!("{{\"t\":1}}\n{at_limit}").as_bytes()).is_ok());
    }

    #[test]
    fn control_messages_are_checked_and_signed() {
        let k = key();
        assert_eq!(
            decode_control(
                &encode_control("node-1", "h:resync", None),
                "h:resync",
                128,
                None
            ),
            Ok("node-1")
        );
        let signed = encode_control("node-1", "h:resync", Some(&k));
        assert_eq!(
            decode_control(&signed, "h:resync", 128, Some(&k)),
            Ok("node-1")
        );
        assert_eq!(decode_control(&signed, "h:resync", 128, None), Ok("node-1"));
        assert_eq!(
            decode_control(b"node-1", "h:resync", 128, Some(&k)),
            Err(DropReason::Unsigned)
        );
        assert_eq!(
            decode_control(&signed, "h:probe:n", 128, Some(&k)),
            Err(DropReason::BadSignature)
        );
        assert_eq!(
            decode_control(b"", "h:resync", 128, None),
            Err(DropReason::Malformed)
        );
        assert_eq!(
            decode_control(b"a\x07b", "h:resync", 128, None),
            Err(DropReason::Malformed)
        );
        assert_eq!(
            decode_control(&[b'a'; 300], "h:resync", 128, None),
            Err(DropReason::Oversized)
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Any bytes on a group channel: a delivery exactly when the header line
        /// reads, the frame is a UTF-8 object and a notification's user is valid;
        /// the frame is then the bytes after the header, unchanged. Never a panic.
        #[test]
        fn any_bytes_decode_or_not(
            head in "\\{(\"t\":[0-9]{1,3})?,?(\"id\":-?[0-9]{1,3})?,?(\"u\":\"[a-z ]{0,3}\")?\\}|.{0,12}",
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..16),
            object in proptest::prelude::any::<bool>(),
        ) {
            let nl = head.len();
            let mut bytes = head.into_bytes();
            bytes.push(b'\n');
            if object { bytes.push(b'{'); }
            bytes.extend(tail);
            if object { bytes.push(b'}'); }
            let nl = bytes[..=nl].iter().position(|b| *b == b'\n').unwrap();
            let header = herald_shared::object::object::<_, Header>(&mut serde_json::Deserializer::from_slice(&bytes[..nl])).ok();
            let frame = std::str::from_utf8(&bytes[nl + 1..]).ok();
            let user_ok = header.as_ref().is_some_and(|h| match (h.id, h.u) {
                (Some(_), Some(u)) => UserId::parse(u).is_ok(),
                (None, None) => true,
                _ => false,
            });
            let shape_ok = frame.is_some_and(|f| f.starts_with('{') && f.ends_with('}'));
            match dec(&bytes) {
                Ok(d) => {
                    proptest::prop_assert!(user_ok && shape_ok);
                    proptest::prop_assert_eq!(Some(d.delivery.frame.as_str()), frame);
                }
                Err(_) => proptest::prop_assert!(header.is_none() || !shape_ok || !user_ok),
            }
        }
    }
}
