//! The one place where errors become HTTP responses: `{"error":{"code","message"}}` with the
//! status each [`ApiError`] variant calls for.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use wharf_proto::ApiError;

/// An [`ApiError`] on its way to an HTTP client.
#[derive(Debug)]
pub struct HttpError(pub ApiError);

impl From<ApiError> for HttpError {
    fn from(error: ApiError) -> Self {
        HttpError(error)
    }
}

/// The HTTP status of an error. Exhaustive on purpose: a new variant must choose its status.
pub fn status_of(error: &ApiError) -> StatusCode {
    match error {
        ApiError::InvalidName { .. } | ApiError::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
        ApiError::RepoNotFound { .. }
        | ApiError::RevisionNotFound { .. }
        | ApiError::PathNotFound { .. }
        | ApiError::SessionNotFound { .. }
        | ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
        ApiError::RepoExists { .. }
        | ApiError::RefExists { .. }
        | ApiError::StaleParent { .. }
        | ApiError::FileConflict { .. }
        | ApiError::MergeConflict { .. }
        | ApiError::NotFastForward { .. }
        | ApiError::Conflict { .. } => StatusCode::CONFLICT,
        ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
        ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        ApiError::GitFailed { .. } | ApiError::Internal { .. } => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let error = self.0;
        let status = status_of(&error);
        let mut body = serde_json::json!({
            "error": { "code": error.code(), "message": error.to_string() }
        });
        if let ApiError::MergeConflict { paths, .. } = &error {
            body["error"]["paths"] = serde_json::json!(paths);
        }
        let mut response = (status, axum::Json(body)).into_response();
        match &error {
            ApiError::Unavailable { retry_after_secs, .. } => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            ApiError::Unauthorized { .. } => {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"wharf\""),
                );
            }
            _ => {}
        }
        response
    }
}
