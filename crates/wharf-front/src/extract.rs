//! Request extractors whose failures are JSON errors like every other error: a malformed body
//! is a 400 with `invalid_request`, an oversized one a 413, never axum's plain-text rejection.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use wharf_proto::ApiError;

use crate::error::HttpError;
use crate::FrontState;

type Shared = std::sync::Arc<FrontState>;

/// A JSON body of at most [`crate::HttpLimits::max_json_body_bytes`], sent as
/// `Content-Type: application/json` (415 otherwise: a browser's cross-site form cannot send
/// that type without a CORS preflight, which the front never grants).
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Shared> for JsonBody<T> {
    type Rejection = HttpError;

    async fn from_request(request: Request, state: &Shared) -> Result<Self, Self::Rejection> {
        require_json(request.headers())?;
        let bytes = read_body(request, state.config.limits.max_json_body_bytes).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// A JSON body of at most [`crate::FrontConfig::max_api_body_bytes`]: the commit route's, whose
/// body carries file contents. Otherwise as [`JsonBody`].
pub struct LargeJsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Shared> for LargeJsonBody<T> {
    type Rejection = HttpError;

    async fn from_request(request: Request, state: &Shared) -> Result<Self, Self::Rejection> {
        require_json(request.headers())?;
        let bytes = read_body(request, state.config.max_api_body_bytes).await?;
        parse_json(&bytes).map(LargeJsonBody)
    }
}

/// The seed API's arguments: a JSON body, or for a request without a body, the same fields as
/// query parameters. A body must be JSON, as for [`JsonBody`].
pub struct BodyOrQuery<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Shared> for BodyOrQuery<T> {
    type Rejection = HttpError;

    async fn from_request(request: Request, state: &Shared) -> Result<Self, Self::Rejection> {
        let query = request.uri().query().unwrap_or("").to_owned();
        let announced = announced_length(request.headers());
        let chunked = request.headers().contains_key(axum::http::header::TRANSFER_ENCODING);
        if announced.unwrap_or(0) > 0 || chunked {
            require_json(request.headers())?;
        }
        let bytes = read_body(request, state.config.limits.max_json_body_bytes).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return serde_urlencoded_from_query(&query).map(BodyOrQuery);
        }
        parse_json(&bytes).map(BodyOrQuery)
    }
}

/// Refuses a body that is not declared as JSON (`application/json`, parameters allowed, or an
/// `application/*+json` type).
fn require_json(headers: &axum::http::HeaderMap) -> Result<(), HttpError> {
    let given = headers
        .get(axum::http::header::CONTENT_TYPE)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
        .unwrap_or_default();
    let essence = given.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let json = essence == "application/json"
        || essence.strip_prefix("application/").is_some_and(|subtype| subtype.ends_with("+json"));
    if json {
        Ok(())
    } else {
        Err(HttpError(ApiError::UnsupportedMediaType {
            given: given.chars().take(100).collect(),
            expected: "Content-Type: application/json".into(),
        }))
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

/// Reads a body of at most `limit` bytes: refused from its announced length before a byte is
/// read, and cut off as soon as a body without one passes the limit.
async fn read_body(request: Request, limit: usize) -> Result<Bytes, HttpError> {
    let too_large = || {
        HttpError(ApiError::TooLarge {
            what: "the request body".into(),
            limit: limit as u64,
        })
    };
    if announced_length(request.headers()).is_some_and(|length| length > limit as u64) {
        return Err(too_large());
    }
    let mut frames = request.into_body().into_data_stream();
    let mut body = bytes::BytesMut::new();
    while let Some(frame) = frames.next().await {
        let frame = frame.map_err(|error| ApiError::invalid(format!("could not read the request body: {error}")))?;
        if body.len() + frame.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&frame);
    }
    Ok(body.freeze())
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
