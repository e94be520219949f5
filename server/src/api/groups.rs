//! `POST /api/v1/groups/<group>/events`: ephemeral, not stored, every node.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use herald_shared::GroupName;
use herald_shared::api::{Accepted, EventRequest};

use super::body::{check_size, parse};
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
    check_size("payload", &req.payload, node.config.max_message_bytes)?;
    node.publisher
        .event(&group, &req.payload)
        .await
        .map_err(|e| ApiError::Unavailable(format!("event not accepted: {e}"), 1))?;
    Ok((StatusCode::ACCEPTED, Json(Accepted { accepted: true })))
}
