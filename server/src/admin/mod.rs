//! The admin listener (contract §6): metrics for Prometheus, status and drain for
//! operators and the console.
//!
//! Everything but `/metrics` needs `Authorization: Bearer <HERALD_ADMIN_TOKEN>`,
//! compared in constant time.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use herald_shared::admin::{AdminStatus, DrainRequest};

use crate::api::ApiError;
use crate::limits;
use crate::node::{Node, VERSION};

/// Longest drain window an operator may ask for.
pub const DRAIN_WINDOW_MAX_S: u64 = 3600;

pub fn router(node: Arc<Node>) -> Router {
    let mut guarded = Router::new()
        .route("/admin/status", get(status))
        .route("/admin/drain", post(drain))
        .route("/admin/undrain", post(undrain));
    let mut open = Router::new();
    if node.config.metrics_require_token {
        guarded = guarded.route("/metrics", get(metrics));
    } else {
        open = open.route("/metrics", get(metrics));
    }
    let guarded = guarded.route_layer(middleware::from_fn_with_state(node.clone(), require_admin));
    open.merge(guarded)
        .fallback(crate::api::not_found)
        .method_not_allowed_fallback(crate::api::method_not_allowed)
        .with_state(node)
}

async fn require_admin(
    State(node): State<Arc<Node>>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    match crate::auth::bearer(req.headers()) {
        None => Err(ApiError::Unauthorized(
            "missing admin token: Authorization: Bearer <HERALD_ADMIN_TOKEN>".into(),
        )),
        Some(t) if node.auth.is_admin_token(t) => Ok(next.run(req).await),
        Some(_) => Err(ApiError::Unauthorized("wrong admin token".into())),
    }
}

async fn metrics(State(node): State<Arc<Node>>) -> impl IntoResponse {
    node.metrics.fd_open.set(limits::fd_open() as i64);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        node.metrics.encode(),
    )
}

pub fn status_of(node: &Node) -> AdminStatus {
    AdminStatus {
        node: node.id.clone(),
        version: VERSION.to_owned(),
        state: node.lifecycle.state().as_str().to_owned(),
        connections: node.hub.connections() as u64,
        capacity: node.capacity as u64,
        fd_limit: node.fd_limit,
        fd_open: limits::fd_open(),
        uptime_s: node.started.elapsed().as_secs(),
        redis: node.broker.health().as_str().to_owned(),
        store: if node.store_up.load(Ordering::Relaxed) {
            "up"
        } else {
            "down"
        }
        .to_owned(),
        drain_remaining: node.lifecycle.drain_remaining() as u64,
    }
}

async fn status(State(node): State<Arc<Node>>) -> Json<AdminStatus> {
    Json(status_of(&node))
}

async fn drain(
    State(node): State<Arc<Node>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<AdminStatus>), ApiError> {
    let req: DrainRequest = crate::api::parse_body(body)?;
    if req.window_s > DRAIN_WINDOW_MAX_S {
        return Err(ApiError::BadRequest(format!(
            "window_s must be at most {DRAIN_WINDOW_MAX_S}"
        )));
    }
    node.lifecycle.drain(Duration::from_secs(req.window_s));
    Ok((StatusCode::ACCEPTED, Json(status_of(&node))))
}

async fn undrain(State(node): State<Arc<Node>>) -> Json<AdminStatus> {
    node.lifecycle.undrain();
    Json(status_of(&node))
}
