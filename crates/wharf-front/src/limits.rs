//! What runs before a handler reads a body: the caller's credentials, a per-client rate limit
//! and a concurrency limit on writes (issue 14).
//!
//! A write is any API request that is not `GET` or `HEAD`, and a push (`POST
//! git-receive-pack`). [`guard`] refuses a write without a valid token with 401 before a byte of
//! its body is read, so an anonymous client cannot make the front buffer or parse anything. A
//! request that presents a token that is not valid (any method) counts against its client's
//! budget of failed authentications; once that is spent the client gets 429 until it refills,
//! which bounds token guessing. Valid writes take one unit of the client's write budget (429
//! when spent) and one of the front's write slots (503 when all are taken).
//!
//! Clients are told apart by their IP address ([`axum::extract::ConnectInfo`], set by
//! [`crate::serve`]). Behind a reverse proxy every client has the proxy's address, so the
//! budgets are the proxy's: raise them there. Deployed applications (`/apps`, `/preview`, and
//! requests routed by `Host`) are not Wharf's writes and are not limited here.
//!
//! Body sizes are limited per route by the extractors in `extract` (a route's limit is checked
//! against `Content-Length` before reading, and bounds the read of a body without one) and by
//! smart HTTP for git's bodies.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;
use wharf_proto::ApiError;

use crate::error::HttpError;
use crate::{auth, FrontState, HttpLimits};

/// How many clients' budgets are remembered at most. Past this, full budgets (clients that
/// have been quiet long enough) are forgotten; if all are in use, all are forgotten, which
/// lets an attacker with this many addresses reset the limits but never grows memory.
const MAX_CLIENTS: usize = 65_536;

/// The front's limiters, built once from [`HttpLimits`].
pub(crate) struct Limiters {
    writes: Arc<Semaphore>,
    write_rate: RateLimiter,
    failed_auth: RateLimiter,
}

impl Limiters {
    pub(crate) fn new(limits: &HttpLimits) -> Limiters {
        Limiters {
            writes: Arc::new(Semaphore::new(limits.max_concurrent_writes.max(1))),
            write_rate: RateLimiter::new(f64::from(limits.writes_per_second), limits.write_burst),
            failed_auth: RateLimiter::new(f64::from(limits.failed_auth_per_minute) / 60.0, limits.failed_auth_burst),
        }
    }
}

/// Whether a request changes something in Wharf: an API request other than a read, or a push.
fn is_write(method: &Method, path: &str) -> bool {
    let read = *method == Method::GET || *method == Method::HEAD;
    if path.starts_with("/api/") {
        return !read;
    }
    path.ends_with("/git-receive-pack") && !read
}

/// Whether the request goes to a deployed application rather than to Wharf.
fn is_app(path: &str) -> bool {
    path.starts_with("/apps/") || path.starts_with("/preview/")
}

/// Middleware: see the module doc. Runs after routing (so the metrics know the route) and
/// before any extractor of the handler.
pub(crate) async fn guard(State(state): State<Arc<FrontState>>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if is_app(path) {
        return next.run(request).await;
    }
    let write = is_write(request.method(), path);
    let presents_token = request.headers().contains_key(header::AUTHORIZATION);
    if !write && !presents_token {
        return next.run(request).await;
    }
    let client = client_of(&request);
    let now = Instant::now();
    let limiters = &state.limiters;
    if presents_token {
        // A client that has spent its failed-authentication budget is not even checked.
        if let Err(wait) = limiters.failed_auth.check(client, now) {
            return refuse(path, rate_limited("failed authentications", wait));
        }
    }
    let principal = match auth::require(state.directory.as_ref(), request.headers()) {
        Ok(principal) => Some(principal),
        Err(error) if presents_token => {
            let _ = limiters.failed_auth.take(client, now);
            return refuse(path, error);
        }
        Err(error) if write => return refuse(path, error),
        Err(_) => None,
    };
    if !write || principal.is_none() {
        return next.run(request).await;
    }
    if let Err(wait) = limiters.write_rate.take(client, now) {
        return refuse(path, rate_limited("writes", wait));
    }
    let Ok(_slot) = limiters.writes.clone().try_acquire_owned() else {
        let busy = ApiError::Unavailable {
            what: "writes".into(),
            reason: format!(
                "this front is serving {} writes already; try again shortly",
                state.config.limits.max_concurrent_writes
            ),
            retry_after_secs: 1,
        };
        return refuse(path, busy);
    };
    // The slot is held until the handler has answered (a push's body is read by then).
    next.run(request).await
}

