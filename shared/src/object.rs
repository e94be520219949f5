//! Bodies and frames are JSON objects, never arrays.
//!
//! serde's derives also read a struct from a JSON sequence, field by field in
//! declaration order, so `["42", {"text": 1}]` would pass for
//! `{"user": "42", "message": {"text": 1}}`, and an internally tagged enum reads
//! `["ping"]` as `{"type": "ping"}`. Nothing on Herald's wire is positional: a body
//! that relied on field order would break the day a field moved. [`object`] reads a
//! value only from a JSON object (anything else is "invalid type: ..., expected a
//! JSON object"); the request and frame types use it for their nested items
//! (`#[serde(deserialize_with = "objects")]`), and the readers of whole bodies and
//! frames use it at the top.

use std::fmt;
use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// What the refusal says a value should have been.
const EXPECTED: &str = "a JSON object";

/// Deserialises `T` from a JSON object only: a sequence (or any other non-object)
/// is an `invalid type` error.
pub fn object<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct ObjectOnly<T>(PhantomData<T>);
    impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectOnly<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str(EXPECTED)
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            T::deserialize(MapAccessDeserializer::new(map))
        }
    }
    d.deserialize_map(ObjectOnly(PhantomData))
}

/// Deserialises a JSON array whose every item is a JSON object (see [`object`]).
pub fn objects<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Item<T>(T);
    impl<'de, T: Deserialize<'de>> Deserialize<'de> for Item<T> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            object(d).map(Item)
        }
    }
    struct Items<T>(PhantomData<T>);
    impl<'de, T: Deserialize<'de>> Visitor<'de> for Items<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            write!(f, "an array of {EXPECTED}s")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
            while let Some(Item(v)) = seq.next_element()? {
                out.push(v);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(Items(PhantomData))
}

/// Reads one JSON text that must be an object holding a `T`, with nothing after it.
pub fn from_slice<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> serde_json::Result<T> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = object(&mut de)?;
    de.end()?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Item {
        a: u8,
        b: Vec<u8>,
    }

    #[derive(Debug, PartialEq, Deserialize)]
    struct List {
        #[serde(deserialize_with = "objects")]
        items: Vec<Item>,
    }

    #[test]
    fn objects_are_read_and_sequences_refused() {
        let item = Item { a: 1, b: vec![2] };
        assert_eq!(from_slice::<Item>(br#"{"a":1,"b":[2]}"#).unwrap(), item);
        // The derive alone would take these positionally.
        assert_eq!(serde_json::from_str::<Item>(r#"[1,[2]]"#).unwrap(), item);
        for bad in [r#"[1,[2]]"#, "1", "null", r#""a""#, r#"{"a":1,"b":[2]} x"#] {
            let e = from_slice::<Item>(bad.as_bytes()).unwrap_err();
            assert!(!e.to_string().is_empty(), "{bad}");
        }
        let e = from_slice::<Item>(b"[1,[2]]").unwrap_err().to_string();
        assert!(e.contains("expected a JSON object"), "{e}");
        assert!(from_slice::<Item>(br#"{"a":1,"b":[2],"c":0}"#).is_err());
    }

    #[test]
    fn nested_items_must_be_objects_too() {
        let list: List = from_slice(br#"{"items":[{"a":1,"b":[]}]}"#).unwrap();
        assert_eq!(list.items, vec![Item { a: 1, b: vec![] }]);
        let e = from_slice::<List>(br#"{"items":[[1,[]]]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected a JSON object"), "{e}");
        assert!(from_slice::<List>(br#"{"items":{"a":1}}"#).is_err());
    }
}
