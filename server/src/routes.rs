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

/// The public router of `node`, as the node serves it on its own listener: every
/// route, and `{"error"}` answers for unknown routes and wrong methods.
pub fn public(node: Arc<Node>) -> Router {
    routes(&node)
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .with_state(node)
}

/// The same routes with no fallback, for a host application to merge into its own
/// router (axum refuses to merge two routers that both have one).
pub fn mergeable(node: Arc<Node>) -> Router {
    routes(&node).with_state(node)
}

fn routes(node: &Arc<Node>) -> Router<Arc<Node>> {
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
        .layer(crate::sse::cors(node));
    let router = api::routes(node).merge(client);
    if node.config.demo_enabled() {
        router.merge(crate::demo::router())
    } else {
        router
    }
}
