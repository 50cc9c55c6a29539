//! The front's accept loop: HTTP/1.1 with hyper's server (HTTP/1 only, as `axum::serve` with
//! axum's default features served).
//!
//! It replaces `axum::serve`, which sets no timer, so hyper's header-read timeout never fired:
//! a connection that sent nothing, or its headers a byte at a time, stayed open for as long as
//! its client liked (a slow-loris probe held one for 150 s). Here every HTTP/1 connection gets
//! [`HttpLimits::header_read_timeout`] to send each request head, and an idle keep-alive
//! connection is closed when that time passes with no new request (hyper starts the same timer
//! while it waits for the next request). Each request carries its client's address as
//! [`axum::extract::ConnectInfo`], which the write and authentication limits key on.
//!
//! On shutdown the listener closes, idle connections close at once, and requests in progress
//! finish, as with `axum::serve`'s graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tower::Service;

use crate::HttpLimits;

/// Serves `app` on `listener` until `shutdown` completes, then waits for requests in progress.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: &HttpLimits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, or a connection reset before it was accepted:
                    // the listener itself is fine; pause a moment so a full table can drain.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let router = app.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
            let mut router = router.clone();
            async move { Ok::<_, Infallible>(router.call(request).await.unwrap_or_else(|never| match never {})) }
        });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
