//! Request extractors whose failures are JSON errors like every other error: a malformed body
//! is a 400 with `invalid_request`, an oversized one a 413, never axum's plain-text rejection.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{Method, StatusCode};
use serde::de::DeserializeOwned;
use wharf_proto::ApiError;

use crate::error::HttpError;
use crate::FrontState;

type Shared = std::sync::Arc<FrontState>;

/// A JSON body.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Shared> for JsonBody<T> {
    type Rejection = HttpError;

    async fn from_request(request: Request, state: &Shared) -> Result<Self, Self::Rejection> {
        let bytes = read_body(request, state).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// The seed API's arguments: a JSON body, or for a GET without a body, the same fields as
/// query parameters.
pub struct BodyOrQuery<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Shared> for BodyOrQuery<T> {
    type Rejection = HttpError;

    async fn from_request(request: Request, state: &Shared) -> Result<Self, Self::Rejection> {
        let is_get = request.method() == Method::GET;
        let query = request.uri().query().unwrap_or("").to_owned();
        let bytes = read_body(request, state).await?;
        if is_get && bytes.iter().all(u8::is_ascii_whitespace) {
            return serde_urlencoded_from_query(&query).map(BodyOrQuery);
        }
        parse_json(&bytes).map(BodyOrQuery)
    }
}

fn serde_urlencoded_from_query<T: DeserializeOwned>(query: &str) -> Result<T, HttpError> {
    let uri: axum::http::Uri = format!("/?{query}")
        .parse()
        .map_err(|_| ApiError::invalid("malformed query string"))?;
    axum::extract::Query::<T>::try_from_uri(&uri)
        .map(|axum::extract::Query(value)| value)
        .map_err(|rejection| HttpError(ApiError::invalid(rejection.body_text())))
}

async fn read_body(request: Request, state: &Shared) -> Result<Bytes, HttpError> {
    let limit = state.config.max_api_body_bytes;
    let too_large = || {
        HttpError(ApiError::TooLarge {
            what: "the request body".into(),
            limit: limit as u64,
        })
    };
    // An announced length over the limit is refused before a byte of the body is read.
    if announced_length(request.headers()).is_some_and(|length| length > limit as u64) {
        return Err(too_large());
    }
    Bytes::from_request(request, state).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large()
        } else {
            HttpError(ApiError::invalid(format!(
                "could not read the request body: {}",
                rejection.body_text()
            )))
        }
    })
}

fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, HttpError> {
    serde_json::from_slice(bytes)
        .map_err(|error| HttpError(ApiError::invalid(format!("malformed JSON body: {error}"))))
}

/// The `Content-Length` of a request, if it has a valid one.
pub(crate) fn announced_length(headers: &axum::http::HeaderMap) -> Option<u64> {
    headers
        .get(axum::http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Path parameters; a malformed one (a job id that is not a number) is a JSON 400.
pub struct JsonPath<T>(pub T);

impl<T: DeserializeOwned + Send> axum::extract::FromRequestParts<Shared> for JsonPath<T> {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &Shared) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| JsonPath(value))
            .map_err(|rejection| HttpError(ApiError::invalid(format!("malformed path: {}", rejection.body_text()))))
    }
}
