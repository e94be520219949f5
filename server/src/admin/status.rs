//! `GET /metrics` and `GET /admin/status`: what a node is doing now.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use herald_shared::admin::AdminStatus;

use crate::limits;
use crate::node::{Node, VERSION};

pub async fn metrics(State(node): State<Arc<Node>>) -> impl IntoResponse {
    // Sampled at scrape time: cheap, and always current.
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
        capacity: node.capacity() as u64,
        fd_limit: node.fd_limit(),
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

pub async fn status(State(node): State<Arc<Node>>) -> Json<AdminStatus> {
    Json(status_of(&node))
}
