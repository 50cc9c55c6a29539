//! Wharf's HTTP front: the REST API, Git smart HTTP and metrics, served with axum.
//!
//! The front is stateless and thin. For each request it authenticates the caller and resolves
//! the repository's owner through a [`wharf_proto::Directory`] (a local copy of the applied
//! metadata, so routing never waits on Raft), then sends a [`wharf_proto::NodeRequest`] to that
//! node with its [`NodeClient`] and turns the reply into JSON, or a stream of pack data. Errors
//! become HTTP responses in one place, [`error::status_of`]. Every REST route is registered
//! with its OpenAPI description, served at `/api/v1/openapi.json` (see [`openapi_document`]).
//!
//! It also serves deployed applications: `/apps/...` (and `Host: env.name.owner.localhost`)
//! goes to a healthy instance by the weights in the records, and a small actor tells
//! deployment controllers what this router has counted per instance (canary checks).
//!
//! Every request gets an id (the client's `x-request-id`, or a new one, echoed in the reply), a
//! `tracing` span, and its counts in the process's metrics; the id travels in the calls the
//! front sends to nodes. `/metrics` serves the process's [`wharf_telemetry::Telemetry`], and
//! `/api/v1/cluster/metrics-targets` lists every node's and front's metrics address for
//! Prometheus (see `metrics`).
//!
//! The front never opens a repository and never writes metadata itself: it sees only
//! `wharf-proto` and `wharf-placement` (and `wharf-telemetry`, the recorder it renders).

#![warn(missing_docs)]

mod api;
mod auth;
mod ci;
mod deploy;
pub mod error;
mod extract;
mod metrics;
mod openapi;
mod smart_http;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use wharf_proto::Directory;

pub use openapi::document as openapi_document;
pub use wharf_proto::NodeClient;

/// Settings of a front.
#[derive(Debug, Clone)]
pub struct FrontConfig {
    /// Whether reads (API GETs, clone and fetch) work without a token. Default `true`, as in
    /// `wharf dev`; a shared deployment sets `false`.
    pub public_reads: bool,
    /// Largest JSON body accepted by the API, in bytes. Default 32 MiB: a commit through the
    /// API carries file contents.
    pub max_api_body_bytes: usize,
    /// Largest push accepted, in bytes after decompression. Default 2 GiB.
    pub max_push_bytes: u64,
    /// Largest fetch negotiation body, in bytes after decompression. Default 64 MiB.
    pub max_fetch_request_bytes: u64,
    /// Deadline of an ordinary request to a node. Default 30 s.
    pub node_timeout: Duration,
    /// Deadline of one step of a git session (opening a push waits for its write turn; the
    /// first read of a clone waits for git to count objects). Default 300 s.
    pub git_step_timeout: Duration,
    /// The URL clients use to reach this front, for clone URLs (`http://127.0.0.1:8080`).
    pub public_url: String,
    /// Where Prometheus reaches this front's `/metrics` (`host:port`), as listed by
    /// `/api/v1/cluster/metrics-targets`. Default `None`: the front is not listed there (the
    /// binary sets it to the HTTP address).
    pub metrics_addr: Option<String>,
}

impl Default for FrontConfig {
    fn default() -> Self {
        FrontConfig {
            public_reads: true,
            max_api_body_bytes: 32 << 20,
            max_push_bytes: 2 << 30,
            max_fetch_request_bytes: 64 << 20,
            node_timeout: Duration::from_secs(30),
            git_step_timeout: Duration::from_secs(300),
            public_url: "http://127.0.0.1:8080".into(),
            metrics_addr: None,
        }
    }
}

/// What every handler shares.
pub(crate) struct FrontState {
    pub config: FrontConfig,
    pub directory: Arc<dyn Directory>,
    pub nodes: NodeClient,
    /// This process's metrics, rendered at `/metrics`.
    pub telemetry: wharf_telemetry::Telemetry,
    /// The application router's client and turn counter.
    pub apps: deploy::Apps,
}

/// The front's HTTP application: API, smart HTTP, health and metrics. `/metrics` renders
/// `telemetry`, the process's one recorder (in `wharf dev` the node's metrics are in it too).
pub fn app(config: FrontConfig, directory: Arc<dyn Directory>, telemetry: wharf_telemetry::Telemetry) -> Router {
    let state = Arc::new(FrontState {
        nodes: NodeClient {
            timeout: config.node_timeout,
        },
        config,
        directory,
        telemetry,
        apps: deploy::Apps::default(),
    });
    deploy::spawn_router_stats(state.clone());
    // The OpenAPI half is dropped here: the document is built from the same routes when it is
    // first asked for.
    let (routes, _) = api::routes().split_for_parts();
    let routes = routes
        .layer(axum::extract::DefaultBodyLimit::max(state.config.max_api_body_bytes))
        .fallback(smart_http::handle)
        .layer(axum::middleware::from_fn_with_state(state.clone(), deploy::route_by_host));
    metrics::layers(routes).with_state(state)
}
