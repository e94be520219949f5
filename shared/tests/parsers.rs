//! Property tests of every parser of outside input in the shared crate, through its
//! public API: client frames, API and admin bodies, user ids and group names,
//! durations and the depth scan. No input panics, and each invalid input gets its
//! documented error.

use herald_shared::admin::DrainRequest;
use herald_shared::api::{BatchRequest, EventBatchRequest, EventRequest, NewNotification};
use herald_shared::depth::depth;
use herald_shared::ids::{GROUP_NAME_MAX, USER_ID_MAX};
use herald_shared::object::from_slice;
use herald_shared::seconds::Seconds;
use herald_shared::{ClientFrame, GroupName, IdError, UserId};
use proptest::prelude::*;
use serde_json::Value;

/// Any JSON value, nested a few levels.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON numbers are finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,8}".prop_map(Value::from),
    ];
    leaf.prop_recursive(6, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((".{0,6}", inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// The nesting depth of a value: what [`depth`] reads from its text.
fn levels(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(levels).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(levels).max().unwrap_or(0),
        _ => 0,
    }
}

/// What the contract says of a name of at most `max` bytes.
fn expected(s: &str, max: usize) -> Result<(), IdError> {
    if s.is_empty() {
        Err(IdError::Empty)
    } else if s.len() > max {
        Err(IdError::TooLong { max })
    } else if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "_.-".contains(*c)))
    {
        Err(IdError::BadChar(c))
    } else {
        Ok(())
    }
}

/// Every body type, read as the node reads a body.
fn read_every_body(bytes: &[u8]) -> Vec<Result<(), String>> {
    fn one<T: for<'a> serde::Deserialize<'a>>(b: &[u8]) -> Result<(), String> {
        from_slice::<T>(b).map(drop).map_err(|e| e.to_string())
    }
    vec![
        one::<NewNotification>(bytes),
        one::<BatchRequest>(bytes),
        one::<EventRequest>(bytes),
        one::<EventBatchRequest>(bytes),
        one::<DrainRequest>(bytes),
        ClientFrame::parse(&String::from_utf8_lossy(bytes)).map(drop),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn no_bytes_panic_any_reader(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        read_every_body(&bytes);
    }

    #[test]
    fn no_text_panics_any_reader(text in "[\\[\\]{}\":,0-9a-z_ .\\\\-]{0,64}") {
        read_every_body(text.as_bytes());
    }

    /// Whatever is not a JSON object is refused by every body and frame, saying
    /// an object was expected (an array is never read positionally).
    #[test]
    fn non_objects_are_refused_as_such(v in json().prop_filter("not an object", |v| !v.is_object())) {
        let text = v.to_string();
        for r in read_every_body(text.as_bytes()) {
            let e = r.unwrap_err();
            prop_assert!(e.contains("expected a JSON object"), "{text}: {e}");
        }
    }

    /// A notification with a valid user and any message is read, its message kept
    /// exactly as sent; inside a batch too. Sent as an array it is refused.
    #[test]
    fn notifications_keep_any_message(user in "[A-Za-z0-9_.-]{1,64}", message in json()) {
        let m = message.to_string();
        let text = format!(r#"{{"user":"{user}","message":{m}}}"#);
        let n: NewNotification = from_slice(text.as_bytes()).unwrap();
        prop_assert_eq!(n.user.as_str(), user.as_str());
        prop_assert_eq!(n.message.get(), m.as_str());
        let batch: BatchRequest = from_slice(format!(r#"{{"notifications":[{text}]}}"#).as_bytes()).unwrap();
        prop_assert_eq!(batch.notifications.len(), 1);
        let positional = format!(r#"{{"notifications":[["{user}",{m}]]}}"#);
        prop_assert!(from_slice::<BatchRequest>(positional.as_bytes()).is_err());
    }

    /// A client frame whose `type` is not one of the five is refused.
    #[test]
    fn unknown_frame_types_are_refused(t in "[a-z_]{0,12}") {
        prop_assume!(!["ping", "mark_read", "mark_all_read", "subscribe", "unsubscribe"].contains(&t.as_str()));
        let e = ClientFrame::parse(&format!(r#"{{"type":"{t}"}}"#)).unwrap_err();
        prop_assert!(e.contains("unknown variant"), "{e}");
    }

    /// Names: exactly the contract's rule, with the documented reason.
    #[test]
    fn names_follow_the_contract(s in prop_oneof![".{0,110}", "[A-Za-z0-9_.-]{0,110}"]) {
        prop_assert_eq!(UserId::parse(s.as_str()).map(drop), expected(&s, USER_ID_MAX));
        prop_assert_eq!(GroupName::parse(s.as_str()).map(drop), expected(&s, GROUP_NAME_MAX));
        // The same rule when read from JSON (a token's claims, a batch's group).
        let from_json = serde_json::from_value::<GroupName>(Value::from(s.clone()));
        prop_assert_eq!(from_json.is_ok(), expected(&s, GROUP_NAME_MAX).is_ok());
    }

    /// A duration is any number from 0 to `Seconds::MAX`, fractions included.
    #[test]
    fn durations_are_numbers_in_range(f in any::<f64>(), i in any::<i64>()) {
        let ok = f.is_finite() && (0.0..=Seconds::MAX as f64).contains(&f);
        prop_assert_eq!(Seconds::from_f64(f).is_some(), ok, "{}", f);
        if f.is_finite() {
            let read = serde_json::from_str::<Seconds>(&Value::from(f).to_string());
            prop_assert_eq!(read.is_ok(), ok, "{}", f);
        }
        let read = serde_json::from_str::<Seconds>(&i.to_string());
        prop_assert_eq!(read.is_ok(), (0..=Seconds::MAX as i64).contains(&i), "{}", i);
    }

    /// The depth scan agrees with the value's structure, strings included.
    #[test]
    fn depth_scan_matches_structure(v in json()) {
        prop_assert_eq!(depth(&v.to_string()), levels(&v));
        let pretty = serde_json::to_string_pretty(&v).unwrap();
        prop_assert_eq!(depth(&pretty), levels(&v));
    }
}
