//! The backend API (contract §4) and health (§5), which [`crate::routes`] serves on
//! the public listener beside the client endpoints.
//!
//! Backend routes require the API key (checked before the body is read); every
//! error, including unknown routes and wrong methods, is `{"error": ...}`.

mod body;
pub use body::parse as parse_body;
pub(crate) use body::{check_batch_len, check_value};
pub mod error;
mod groups;
mod health;
mod notifications;
mod users;
pub(crate) use users::LIST_MAX;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use herald_shared::api::BATCH_MAX;

use crate::node::Node;
pub use error::ApiError;

/// The backend API under `/api/v1` and the health checks, for the node's state.
pub fn routes(node: &Arc<Node>) -> Router<Arc<Node>> {
    // A full batch of maximum-size messages, plus JSON framing per item.
    let body_limit = BATCH_MAX * (node.config.max_message_bytes + 256) + 64 * 1024;
    // Full paths rather than `nest("/api/v1", ..)`: a nested router rewrites every
    // request's URI (a parse and an allocation per request) to strip the prefix.
    let api = Router::new()
        .route("/api/v1/notifications", post(notifications::create))
        .route(
            "/api/v1/notifications/batch",
            post(notifications::create_batch),
        )
        .route("/api/v1/groups/{group}/events", post(groups::publish_event))
        .route("/api/v1/events/batch", post(groups::publish_batch))
        .route("/api/v1/users/{id}/notifications", get(users::list))
        .route("/api/v1/users/{id}/presence", get(users::presence))
        .route_layer(middleware::from_fn_with_state(
            node.clone(),
            require_api_key,
        ))
        .layer(DefaultBodyLimit::max(body_limit));
    api.route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
}

/// What the public listener answers while the node is still starting (store not
/// reached yet): alive, not ready.
pub fn starting_router() -> Router {
    async fn starting() -> ApiError {
        ApiError::Unavailable("node is starting".into(), 1)
    }
    Router::new()
        .route("/healthz", get(health::healthz))
        .fallback(starting)
}

async fn require_api_key(
    State(node): State<Arc<Node>>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if crate::auth::bearer(req.headers()).is_none() {
        return Err(ApiError::Unauthorized(
            "missing API key: Authorization: Bearer <HERALD_API_KEY>".into(),
        ));
    }
    if !node.auth.is_api_key(req.headers()) {
        return Err(ApiError::Unauthorized("wrong API key".into()));
    }
    Ok(next.run(req).await)
}

pub async fn not_found(req: Request) -> ApiError {
    ApiError::NotFound(format!(
        "no route for {} {}",
        req.method(),
        req.uri().path()
    ))
}

pub async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::MethodNotAllowed(format!(
        "method {} not allowed on {}",
        req.method(),
        req.uri().path()
    ))
}
