//! `POST /api/v1/groups/<group>/events` and, as an extension, `POST
//! /api/v1/events/batch`: ephemeral, not stored, every node.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use herald_shared::GroupName;
use herald_shared::api::{Accepted, BatchAccepted, EventBatchRequest, EventRequest};

use super::body::{check_batch_len, check_value, parse};
use super::error::ApiError;
use crate::node::Node;

pub async fn publish_event(
    State(node): State<Arc<Node>>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let Path(group) = path.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let group =
        GroupName::parse(group).map_err(|e| ApiError::BadRequest(format!("group name {e}")))?;
    let req: EventRequest = parse(body)?;
    check_value("payload", &req.payload, node.config.max_message_bytes)?;
    node.publisher
        .event(&group, &req.payload)
        .await
        .map_err(|e| ApiError::Unavailable(format!("event not accepted: {e}"), 1))?;
    Ok((StatusCode::ACCEPTED, Json(Accepted { accepted: true })))
}

/// Publishes every event of the batch, in order, each to its own group. All are
/// checked before any is published: a bad item (400) or an oversized payload (413,
/// naming its index) publishes nothing.
pub async fn publish_batch(
    State(node): State<Arc<Node>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<BatchAccepted>), ApiError> {
    let batch: EventBatchRequest = parse(body)?;
    let n = batch.events.len();
    check_batch_len("events", n)?;
    for (i, e) in batch.events.iter().enumerate() {
        check_value(
            &format!("events[{i}].payload"),
            &e.payload,
            node.config.max_message_bytes,
        )?;
    }
    node.publisher
        .events(&batch.events)
        .await
        .map_err(|(i, e)| {
            ApiError::Unavailable(
                format!("events[{i}] not accepted (others may have been published): {e}"),
                1,
            )
        })?;
    Ok((StatusCode::ACCEPTED, Json(BatchAccepted { accepted: n })))
}
