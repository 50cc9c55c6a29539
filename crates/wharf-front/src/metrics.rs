//! What the front tells operators: `/metrics`, the Prometheus service-discovery list, and the
//! request layers that give every request an id, a span and its counts.
//!
//! The layers, outermost first ([`layers`]): an `x-request-id` from the client is kept when it
//! is a usable id and replaced otherwise; tower-http sets a new one when there is none and
//! echoes it in the reply; tower-http's `TraceLayer` opens the `http` span with the id, method
//! and route, so every log line of the request, handler included, carries them; [`record`]
//! runs the request inside the id's [`RequestId::scope`] (so the calls it sends to nodes carry
//! the id) and counts it by route template, method and status.
//!
//! Routes are labelled by template (`/api/v1/repos/{owner}/{name}`), never by raw path, and
//! unknown methods as `other`, so a client cannot grow the number of series. Smart HTTP and the
//! host-routed app router are not axum routes; they name their template in a [`RouteLabel`]
//! response extension.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use wharf_proto::{NodeReply, NodeRequest, RequestId, ROUTERS_GROUP};

use crate::FrontState;

/// The header that carries the request id, both ways.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// How long the service-discovery list waits for each other front to say where it serves
/// metrics. A front that does not answer in time is left out of this answer; Prometheus asks
/// again at its next refresh.
const FRONT_ANSWER_TIMEOUT: Duration = Duration::from_secs(1);

/// The route template of a response whose request matched no axum route (smart HTTP), or whose
/// matched route is not what served it (an app routed by `Host`), set by its handler for
/// [`record`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct RouteLabel(pub &'static str);

/// The route label of requests nothing recognised: one series for all of them.
const UNMATCHED: &str = "unmatched";

/// Adds the request-id, trace and metrics layers to the front's router (see the module doc).
pub(crate) fn layers(router: axum::Router<Arc<FrontState>>) -> axum::Router<Arc<FrontState>> {
    let header_name = header::HeaderName::from_static(REQUEST_ID_HEADER);
    let trace = TraceLayer::new_for_http().make_span_with(|request: &Request| {
        let request_id = request
            .headers()
            .get(REQUEST_ID_HEADER)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("");
        let route = request.extensions().get::<MatchedPath>().map(MatchedPath::as_str).unwrap_or("");
        tracing::info_span!(
            "http",
            request_id,
            method = %request.method(),
            route,
            path = %request.uri().path(),
        )
    });
    // `Router::layer` wraps each route after routing, so `MatchedPath` is known to the trace
    // and metrics layers; the last layer added runs first.
    router
        .layer(axum::middleware::from_fn(record))
        .layer(trace)
        .layer(PropagateRequestIdLayer::new(header_name.clone()))
        .layer(SetRequestIdLayer::new(header_name, MakeRequestUuid))
        .layer(axum::middleware::map_request(drop_unusable_request_id))
}

/// Removes a client's `x-request-id` that is not a usable id (too long, or with characters
/// that would garble a log line), so that a new one is made in its place.
async fn drop_unusable_request_id(mut request: Request) -> Request {
    let usable = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .map(|value| value.to_str().ok().and_then(RequestId::parse).is_some());
    if usable == Some(false) {
        request.headers_mut().remove(REQUEST_ID_HEADER);
    }
    request
}

/// Middleware: runs the request inside its id's scope, then counts it in
/// `wharf_http_requests_total` and times it in `wharf_http_request_duration_seconds` (until
/// the response head; a streamed body may go on after it).
pub(crate) async fn record(request: Request, next: Next) -> Response {
    let matched = request.extensions().get::<MatchedPath>().map(|path| path.as_str().to_owned());
    let method = method_label(request.method());
    let request_id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|value| value.to_str().ok())
        .and_then(RequestId::parse);
    let started = Instant::now();
    let response = match request_id {
        Some(id) => id.scope(next.run(request)).await,
        None => next.run(request).await,
    };
    // A handler's own label wins: an app routed by `Host` may have a path that also matches
    // an API route.
    let route = match response.extensions().get::<RouteLabel>() {
        Some(label) => label.0.to_owned(),
        None => matched.unwrap_or_else(|| UNMATCHED.to_owned()),
    };
    let status = response.status().as_u16().to_string();
    metrics::counter!("wharf_http_requests_total", "route" => route.clone(), "method" => method, "status" => status.clone())
        .increment(1);
    metrics::histogram!("wharf_http_request_duration_seconds", "route" => route, "method" => method, "status" => status)
        .record(started.elapsed().as_secs_f64());
    response
}

/// The method as a label: the standard ones by name, anything else as `other`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// `GET /metrics`: this process's metrics in the Prometheus text format.
pub(crate) async fn serve_metrics(State(state): State<Arc<FrontState>>) -> Response {
    let telemetry = state.telemetry.clone();
    // The collectors read the records and may take a moment on a large cluster: off the
    // async threads.
    match tokio::task::spawn_blocking(move || telemetry.render()).await {
        Ok(text) => ([(header::CONTENT_TYPE, HeaderValue::from_static(wharf_telemetry::CONTENT_TYPE))], text).into_response(),
        Err(error) => crate::error::HttpError(wharf_proto::ApiError::internal("render metrics", error)).into_response(),
    }
}

/// `GET /api/v1/cluster/metrics-targets`: every storage node's and front's metrics address, in
/// Prometheus's `http_sd` format (a JSON array of `{"targets": [...], "labels": {...}}`).
///
/// Storage nodes come from their records, so a node that is down stays listed and its target
/// shows `up == 0` (what the node-down alert watches). Fronts keep no records: each one that is
/// connected now answers for itself through its router-statistics actor, this front included.
///
/// It needs a token when reads do (it names internal addresses); Prometheus sends one with an
/// `authorization` block in its `http_sd_configs`.
#[utoipa::path(
    get,
    path = "/api/v1/cluster/metrics-targets",
    tag = crate::openapi::tags::CLUSTER,
    responses((status = 200, description = "Prometheus http_sd targets: a JSON array of {\"targets\": [\"host:port\"], \"labels\": {...}}, one per node and front"))
)]
pub(crate) async fn metrics_targets(
    State(state): State<Arc<FrontState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, crate::error::HttpError> {
    crate::api::reader(&state, &headers)?;
    let mut groups = Vec::new();
    let mut listed = Vec::new();
    for node in state.directory.nodes() {
        let Some(addr) = node.metrics_addr else { continue };
        groups.push(json!({
            "targets": [addr],
            "labels": {"wharf_role": "node", "wharf_node": node.id.0.to_string()},
        }));
        listed.push(addr);
    }
    let answers = state.nodes.call_group(ROUTERS_GROUP, &NodeRequest::MetricsAddress, FRONT_ANSWER_TIMEOUT).await;
    let mut fronts: Vec<String> = answers
        .into_iter()
        .filter_map(|reply| match reply {
            NodeReply::MetricsAddress(addr) => addr,
            _ => None,
        })
        .collect();
    fronts.sort();
    fronts.dedup();
    // In `wharf dev` the front and the node are one process on one port: listed once, as the node.
    for addr in fronts.into_iter().filter(|addr| !listed.contains(addr)) {
        groups.push(json!({"targets": [addr], "labels": {"wharf_role": "front"}}));
    }
    Ok(Json(Value::Array(groups)))
}

#[cfg(test)]
mod tests {
    use axum::http::Method;

    use super::method_label;

    #[test]
    fn unknown_methods_share_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::from_bytes(b"BREW").expect("a method")), "other");
    }
}
