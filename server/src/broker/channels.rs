//! Django Channels interop: events that a Django app sends with channels_redis.
//!
//! Supported: the pub/sub layer (`channels_redis.pubsub.RedisPubSubChannelLayer`).
//! Its `group_send("user_42", message)` is exactly `PUBLISH <prefix>__group__user_42
//! <msgpack of message>`, which maps directly onto Herald's interest-based routing:
//! a node subscribes to that channel while it has members of the group, and each
//! message becomes `{"type":"event","group":"user_42","payload":<message>}`.
//!
//! Not supported: the core layer (`RedisChannelLayer`), which keeps group members in
//! sorted sets and delivers through per-process queues that a reader must poll;
//! encrypted payloads (Fernet) are not readable either. Both are documented.

use std::sync::Arc;

use herald_shared::GroupName;
use herald_shared::depth::{MAX_DEPTH, depth};
use herald_shared::dropped::DropReason;
use herald_shared::frames::encode_event;

use crate::outbox::Delivery;

/// How much larger than its JSON a message's msgpack may be before it is decoded (a
/// float is 9 bytes of msgpack for 3 of JSON): a bound on the work spent on a
/// payload the exact check ([`decode`]'s `max_bytes` of JSON) refuses anyway.
const MSGPACK_FACTOR: usize = 4;

/// The channel channels_redis's pub/sub layer publishes a group's messages on.
pub fn group_channel(asgi_prefix: &str, group: &GroupName) -> String {
    format!("{asgi_prefix}__group__{group}")
}

