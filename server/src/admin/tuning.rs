//! `GET /admin/tuning` and `POST /admin/tuning/apply`: the OS tuning profile
//! against this host (see [`crate::tuning`]).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, State};
use herald_shared::admin::{ApplyReport, TuningReport};
use serde_json::json;

use super::audit::{Caller, record};
use crate::node::Node;

pub async fn report(State(node): State<Arc<Node>>) -> Json<TuningReport> {
    Json(crate::tuning::check(&node.profile, &node.host))
}

pub async fn apply(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
) -> Json<ApplyReport> {
    // Writing /proc and setrlimit are quick syscalls; no need for a blocking thread.
    let report = crate::tuning::apply(&node.profile, &node.host);
    node.refresh_limits();
    for item in &report.items {
        tracing::info!(key = %item.key, result = ?item.result, detail = %item.detail, "tuning apply");
    }
    record(
        &node,
        &caller,
        "tuning_apply",
        json!({"profile": report.profile}),
        serde_json::to_value(&report).unwrap_or_default(),
    )
    .await;
    Json(report)
}