fn rate_limited(what: &str, wait: Duration) -> ApiError {
    ApiError::RateLimited {
        what: what.to_owned(),
        retry_after_secs: u32::try_from(wait.as_secs().max(1)).unwrap_or(u32::MAX),
    }
}

/// The refusal as the client reads it: plain text on git's routes, JSON elsewhere.
fn refuse(path: &str, error: ApiError) -> Response {
    if crate::smart_http::is_git_path(path) {
        HttpError(error).into_plain_response()
    } else {
        HttpError(error).into_response()
    }
}

/// The client's address; a request that did not come through [`crate::serve`] (a test calling
/// the router directly) counts as one unknown client.
fn client_of(request: &Request) -> IpAddr {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |ConnectInfo(addr)| addr.ip())
}

/// A token bucket per client: `burst` units at most, refilled at `per_second`.
pub(crate) struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    pub(crate) fn new(per_second: f64, burst: u32) -> RateLimiter {
        RateLimiter {
            per_second: per_second.max(f64::MIN_POSITIVE),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn refilled(&self, bucket: Option<Bucket>, now: Instant) -> Bucket {
        match bucket {
            None => Bucket { tokens: self.burst, at: now },
            Some(bucket) => {
                let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
                Bucket {
                    tokens: (bucket.tokens + elapsed * self.per_second).min(self.burst),
                    at: now,
                }
            }
        }
    }

    /// Whether `client` has a unit left, without taking it; if not, how long until it has.
    pub(crate) fn check(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        let buckets = self.buckets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let bucket = self.refilled(buckets.get(&client).copied(), now);
        self.verdict(bucket)
    }

    /// Takes one unit of `client`'s budget; if none is left, how long until one is.
    pub(crate) fn take(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if buckets.len() >= MAX_CLIENTS && !buckets.contains_key(&client) {
            let full = |bucket: &Bucket| self.refilled(Some(*bucket), now).tokens >= self.burst;
            buckets.retain(|_, bucket| !full(bucket));
            if buckets.len() >= MAX_CLIENTS {
                buckets.clear();
            }
        }
        let mut bucket = self.refilled(buckets.get(&client).copied(), now);
        let verdict = self.verdict(bucket);
        if verdict.is_ok() {
            bucket.tokens -= 1.0;
        }
        buckets.insert(client, bucket);
        verdict
    }

    fn verdict(&self, bucket: Bucket) -> Result<(), Duration> {
        if bucket.tokens >= 1.0 {
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.per_second))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let limiter = RateLimiter::new(2.0, 3);
        let client: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let start = Instant::now();
        for _ in 0..3 {
            assert!(limiter.take(client, start).is_ok());
        }
        let wait = limiter.take(client, start).expect_err("the burst is spent");
        assert!(wait <= Duration::from_millis(500) && wait > Duration::ZERO, "{wait:?}");
        assert!(limiter.check(client, start).is_err(), "a refused take took nothing and gave nothing");
        assert!(limiter.take(other, start).is_ok(), "clients have their own budgets");
        assert!(limiter.take(client, start + Duration::from_millis(500)).is_ok(), "refilled at 2 per second");
        assert!(limiter.take(client, start + Duration::from_millis(500)).is_err());
        assert!(limiter.check(client, start + Duration::from_secs(60)).is_ok());
    }

    #[test]
    fn writes_are_api_changes_and_pushes() {
        assert!(is_write(&Method::POST, "/api/v1/repos"));
        assert!(is_write(&Method::DELETE, "/api/v1/environments"));
        assert!(is_write(&Method::from_bytes(b"BREW").unwrap(), "/api/v1/repos"));
        assert!(!is_write(&Method::GET, "/api/v1/repos"));
        assert!(is_write(&Method::POST, "/acme/app.git/git-receive-pack"));
        assert!(!is_write(&Method::POST, "/acme/app.git/git-upload-pack"), "a fetch is a read");
        assert!(!is_write(&Method::GET, "/acme/app.git/info/refs"));
        assert!(is_app("/apps/acme/app/prod/x") && !is_app("/api/v1/environments"));
    }
}
