//! The one place where errors become HTTP responses: `{"error":{"code","message"}}` with the
//! status each [`ApiError`] variant calls for, or the message as plain text on git's routes.

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
        ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        ApiError::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ApiError::GitFailed { .. } | ApiError::Internal { .. } => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

/// The body of every error reply.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// What went wrong: a stable code to match on and a message for people.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// A stable code (`repo_not_found`, `invalid_request`, `unavailable`, ...).
    pub code: String,
    /// What happened, for people.
    pub message: String,
    /// For a merge conflict: the conflicting paths.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<String>>,
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let error = self.0;
        let status = status_of(&error);
        let body = ErrorBody {
            error: ErrorDetail {
                code: error.code().to_owned(),
                message: error.to_string(),
                paths: match &error {
                    ApiError::MergeConflict { paths, .. } => Some(paths.clone()),
                    _ => None,
                },
            },
        };
        let response = (status, axum::Json(body)).into_response();
        with_headers(response, &error)
    }
}

impl HttpError {
    /// The error as git's smart HTTP clients want it: the same status and headers, with the
    /// message as `text/plain`, which git prints line by line as `remote: …` before its own
    /// `fatal: …` (a JSON body it does not print at all; issue 13, point 9).
    pub fn into_plain_response(self) -> Response {
        let error = self.0;
        let status = status_of(&error);
        let text = format!("Wharf: {error}\n");
        let response = (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response();
        with_headers(response, &error)
    }
}

/// Adds the headers an error calls for: `Retry-After` when retrying helps, `WWW-Authenticate`
/// when a token is missing or wrong.
fn with_headers(mut response: Response, error: &ApiError) -> Response {
    match error {
        ApiError::Unavailable { retry_after_secs, .. } | ApiError::RateLimited { retry_after_secs, .. } => {
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
