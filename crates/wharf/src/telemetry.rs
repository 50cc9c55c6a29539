//! The binary's metrics wiring: the process's one recorder, and the `/metrics` listener of a
//! storage node (which serves no other HTTP). A front serves `/metrics` on its own HTTP port.

use std::net::SocketAddr;

use anyhow::Context;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use wharf_telemetry::Telemetry;

/// Installs the process's Prometheus recorder.
pub fn install() -> anyhow::Result<Telemetry> {
    Telemetry::install().context("cannot set up metrics")
}

/// Serves `GET /metrics` from `listener` until `shutdown` completes.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    telemetry: Telemetry,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = axum::Router::new().route("/metrics", get(render)).with_state(telemetry);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .context("the metrics listener failed")
}

async fn render(State(telemetry): State<Telemetry>) -> Response {
    // The collectors read the records: off the async threads.
    match tokio::task::spawn_blocking(move || telemetry.render()).await {
        Ok(text) => ([(header::CONTENT_TYPE, HeaderValue::from_static(wharf_telemetry::CONTENT_TYPE))], text).into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot render metrics: {error}")).into_response(),
    }
}

/// The address to record for a metrics listener bound at `bound`: as bound, unless it is bound
/// to every interface (`0.0.0.0`, `::`), which no scraper can dial; then the host of the
/// cluster address `cluster`, where peers already reach this process.
pub fn advertised(bound: SocketAddr, cluster: SocketAddr) -> String {
    if bound.ip().is_unspecified() {
        SocketAddr::new(cluster.ip(), bound.port()).to_string()
    } else {
        bound.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::advertised;

    #[test]
    fn an_unspecified_bind_address_is_advertised_at_the_cluster_host() {
        let cluster = "10.0.0.5:7101".parse().expect("an address");
        assert_eq!(advertised("0.0.0.0:9100".parse().expect("an address"), cluster), "10.0.0.5:9100");
        assert_eq!(advertised("127.0.0.1:9100".parse().expect("an address"), cluster), "127.0.0.1:9100");
    }
}
