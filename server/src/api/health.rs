//! `/healthz` (the process runs) and `/readyz` (send me clients), for load balancers.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::json;

use crate::node::Node;

pub async fn healthz() -> impl IntoResponse {
    (StatusCode::OK, axum::Json(json!({"status": "ok"})))
}

/// 200 while serving with the store (and broker) reachable; 503 with the reason
/// while draining, drained, or cut off from a dependency.
pub async fn readyz(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let body = node.readiness();
    let status = if body.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body))
}
