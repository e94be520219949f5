//! The public listener's router: the backend API and health ([`crate::api`]), the
//! client endpoints (WebSocket [`crate::upgrade`], Server-Sent Events [`crate::sse`]),
//! and the live page ([`crate::demo`]) when it is on. Every error, unknown routes and
//! wrong methods included, is `{"error": ...}`.

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use herald_shared::config::{SSE_COMMANDS_PATH, SSE_PATH, WS_PATH};

use crate::api;
use crate::node::Node;

/// The public router of `node`.
pub fn public(node: Arc<Node>) -> Router {
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
    let mut router = api::routes(&node).merge(client);
    if node.config.demo_enabled() {
        router = router.merge(crate::demo::router());
    }
    router
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .with_state(node)
}
