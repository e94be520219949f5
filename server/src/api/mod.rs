//! The public listener's HTTP surface: backend API (contract §4), health (§5), and the
//! WebSocket endpoint (§3, handled by [`crate::upgrade`]).
//!
//! Backend routes require the API key (checked before the body is read); every
//! error, including unknown routes and wrong methods, is `{"error": ...}`.

mod body;
pub use body::parse as parse_body;
pub mod error;
mod groups;
mod health;
mod notifications;
mod users;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use herald_shared::api::BATCH_MAX;
use herald_shared::config::{SSE_COMMANDS_PATH, SSE_PATH, WS_PATH};

use crate::node::Node;
pub use error::ApiError;

/// The public router: API, health, WebSocket upgrade.
pub fn router(node: Arc<Node>) -> Router {
    // A full batch of maximum-size messages, plus JSON framing per item.
    let body_limit = BATCH_MAX * (node.config.max_message_bytes + 256) + 64 * 1024;
    let api = Router::new()
        .route("/notifications", post(notifications::create))
        .route("/notifications/batch", post(notifications::create_batch))
        .route("/groups/{group}/events", post(groups::publish_event))
        .route("/events/batch", post(groups::publish_batch))
        .route("/users/{id}/notifications", get(users::list))
        .route("/users/{id}/presence", get(users::presence))
        .route_layer(middleware::from_fn_with_state(
            node.clone(),
            require_api_key,
        ))
        .layer(DefaultBodyLimit::max(body_limit));
    // What a client (a page, an app) calls, with CORS for pages on other origins. The
    // `OPTIONS` routes let a preflight reach the CORS layer, which answers it, instead
    // of the router's 405.
    let preflight = || async { axum::http::StatusCode::NO_CONTENT };
    let client = Router::new()
        .route(WS_PATH, get(crate::upgrade::upgrade))
        .route(SSE_PATH, get(crate::sse::stream).options(preflight))
        .route(
            SSE_COMMANDS_PATH,
            post(crate::sse::command).options(preflight),
        )
        .layer(DefaultBodyLimit::max(node.config.max_frame_bytes))
        .layer(crate::sse::cors(&node));
    let mut router = Router::new()
        .nest("/api/v1", api)
        .merge(client)
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz));
    if node.config.demo_enabled() {
        router = router.merge(crate::demo::router());
    }
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(node)
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
