//! Wharf's HTTP front: the REST API, Git smart HTTP and metrics, served with axum.
//!
//! The front is stateless and thin. For each request it authenticates the caller and resolves
//! the repository's owner through a [`wharf_proto::Directory`] (a local copy of the applied
//! metadata, so routing never waits on Raft), then sends a [`wharf_proto::NodeRequest`] to that
//! node with its [`NodeClient`] and turns the reply into JSON, or a stream of pack data. Errors
//! become HTTP responses in one place, [`error::status_of`] (JSON on the API, plain text on git's
//! routes, and a push Wharf refuses after git sent it gets git's own report: `push_report`).
//! Deployment ids carry their kind at this boundary (`env-3`, `deploy-7`, `inst-12`; see
//! [`wharf_proto::deploy::IdKind`]), while records keep bare numbers. Every REST route is registered
//! with its OpenAPI description, served at `/api/v1/openapi.json` (see [`openapi_document`]).
//!
//! It also serves deployed applications: `/apps/...` (and `Host: env.name.owner.localhost`)
//! goes to a healthy instance by the weights in the records, and a small actor tells
//! deployment controllers what this router has counted per instance (canary checks).
//!
//! [`serve`] runs the HTTP server with a header-read timeout, and before any handler reads a
//! body a guard (`limits`) refuses writes without a valid token, and clients over their budget
//! of writes or of failed authentications; each route's extractor then bounds its body (see
//! [`HttpLimits`]). The app router passes no Wharf credential on to an app.
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
mod limits;
mod metrics;
mod openapi;
mod push_report;
mod serve;
mod smart_http;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use wharf_proto::Directory;

pub use auth::SESSION_COOKIE;
pub use openapi::document as openapi_document;
pub use serve::serve;
pub use wharf_proto::NodeClient;

/// Settings of a front.
#[derive(Debug, Clone)]
pub struct FrontConfig {
    /// Whether reads (API GETs, clone and fetch) work without a token. Default `true`, as in
    /// `wharf dev`; a shared deployment sets `false`.
    pub public_reads: bool,
    /// Largest body of a commit through the API (`POST .../commits`), in bytes. Default 32 MiB:
    /// it carries file contents. Other JSON bodies have [`HttpLimits::max_json_body_bytes`].
    pub max_api_body_bytes: usize,
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
    /// Timeouts and limits of the HTTP server, applied before a request reaches a handler.
    pub limits: HttpLimits,
}

/// Timeouts and limits of the front's HTTP server (issue 14). The defaults leave room for
/// scripted use (a client writing hundreds of records a second) while bounding what a single
/// client, or an anonymous one, can make the front hold.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// How long a client has to send a request's head (request line and headers), and how long
    /// an idle keep-alive connection stays open waiting for the next one. Default 30 s
    /// (`WHARF_HTTP_HEADER_TIMEOUT_SECS`): a slow-loris connection is closed after it; a
    /// client on a slow link needs seconds, not tens of them, to send a few hundred bytes.
    pub header_read_timeout: Duration,
    /// Largest JSON body of any API route but a commit, in bytes. Default 1 MiB
    /// (`WHARF_HTTP_MAX_JSON_BYTES`): these bodies are names and settings.
    pub max_json_body_bytes: usize,
    /// Writes (API changes and pushes) this front serves at once; more get 503 with
    /// `Retry-After`. Default 256 (`WHARF_HTTP_MAX_WRITES`). A push holds its slot while its
    /// pack is received.
    pub max_concurrent_writes: usize,
    /// Writes one client (one IP address) may make per second, sustained. Default 500
    /// (`WHARF_HTTP_WRITE_RATE`); past it (and its burst) a client gets 429 with
    /// `Retry-After`.
    pub writes_per_second: u32,
    /// Writes one client may make in a burst above its rate. Default 5,000
    /// (`WHARF_HTTP_WRITE_BURST`).
    pub write_burst: u32,
    /// Requests with a token that is not valid one client may make per minute, sustained.
    /// Default 60 (`WHARF_HTTP_AUTH_FAILURES_PER_MINUTE`); past it (and its burst) the client
    /// gets 429 for every request with a token. Bounds token guessing.
    pub failed_auth_per_minute: u32,
    /// Failed authentications one client may make in a burst. Default 100
    /// (`WHARF_HTTP_AUTH_FAILURE_BURST`).
    pub failed_auth_burst: u32,
    /// Largest push accepted, in bytes after decompression. Default 2 GiB
    /// (`WHARF_HTTP_MAX_PUSH_BYTES`). A larger push is refused in git's report: every ref
    /// rejected with the reason.
    pub max_push_bytes: u64,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_read_timeout: Duration::from_secs(30),
            max_json_body_bytes: 1 << 20,
            max_concurrent_writes: 256,
            writes_per_second: 500,
            write_burst: 5_000,
            failed_auth_per_minute: 60,
            failed_auth_burst: 100,
            max_push_bytes: 2 << 30,
        }
    }
}

