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
use herald_shared::frames::encode_event;

use crate::outbox::Delivery;

/// The channel channels_redis's pub/sub layer publishes a group's messages on.
pub fn group_channel(asgi_prefix: &str, group: &GroupName) -> String {
    format!("{asgi_prefix}__group__{group}")
}

/// Turns a channels_redis group message into an `event` delivery for `group`.
pub fn decode(
    asgi_prefix: &str,
    channel: &str,
    payload: &[u8],
) -> Option<(GroupName, Arc<Delivery>)> {
    let group = channel
        .strip_prefix(asgi_prefix)?
        .strip_prefix("__group__")?;
    let group = GroupName::parse(group).ok()?;
    // A group message is a msgpack map, and all of the payload is that map: this
    // refuses other serializers (JSON text would read as the number 123) and
    // Fernet-encrypted payloads instead of delivering garbage.
    let mut cursor = std::io::Cursor::new(payload);
    let message: serde_json::Value = rmp_serde::from_read(&mut cursor).ok()?;
    if !message.is_object() || cursor.position() != payload.len() as u64 {
        return None;
    }
    let raw = serde_json::value::to_raw_value(&message).ok()?;
    // The same nesting limit as an event posted to the API: deeper reaches clients
    // whose parsers stop short of it.
    if depth(raw.get()) > MAX_DEPTH {
        return None;
    }
    let frame = encode_event(group.as_str(), &raw);
    Some((group, Delivery::event(frame)))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let (g, d) = decode("asgi", "asgi__group__user_42", &payload).unwrap();
        assert_eq!(g.as_str(), "user_42");
        assert_eq!(
            d.frame.as_str(),
            r#"{"type":"event","group":"user_42","payload":{"type":"notify","text":"hi"}}"#
        );
        assert!(decode("asgi", "other__group__x", &payload).is_none());
        assert!(decode("asgi", "asgi__group__bad name", &payload).is_none());
        assert!(decode("asgi", "asgi__group__g", b"\xc1").is_none());
        // channels' JSON serializer, and a Fernet token: not msgpack maps.
        assert!(decode("asgi", "asgi__group__g", br#"{"type":"notify"}"#).is_none());
        assert!(decode("asgi", "asgi__group__g", b"gAAAAABl-encrypted").is_none());
        let mut trailing = payload.clone();
        trailing.push(0x01);
        assert!(decode("asgi", "asgi__group__g", &trailing).is_none());
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
        assert!(decode("asgi", "asgi__group__g", &nest(MAX_DEPTH - 1)).is_some());
        assert!(decode("asgi", "asgi__group__g", &nest(MAX_DEPTH)).is_none());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Whatever Redis carries on a channels group channel: an event for a valid
        /// group, or nothing (the caller logs it); never a panic.
        #[test]
        fn any_payload_is_an_event_or_nothing(payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..128)) {
            if let Some((g, d)) = decode("asgi", "asgi__group__g", &payload) {
                proptest::prop_assert_eq!(g.as_str(), "g");
                let prefix = r#"{"type":"event","group":"g","payload":{"#;
                proptest::prop_assert!(d.frame.as_str().starts_with(prefix), "{}", d.frame.as_str());
            }
        }
    }
}
