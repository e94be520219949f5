//! `GET /api/v1/users/<id>/notifications` and `/presence`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Query, State};
use herald_shared::UserId;
use herald_shared::api::{NotificationList, Presence};

use super::error::ApiError;
use crate::node::Node;
use crate::store::ListQuery;

/// Largest page the listing returns.
pub const LIST_MAX: i64 = 1000;

fn user(path: Result<Path<String>, PathRejection>) -> Result<UserId, ApiError> {
    let Path(id) = path.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    UserId::parse(id).map_err(|e| ApiError::BadRequest(format!("user id {e}")))
}

/// Reads `unread`, `limit` and `before`, refusing values it cannot use.
fn list_query(q: &HashMap<String, String>) -> Result<ListQuery, ApiError> {
    let unread_only = match q.get("unread").map(String::as_str) {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") => true,
        Some(v) => {
            return Err(ApiError::BadRequest(format!(
                "unread must be true or false (got {v:?})"
            )));
        }
    };
    let limit = match q.get("limit") {
        None => 50,
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=LIST_MAX).contains(l))
            .ok_or_else(|| {
                ApiError::BadRequest(format!("limit must be 1 to {LIST_MAX} (got {v:?})"))
            })?,
    };
    let before = match q.get("before") {
        None => None,
        Some(v) => Some(v.parse::<i64>().ok().filter(|b| *b > 0).ok_or_else(|| {
            ApiError::BadRequest(format!("before must be a positive id (got {v:?})"))
        })?),
    };
    Ok(ListQuery {
        unread_only,
        before,
        limit,
    })
}

pub async fn list(
    State(node): State<Arc<Node>>,
    path: Result<Path<String>, PathRejection>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<NotificationList>, ApiError> {
    let user = user(path)?;
    let q = list_query(&q)?;
    let notifications = node.store.list(&user, q).await?;
    Ok(Json(NotificationList { notifications }))
}

pub async fn presence(
    State(node): State<Arc<Node>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Presence>, ApiError> {
    let user = user(path)?;
    let connections = node
        .presence
        .connections(&user)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string(), 1))?;
    Ok(Json(Presence {
        user: user.into_string(),
        online: connections > 0,
        connections,
    }))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn listing_parameters() {
        let d = list_query(&q(&[])).unwrap();
        assert!(!d.unread_only && d.before.is_none() && d.limit == 50);
        let p = list_query(&q(&[("unread", "true"), ("limit", "7"), ("before", "99")])).unwrap();
        assert!(p.unread_only && p.before == Some(99) && p.limit == 7);
        assert!(list_query(&q(&[("limit", "0")])).is_err());
        assert!(list_query(&q(&[("limit", "1001")])).is_err());
        assert!(list_query(&q(&[("limit", "x")])).is_err());
        assert!(list_query(&q(&[("before", "-1")])).is_err());
        assert!(list_query(&q(&[("unread", "yes")])).is_err());
    }
    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any `unread`, `limit` and `before`: the documented values are read, and
        /// anything else is a 400 naming the parameter.
        #[test]
        fn any_listing_parameters(
            unread in proptest::option::of(prop_oneof!["true|false|0|1", ".{0,5}"]),
            limit in proptest::option::of(prop_oneof!["-?[0-9]{1,5}", ".{0,5}"]),
            before in proptest::option::of(prop_oneof!["-?[0-9]{1,20}", ".{0,5}"]),
        ) {
            let mut q = HashMap::new();
            for (k, v) in [("unread", &unread), ("limit", &limit), ("before", &before)] {
                if let Some(v) = v {
                    q.insert(k.to_owned(), v.clone());
                }
            }
            let unread_ok = unread.as_deref().is_none_or(|v| ["true", "false", "0", "1"].contains(&v));
            let limit_ok = limit.as_deref().is_none_or(|v| v.parse::<i64>().is_ok_and(|l| (1..=LIST_MAX).contains(&l)));
            let before_ok = before.as_deref().is_none_or(|v| v.parse::<i64>().is_ok_and(|b| b > 0));
            match list_query(&q) {
                Ok(l) => {
                    prop_assert!(unread_ok && limit_ok && before_ok);
                    prop_assert_eq!(l.limit, limit.map_or(50, |v| v.parse().unwrap()));
                    prop_assert_eq!(l.unread_only, matches!(unread.as_deref(), Some("true" | "1")));
                }
                Err(ApiError::BadRequest(why)) => {
                    let first = if !unread_ok { "unread" } else if !limit_ok { "limit" } else { "before" };
                    prop_assert!(!(unread_ok && limit_ok && before_ok));
                    prop_assert!(why.starts_with(first), "{why}");
                }
                Err(other) => prop_assert!(false, "{other:?}"),
            }
        }
    }
}
