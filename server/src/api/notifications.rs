//! `POST /api/v1/notifications` and `/batch`: store, then fan out.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use herald_shared::Notification;
use herald_shared::api::{BATCH_MAX, BatchRequest, NewNotification, NotificationList};

use super::body::{check_size, parse};
use super::error::ApiError;
use crate::node::Node;

pub async fn create(
    State(node): State<Arc<Node>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Notification>), ApiError> {
    let item: NewNotification = parse(body)?;
    check_size("message", &item.message, node.config.max_message_bytes)?;
    let mut stored = node.publisher.notify(std::slice::from_ref(&item)).await?;
    let n = stored
        .pop()
        .ok_or_else(|| ApiError::Internal("insert returned no row".into()))?;
    Ok((StatusCode::CREATED, Json(n)))
}

pub async fn create_batch(
    State(node): State<Arc<Node>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<NotificationList>), ApiError> {
    let batch: BatchRequest = parse(body)?;
    let n = batch.notifications.len();
    if n == 0 || n > BATCH_MAX {
        return Err(ApiError::BadRequest(format!(
            "notifications must hold 1 to {BATCH_MAX} items (got {n})"
        )));
    }
    for (i, item) in batch.notifications.iter().enumerate() {
        check_size(
            &format!("notifications[{i}].message"),
            &item.message,
            node.config.max_message_bytes,
        )?;
    }
    let notifications = node.publisher.notify(&batch.notifications).await?;
    Ok((
        StatusCode::CREATED,
        Json(NotificationList { notifications }),
    ))
}
