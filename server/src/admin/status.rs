//! `GET /metrics` and `GET /admin/status`: what a node is doing now.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use herald_shared::admin::AdminStatus;
use herald_shared::health::{self, Readiness};

use crate::limits;
use crate::node::{Node, VERSION};

pub async fn metrics(State(node): State<Arc<Node>>) -> impl IntoResponse {
    // Sampled at scrape time: cheap, and always current.
    node.metrics.fd_open.set(limits::fd_open() as i64);
    node.metrics.sample_health(&node.readiness());
    node.metrics
        .drain_remaining
        .set(node.lifecycle.drain_remaining() as i64);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        node.metrics.encode(),
    )
}

pub fn status_of(node: &Node) -> AdminStatus {
    let Readiness {
        state,
        store,
        redis,
    } = node.readiness();
    AdminStatus {
        node: node.id.clone(),
        version: VERSION.to_owned(),
        state,
        connections: node.hub.connections() as u64,
        capacity: node.capacity() as u64,
        fd_limit: node.fd_limit(),
        fd_open: limits::fd_open(),
        uptime_s: node.started.elapsed().as_secs(),
        redis,
        store,
        drain_remaining: node.lifecycle.drain_remaining() as u64,
    }
}

/// The broker's health as the contract names it. `broker/` keeps its own enum for
/// now; once it uses [`health::BrokerHealth`] itself, this mapping goes.
impl From<crate::broker::BrokerHealth> for health::BrokerHealth {
    fn from(h: crate::broker::BrokerHealth) -> Self {
        use crate::broker::BrokerHealth as B;
        match h {
            B::Off => Self::Off,
            B::Up => Self::Up,
            B::Down => Self::Down,
        }
    }
}

pub async fn status(State(node): State<Arc<Node>>) -> Json<AdminStatus> {
    Json(status_of(&node))
}