/// A setting that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{variable}={value:?}: {reason}")]
pub struct ConfigError {
    /// The environment variable.
    pub variable: &'static str,
    /// Its value.
    pub value: String,
    /// Why it was refused.
    pub reason: &'static str,
}

impl HttpLimits {
    /// Applies the `WHARF_HTTP_*` environment variables named in the fields' docs, then checks
    /// the result.
    pub fn with_env_overrides(mut self) -> Result<Self, ConfigError> {
        fn read<T: std::str::FromStr>(variable: &'static str, into: &mut T) -> Result<(), ConfigError> {
            if let Ok(value) = std::env::var(variable) {
                *into = value.trim().parse().map_err(|_| ConfigError {
                    variable,
                    value,
                    reason: "not a whole number",
                })?;
            }
            Ok(())
        }
        let mut header_secs = self.header_read_timeout.as_secs();
        read("WHARF_HTTP_HEADER_TIMEOUT_SECS", &mut header_secs)?;
        self.header_read_timeout = Duration::from_secs(header_secs);
        read("WHARF_HTTP_MAX_JSON_BYTES", &mut self.max_json_body_bytes)?;
        read("WHARF_HTTP_MAX_WRITES", &mut self.max_concurrent_writes)?;
        read("WHARF_HTTP_WRITE_RATE", &mut self.writes_per_second)?;
        read("WHARF_HTTP_WRITE_BURST", &mut self.write_burst)?;
        read("WHARF_HTTP_AUTH_FAILURES_PER_MINUTE", &mut self.failed_auth_per_minute)?;
        read("WHARF_HTTP_AUTH_FAILURE_BURST", &mut self.failed_auth_burst)?;
        read("WHARF_HTTP_MAX_PUSH_BYTES", &mut self.max_push_bytes)?;
        self.check()?;
        Ok(self)
    }

    /// Refuses limits that would stop the front from working.
    pub fn check(&self) -> Result<(), ConfigError> {
        let refuse = |variable, value: String, reason| Err(ConfigError { variable, value, reason });
        if self.header_read_timeout.is_zero() {
            return refuse("WHARF_HTTP_HEADER_TIMEOUT_SECS", "0".into(), "must be at least 1 second");
        }
        let zeros = [
            ("WHARF_HTTP_MAX_JSON_BYTES", self.max_json_body_bytes as u64),
            ("WHARF_HTTP_MAX_WRITES", self.max_concurrent_writes as u64),
            ("WHARF_HTTP_WRITE_RATE", u64::from(self.writes_per_second)),
            ("WHARF_HTTP_WRITE_BURST", u64::from(self.write_burst)),
            ("WHARF_HTTP_AUTH_FAILURES_PER_MINUTE", u64::from(self.failed_auth_per_minute)),
            ("WHARF_HTTP_AUTH_FAILURE_BURST", u64::from(self.failed_auth_burst)),
            ("WHARF_HTTP_MAX_PUSH_BYTES", self.max_push_bytes),
        ];
        for (variable, value) in zeros {
            if value == 0 {
                return refuse(variable, "0".into(), "must be at least 1");
            }
        }
        Ok(())
    }
}

impl Default for FrontConfig {
    fn default() -> Self {
        FrontConfig {
            public_reads: true,
            max_api_body_bytes: 32 << 20,
            max_fetch_request_bytes: 64 << 20,
            node_timeout: Duration::from_secs(30),
            git_step_timeout: Duration::from_secs(300),
            public_url: "http://127.0.0.1:8080".into(),
            metrics_addr: None,
            limits: HttpLimits::default(),
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
    /// The write and authentication limits.
    pub limiters: limits::Limiters,
}

/// The front's HTTP application: API, smart HTTP, health and metrics. `/metrics` renders
/// `telemetry`, the process's one recorder (in `wharf dev` the node's metrics are in it too).
pub fn app(config: FrontConfig, directory: Arc<dyn Directory>, telemetry: wharf_telemetry::Telemetry) -> Router {
    let state = Arc::new(FrontState {
        nodes: NodeClient {
            timeout: config.node_timeout,
        },
        limiters: limits::Limiters::new(&config.limits),
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
        // After routing (the metrics see the route), before any handler reads a body; requests
        // routed to apps by `Host` never reach it.
        .layer(axum::middleware::from_fn_with_state(state.clone(), limits::guard))
        .layer(axum::middleware::from_fn_with_state(state.clone(), deploy::route_by_host));
    metrics::layers(routes).with_state(state)
}
