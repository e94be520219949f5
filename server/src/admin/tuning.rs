//! `GET /admin/tuning` and `POST /admin/tuning/apply`: the OS tuning profile
//! against this host (see [`crate::tuning`]).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, Query, State};
use herald_shared::admin::{ApplyReport, TuningReport};
use serde::Deserialize;
use serde_json::json;

use super::audit::{Caller, record};
use crate::api::ApiError;
use crate::node::Node;

#[derive(Debug, Deserialize)]
pub struct TuningQuery {
    key: Option<String>,
}

/// `GET /admin/tuning`, or `?key=<sysctl>` for one item. A key that is not a
/// sysctl name is refused (400) before anything is read: keys become paths under
/// the sysctl root ([`crate::tuning::check_key`]). A valid key the profile does not
/// hold is 404.
pub async fn report(
    State(node): State<Arc<Node>>,
    query: Result<Query<TuningQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<TuningReport>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    if let Some(key) = &q.key {
        crate::tuning::check_key(key).map_err(ApiError::BadRequest)?;
        if !node.profile.items.iter().any(|i| &i.key == key) {
            return Err(ApiError::NotFound(format!(
                "key {key:?} is not in the tuning profile {}",
                node.profile.name
            )));
        }
    }
    let mut report = crate::tuning::check(&node.profile, &node.host);
    if let Some(key) = q.key {
        report.items.retain(|i| i.key == key);
    }
    Ok(Json(report))
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
