//! JSON request bodies with the contract's errors: 400 for anything unreadable, 413
//! for a message over the configured maximum, both as `{"error": ...}`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use herald_shared::api::BATCH_MAX;
use herald_shared::depth::{MAX_DEPTH, depth};
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use super::error::ApiError;

/// Parses a request body, turning every failure into a clear 400 (or 413). Every
/// API and admin body is a JSON object with named fields: an array that serde's
/// derive would read positionally is refused ([`herald_shared::object`]).
pub fn parse<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let bytes = body.map_err(|r| match r {
        BytesRejection::FailedToBufferBody(e)
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE =>
        {
            ApiError::TooLarge("request body too large".into())
        }
        other => ApiError::BadRequest(other.body_text()),
    })?;
    if bytes.is_empty() {
        return Err(ApiError::BadRequest(
            "request body is empty; expected JSON".into(),
        ));
    }
    herald_shared::object::from_slice(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("invalid body: {e}")))
}

/// Enforces a batch's item count: 1 to [`BATCH_MAX`] entries in `field` (400).
pub fn check_batch_len(field: &str, n: usize) -> Result<(), ApiError> {
    if n == 0 || n > BATCH_MAX {
        return Err(ApiError::BadRequest(format!(
            "{field} must hold 1 to {BATCH_MAX} items (got {n})"
        )));
    }
    Ok(())
}

/// Checks a backend message or payload: its size as posted (contract §4: 413 over
/// `max` bytes) and its nesting depth (400 over [`MAX_DEPTH`]), a scan of the text
/// serde_json has already checked, not a second parse.
pub fn check_value(what: &str, value: &RawValue, max: usize) -> Result<(), ApiError> {
    let len = value.get().len();
    if len > max {
        return Err(ApiError::TooLarge(format!(
            "{what} is {len} bytes; the maximum is {max}"
        )));
    }
    let depth = depth(value.get());
    if depth > MAX_DEPTH {
        return Err(ApiError::BadRequest(format!(
            "{what} nests {depth} levels deep; the maximum is {MAX_DEPTH}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use herald_shared::admin::DrainRequest;
    use herald_shared::api::{BatchRequest, EventBatchRequest, EventRequest, NewNotification};
    use proptest::prelude::*;

    use super::*;

    fn status<T: DeserializeOwned>(bytes: &[u8]) -> Result<(), String> {
        match parse::<T>(Ok(Bytes::copy_from_slice(bytes))) {
            Ok(_) => Ok(()),
            Err(ApiError::BadRequest(why)) => Err(why),
            Err(other) => panic!("a body is 400 or read, never {other:?}"),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any bytes, as any body: read, or a 400 that says why.
        #[test]
        fn any_body_is_read_or_a_400(
            bytes in prop_oneof![
                prop::collection::vec(any::<u8>(), 0..128),
                "[\\[\\]{}\":,0-9a-z_ .-]{0,48}".prop_map(String::into_bytes),
            ]
        ) {
            for r in [
                status::<NewNotification>(&bytes),
                status::<BatchRequest>(&bytes),
                status::<EventRequest>(&bytes),
                status::<EventBatchRequest>(&bytes),
                status::<DrainRequest>(&bytes),
            ] {
                if let Err(why) = r {
                    prop_assert!(!why.is_empty());
                }
            }
        }

        /// A value is accepted exactly when it is within the size and the depth.
        #[test]
        fn values_are_checked_for_size_then_depth(depth in 0usize..80, pad in 0usize..64) {
            let text = format!("{}\"{}\"{}", "[".repeat(depth), "x".repeat(pad), "]".repeat(depth));
            let value = RawValue::from_string(text.clone()).unwrap();
            let max = 120;
            match check_value("message", &value, max) {
                Ok(()) => prop_assert!(text.len() <= max && depth <= MAX_DEPTH),
                Err(ApiError::TooLarge(_)) => prop_assert!(text.len() > max),
                Err(ApiError::BadRequest(why)) => {
                    prop_assert!(text.len() <= max && depth > MAX_DEPTH);
                    prop_assert_eq!(why, format!("message nests {depth} levels deep; the maximum is 64"));
                }
                Err(other) => prop_assert!(false, "{other:?}"),
            }
        }
    }
}
