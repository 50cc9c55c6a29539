//! Request counters and latency totals, served at `/metrics` in Prometheus text format.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::FrontState;

/// Counters per (route, method, status class).
#[derive(Default)]
pub(crate) struct Metrics {
    by_route: Mutex<BTreeMap<(String, String, u16), RouteStats>>,
}

#[derive(Default, Clone, Copy)]
struct RouteStats {
    count: u64,
    seconds: f64,
}

impl Metrics {
    /// The Prometheus text exposition of every counter.
    pub fn render(&self) -> String {
        let stats = self.by_route.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut out = String::from(
            "# HELP wharf_http_requests_total HTTP requests served by the front.\n\
             # TYPE wharf_http_requests_total counter\n",
        );
        for ((route, method, status), s) in &stats {
            out.push_str(&format!(
                "wharf_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {}\n",
                s.count
            ));
        }
        out.push_str(
            "# HELP wharf_http_request_seconds_sum Total time spent answering, by route.\n\
             # TYPE wharf_http_request_seconds_sum counter\n",
        );
        for ((route, method, status), s) in &stats {
            out.push_str(&format!(
                "wharf_http_request_seconds_sum{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {:.6}\n",
                s.seconds
            ));
        }
        out
    }
}

/// Middleware: counts every request under its route template (not its raw path, so the
/// number of series stays bounded) and logs it in a span.
pub(crate) async fn record(
    State(state): State<Arc<FrontState>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_else(|| "git".to_owned());
    let method = request.method().to_string();
    let started = Instant::now();
    let span = tracing::info_span!("http", %method, path = %request.uri().path());
    let response = {
        let _entered = span.enter();
        tracing::debug!("request");
        drop(_entered);
        next.run(request).await
    };
    let status = response.status().as_u16();
    let mut stats = state.metrics.by_route.lock().unwrap_or_else(|p| p.into_inner());
    let entry = stats.entry((route, method, status)).or_default();
    entry.count += 1;
    entry.seconds += started.elapsed().as_secs_f64();
    response
}
