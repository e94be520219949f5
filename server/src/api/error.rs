//! API errors: each variant picks its status; internal causes are logged, never sent.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use herald_shared::api::ErrorBody;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    TooLarge(String),
    /// 429: the caller holds or asks for more than its share.
    #[error("{0}")]
    TooMany(String),
    /// 503 with `Retry-After` (seconds).
    #[error("{0}")]
    Unavailable(String, u32),
    #[error("internal error")]
    Internal(String),
    /// Any other status with its own text (upgrade rejections).
    #[error("{1}")]
    Other(StatusCode, String),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(why) => {
                tracing::warn!(%why, "store unavailable");
                ApiError::Unavailable("store unavailable; nothing was written".into(), 1)
            }
            StoreError::Db(why) => ApiError::Internal(why),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, retry) = match &self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, None),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, None),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, None),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, None),
            ApiError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, None),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, None),
            ApiError::TooMany(_) => (StatusCode::TOO_MANY_REQUESTS, None),
            ApiError::Unavailable(_, s) => (StatusCode::SERVICE_UNAVAILABLE, Some(*s)),
            ApiError::Internal(why) => {
                tracing::error!(%why, "internal error");
                (StatusCode::INTERNAL_SERVER_ERROR, None)
            }
            ApiError::Other(s, _) => (*s, None),
        };
        let mut resp = (
            status,
            Json(ErrorBody {
                error: self.to_string(),
            }),
        )
            .into_response();
        if let Some(s) = retry {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}
