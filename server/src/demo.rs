//! The live page at `/demo/`: the JavaScript client library (`clients/js`) showing a
//! user's notifications and events as they arrive, so a new user sees Herald work in
//! a browser with nothing but a node and a token.
//!
//! The files are compiled into the binary, so the page is the library as built. It
//! weakens nothing: it is a client like any other (the token comes from the URL
//! fragment, which never reaches a server, or is pasted in), and a strict content
//! security policy allows only this origin's own scripts, styles and connections.
//! A single node serves it unless told not to; a cluster only when asked
//! ([`crate::config::Config::demo_enabled`]).

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

const INDEX: &str = include_str!("../../clients/js/demo/index.html");
const PAGE_SCRIPT: &str = include_str!("../../clients/js/demo/demo.js");
const PAGE_STYLE: &str = include_str!("../../clients/js/demo/demo.css");
const LIBRARY: &str = include_str!("../../clients/js/src/herald.js");

/// Only this origin's files, and connections back to it (WebSocket included:
/// `'self'` covers `ws:`/`wss:` to the same host).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self'; base-uri 'none'; \
                   form-action 'self'; frame-ancestors 'none'";

/// `/demo/` and its files (`/demo` redirects there, so relative imports resolve).
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/demo", get(|| async { Redirect::permanent("/demo/") }))
        .route(
            "/demo/",
            get(|| async { file("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/demo/demo.js",
            get(|| async { file("text/javascript; charset=utf-8", PAGE_SCRIPT) }),
        )
        .route(
            "/demo/demo.css",
            get(|| async { file("text/css; charset=utf-8", PAGE_STYLE) }),
        )
        .route(
            "/demo/herald.js",
            get(|| async { file("text/javascript; charset=utf-8", LIBRARY) }),
        )
}

fn file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}
