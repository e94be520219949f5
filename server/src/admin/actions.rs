//! `POST /admin/drain` and `POST /admin/undrain`, each recorded in the audit log.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use herald_shared::admin::{AdminStatus, DrainRequest};
use serde_json::json;

use super::DRAIN_WINDOW_MAX_S;
use super::audit::{Caller, record};
use super::status::status_of;
use crate::api::ApiError;
use crate::node::Node;

pub async fn drain(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<AdminStatus>), ApiError> {
    let req: Result<DrainRequest, ApiError> =
        crate::api::parse_body(body).and_then(|r: DrainRequest| {
            if r.window_s.duration() > Duration::from_secs(DRAIN_WINDOW_MAX_S) {
                Err(ApiError::BadRequest(format!(
                    "window_s must be at most {DRAIN_WINDOW_MAX_S}"
                )))
            } else {
                Ok(r)
            }
        });
    let req = match req {
        Ok(r) => r,
        Err(e) => {
            record(
                &node,
                &caller,
                "drain",
                json!(null),
                json!({"error": e.to_string()}),
            )
            .await;
            return Err(e);
        }
    };
    node.lifecycle.drain(req.window_s.duration());
    let status = status_of(&node);
    record(
        &node,
        &caller,
        "drain",
        json!({"window_s": req.window_s}),
        json!({
            "state": status.state, "connections": status.connections
        }),
    )
    .await;
    Ok((StatusCode::ACCEPTED, Json(status)))
}

pub async fn undrain(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
) -> Json<AdminStatus> {
    node.lifecycle.undrain();
    let status = status_of(&node);
    record(
        &node,
        &caller,
        "undrain",
        json!({}),
        json!({"state": status.state}),
    )
    .await;
    Json(status)
}