/// Turns a channels_redis group message into an `event` delivery for `group`, with
/// the API's limits on an event's payload: at most `max_bytes` of JSON
/// (`HERALD_MAX_MESSAGE_BYTES`) and [`MAX_DEPTH`] levels.
pub fn decode(
    asgi_prefix: &str,
    channel: &str,
    payload: &[u8],
    max_bytes: usize,
) -> Result<(GroupName, Arc<Delivery>), DropReason> {
    let group = channel
        .strip_prefix(asgi_prefix)
        .and_then(|c| c.strip_prefix("__group__"))
        .ok_or(DropReason::Malformed)?;
    let group = GroupName::parse(group).map_err(|_| DropReason::Malformed)?;
    if payload.len() > max_bytes.saturating_mul(MSGPACK_FACTOR) {
        return Err(DropReason::Oversized);
    }
    // A group message is a msgpack map, and all of the payload is that map: this
    // refuses other serializers (JSON text would read as the number 123) and
    // Fernet-encrypted payloads instead of delivering garbage. The decoder's depth
    // is set here, not left to its default (1024): a level past the limit below
    // stops it (its counter allows one level fewer than it is set to).
    let mut de = rmp_serde::Deserializer::new(std::io::Cursor::new(payload));
    de.set_max_depth(MAX_DEPTH + 2);
    let message = match <serde_json::Value as serde::Deserialize>::deserialize(&mut de) {
        Ok(m) => m,
        Err(rmp_serde::decode::Error::DepthLimitExceeded) => return Err(DropReason::TooDeep),
        Err(_) => return Err(DropReason::Malformed),
    };
    if !message.is_object() || de.position() != payload.len() as u64 {
        return Err(DropReason::Malformed);
    }
    let raw = serde_json::value::to_raw_value(&message).map_err(|_| DropReason::Malformed)?;
    // The same limits as an event posted to the API: deeper reaches clients whose
    // parsers stop short of it, larger skips the node's own bound on messages.
    if raw.get().len() > max_bytes {
        return Err(DropReason::Oversized);
    }
    if depth(raw.get()) > MAX_DEPTH {
        return Err(DropReason::TooDeep);
    }
    let frame = encode_event(group.as_str(), &raw);
    Ok((group, Delivery::event(frame)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 16 * 1024;

    #[test]
    fn a_group_send_becomes_an_event() {
        #[derive(serde::Serialize)]
        struct Msg {
            r#type: &'static str,
            text: &'static str,
        }
        // What msgpack.packb({"type": "notify", "text": "hi"}) produces (a map).
        let payload = rmp_serde::to_vec_named(&Msg {
            r#type: "notify",
            text: "hi",
        })
        .unwrap();
        let (g, d) = decode("asgi", "asgi__group__user_42", &payload, MAX).unwrap();
        assert_eq!(g.as_str(), "user_42");
        assert_eq!(
            d.frame.as_str(),
            r#"{"type":"event","group":"user_42","payload":{"type":"notify","text":"hi"}}"#
        );
        assert!(decode("asgi", "other__group__x", &payload, MAX).is_err());
        assert!(decode("asgi", "asgi__group__bad name", &payload, MAX).is_err());
        assert!(decode("asgi", "asgi__group__g", b"\xc1", MAX).is_err());
        // channels' JSON serializer, and a Fernet token: not msgpack maps.
        assert!(decode("asgi", "asgi__group__g", br#"{"type":"notify"}"#, MAX).is_err());
        assert!(decode("asgi", "asgi__group__g", b"gAAAAABl-encrypted", MAX).is_err());
        let mut trailing = payload.clone();
        trailing.push(0x01);
        assert!(decode("asgi", "asgi__group__g", &trailing, MAX).is_err());
    }

    /// A message nested past [`MAX_DEPTH`] (the map counts as one level) is
    /// dropped, as the API would refuse it; at the limit it is delivered.
    #[test]
    fn deep_messages_are_dropped() {
        let nest = |n: usize| {
            let mut v = serde_json::json!(1);
            for _ in 0..n {
                v = serde_json::json!([v]);
            }
            rmp_serde::to_vec_named(&serde_json::json!({ "type": "x", "v": v })).unwrap()
        };
        assert!(decode("asgi", "asgi__group__g", &nest(MAX_DEPTH - 1), MAX).is_ok());
        let too_deep = Err(DropReason::TooDeep);
        assert_eq!(
            decode("asgi", "asgi__group__g", &nest(MAX_DEPTH), MAX).map(|_| ()),
            too_deep
        );
        // Far deeper (written by hand: a Value that deep overflows the test's stack):
        // the decoder itself stops, long before its default of 1024.
        let mut deep = b"\x82\xa4type\xa1x\xa1v".to_vec();
        deep.extend(std::iter::repeat_n(0x91, 5000));
        deep.push(0x01);
        assert_eq!(
            decode("asgi", "asgi__group__g", &deep, MAX).map(|_| ()),
            too_deep
        );
    }

    /// A message over `HERALD_MAX_MESSAGE_BYTES` of JSON is dropped, as the API
    /// would refuse it as an event; one at the limit is delivered.
    #[test]
    fn large_messages_are_dropped() {
        let of_len = |n: usize| {
            // {"type":"x","v":"…"} is 19 bytes of JSON around the string.
            rmp_serde::to_vec_named(&serde_json::json!({ "type": "x", "v": "a".repeat(n - 19) }))
                .unwrap()
        };
        assert!(decode("asgi", "asgi__group__g", &of_len(MAX), MAX).is_ok());
        let oversized = Err(DropReason::Oversized);
        assert_eq!(
            decode("asgi", "asgi__group__g", &of_len(MAX + 1), MAX).map(|_| ()),
            oversized
        );
        assert_eq!(
            decode("asgi", "asgi__group__g", &vec![0u8; 4 * MAX + 1], MAX).map(|_| ()),
            oversized
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Whatever Redis carries on a channels group channel: an event for a valid
        /// group, or nothing (the caller logs it); never a panic.
        #[test]
        fn any_payload_is_an_event_or_nothing(payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..128)) {
            if let Ok((g, d)) = decode("asgi", "asgi__group__g", &payload, MAX) {
                proptest::prop_assert_eq!(g.as_str(), "g");
                let prefix = r#"{"type":"event","group":"g","payload":{"#;
                proptest::prop_assert!(d.frame.as_str().starts_with(prefix), "{}", d.frame.as_str());
            }
        }
    }
}
