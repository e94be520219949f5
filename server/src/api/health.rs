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
    let state = node.lifecycle.state().as_str();
    let store = if node.store_up.load(std::sync::atomic::Ordering::Relaxed) {
        "up"
    } else {
        "down"
    };
    let broker = node.broker.health().as_str();
    let status = if node.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(json!({"state": state, "store": store, "redis": broker})),
    )
}
