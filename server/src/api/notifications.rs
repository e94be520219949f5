//! `POST /api/v1/notifications` and `/batch`: store, then fan out.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use herald_shared::Notification;
use herald_shared::api::{BatchRequest, NewNotification, NotificationList};

use super::body::{check_batch_len, check_value, parse};
use super::error::ApiError;
use crate::node::Node;

pub async fn create(
    State(node): State<Arc<Node>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Notification>), ApiError> {
    let item: NewNotification = parse(body)?;
    check_value("message", &item.message, node.config.max_message_bytes)?;
    let mut stored = notify(&node, vec![item]).await?;
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
    check_batch_len("notifications", batch.notifications.len())?;
    for (i, item) in batch.notifications.iter().enumerate() {
        check_value(
            &format!("notifications[{i}].message"),
            &item.message,
            node.config.max_message_bytes,
        )?;
    }
    let notifications = notify(&node, batch.notifications).await?;
    Ok((
        StatusCode::CREATED,
        Json(NotificationList { notifications }),
    ))
}

async fn notify(
    node: &Arc<Node>,
    items: Vec<NewNotification>,
) -> Result<Vec<Notification>, ApiError> {
    Ok(node.publisher.notify_combined(items).await?)
}
