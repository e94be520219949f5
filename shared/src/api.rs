//! Backend API bodies (contract §4).
//!
//! Requests deserialise with validation built in (a [`UserId`] that parses is valid),
//! so the server's handlers only see well-formed input. Each request, and each item
//! of a batch, is a JSON object ([`crate::object`]): read a whole body with
//! [`crate::object::from_slice`].

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::frames::Notification;
use crate::ids::{GroupName, UserId};

/// Most notifications one batch request may create.
pub const BATCH_MAX: usize = 1000;

/// `POST /api/v1/notifications`, and one item of a batch.
///
/// `message` is the backend's JSON text exactly as sent (validated, never re-encoded):
/// that is what the store keeps and every client receives.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewNotification {
    pub user: UserId,
    pub message: Box<RawValue>,
}

/// `POST /api/v1/notifications/batch`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    #[serde(deserialize_with = "crate::object::objects")]
    pub notifications: Vec<NewNotification>,
}

/// A list of notifications: the batch answer and the user listing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NotificationList {
    pub notifications: Vec<Notification>,
}

/// `POST /api/v1/groups/<group>/events`; `payload` kept exactly as sent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventRequest {
    pub payload: Box<RawValue>,
}

/// One event of `POST /api/v1/events/batch` **[ext]**.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupEvent {
    pub group: GroupName,
    pub payload: Box<RawValue>,
}

/// `POST /api/v1/events/batch` **[ext]**: up to [`BATCH_MAX`] events, each to its
/// own group, published in order. What a backend that notifies many users at once
/// (without storing) needs, in one request instead of one per user.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventBatchRequest {
    #[serde(deserialize_with = "crate::object::objects")]
    pub events: Vec<GroupEvent>,
}

/// The 202 answer to an event batch: how many events were published (all of them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchAccepted {
    pub accepted: usize,
}

/// The 202 answer to an event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Accepted {
    pub accepted: bool,
}

/// `GET /api/v1/users/<id>/presence`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Presence {
    pub user: String,
    pub online: bool,
    pub connections: u64,
}

/// Every error answer of the node, HTTP or upgrade: `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_batch_keeps_payloads_exactly() {
        let b: EventBatchRequest =
            serde_json::from_str(r#"{"events":[{"group":"user_1","payload":{"n":1, "z":[3,2]}}]}"#)
                .unwrap();
        assert_eq!(b.events[0].payload.get(), r#"{"n":1, "z":[3,2]}"#);
        assert!(
            serde_json::from_str::<EventBatchRequest>(
                r#"{"events":[{"group":"a b","payload":1}]}"#
            )
            .is_err()
        );
    }
}
