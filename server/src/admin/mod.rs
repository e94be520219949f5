//! The admin listener (contract §6): metrics for Prometheus; status, drain, tuning
//! and the audit log for operators and the console.
//!
//! Everything but `/metrics` (unless configured) needs
//! `Authorization: Bearer <HERALD_ADMIN_TOKEN>`, compared in constant time. Every
//! action, and every refused attempt, is written to the audit log in the store.

mod actions;
mod audit;
mod status;
mod tuning;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};

use crate::node::Node;

/// Longest drain window an operator may ask for.
pub const DRAIN_WINDOW_MAX_S: u64 = 3600;

pub fn router(node: Arc<Node>) -> Router {
    let mut guarded = Router::new()
        .route("/admin/status", get(status::status))
        .route("/admin/drain", post(actions::drain))
        .route("/admin/undrain", post(actions::undrain))
        .route("/admin/tuning", get(tuning::report))
        .route("/admin/tuning/apply", post(tuning::apply))
        .route("/admin/audit", get(audit::log));
    let mut open = Router::new();
    if node.config.metrics_require_token {
        guarded = guarded.route("/metrics", get(status::metrics));
    } else {
        open = open.route("/metrics", get(status::metrics));
    }
    let guarded = guarded.route_layer(axum::middleware::from_fn_with_state(
        node.clone(),
        audit::require_admin,
    ));
    open.merge(guarded)
        .fallback(crate::api::not_found)
        .method_not_allowed_fallback(crate::api::method_not_allowed)
        .with_state(node)
}
