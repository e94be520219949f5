//! Who did what: admin authentication and the audit log.
//!
//! The caller of an admin request is the fingerprint of the token it presented
//! (never the token) and its peer address. Refused attempts are recorded too, at
//! most one a second per node.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use herald_shared::admin::AuditLog;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::api::ApiError;
use crate::node::Node;
use crate::store::NewAudit;

/// The authenticated caller, for handlers that record what they did.
#[derive(Debug, Clone)]
pub struct Caller(pub String);

/// First 8 hex digits of the token's SHA-256: identifies a token without revealing it.
pub fn fingerprint(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn peer(req: &Request) -> String {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "unknown".to_owned(), |c| c.0.to_string())
}

pub async fn require_admin(
    State(node): State<Arc<Node>>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let from = peer(&req);
    let what = json!({"method": req.method().as_str(), "path": req.uri().path()});
    match crate::auth::bearer(req.headers()) {
        Some(t) if node.auth.is_admin_token(t) => {
            let caller = Caller(format!("token:{} from {from}", fingerprint(t)));
            req.extensions_mut().insert(caller);
            Ok(next.run(req).await)
        }
        presented => {
            let (who, why) = match presented {
                None => (
                    format!("anonymous from {from}"),
                    "missing admin token: Authorization: Bearer <HERALD_ADMIN_TOKEN>",
                ),
                Some(t) => (
                    format!("token:{} from {from}", fingerprint(t)),
                    "wrong admin token",
                ),
            };
            // At most one row a second: a scanner hammering the port must not be
            // able to grow the table or tie up the store. The rest are logged.
            let now = crate::outbox::unix_micros();
            let last = node.auth_failure_audited_us.load(Ordering::Relaxed);
            if now.saturating_sub(last) >= 1_000_000
                && node
                    .auth_failure_audited_us
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                record(
                    &node,
                    &Caller(who),
                    "auth_failed",
                    what,
                    json!({"status": 401}),
                )
                .await;
            } else {
                tracing::warn!(caller = %who, %what, "admin auth failed (not audited: rate limit)");
            }
            Err(ApiError::Unauthorized(why.into()))
        }
    }
}

/// Appends an entry; a store failure is logged, never turned into a failed action
/// (the action already happened).
pub async fn record(
    node: &Node,
    caller: &Caller,
    action: &'static str,
    args: Value,
    result: Value,
) {
    let entry = NewAudit {
        node: node.id.clone(),
        action,
        args,
        result,
        caller: caller.0.clone(),
    };
    tracing::info!(action, caller = %entry.caller, args = %entry.args, result = %entry.result, "admin action");
    if let Err(e) = node.store.audit(&entry).await {
        tracing::error!(error = %e, action, "audit log write failed");
    }
}

#[derive(Debug, Deserialize)]
pub struct AuditQuery {
    limit: Option<i64>,
}

/// `GET /admin/audit?limit=50`: the newest entries first.
pub async fn log(
    State(node): State<Arc<Node>>,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<AuditLog>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest("limit must be 1 to 1000".into()));
    }
    Ok(Json(AuditLog {
        entries: node.store.audit_log(limit).await?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_short_stable_and_not_the_token() {
        let f = fingerprint("secret-token");
        assert_eq!(f.len(), 8);
        assert_eq!(f, fingerprint("secret-token"));
        assert_ne!(f, fingerprint("secret-tokem"));
        assert!(!"secret-token".contains(&f));
    }
}
