//! The cluster port: Wharf accepts and dials every cluster connection itself, and hands
//! ractor_cluster only streams that finished mutual TLS.
//!
//! Why not ractor_cluster's own listener: it can bind one address (`with_listen_addr`) and do
//! TLS, but it runs each TLS handshake inside its accept loop (one slow client stalls every
//! other), reads frames of up to 16 MiB from a peer that has not authenticated yet, and dials
//! the peers it learns of in the clear (transitive mode). So Wharf binds exactly the
//! `--listen` address, and every connection starts with an 8-byte preamble that says what it
//! is:
//!
//! - [`PREAMBLE_TLS`]: a TLS 1.3 handshake follows, each side presenting a certificate of the
//!   cluster CA; once it is done the stream goes to the `NodeServer` as an external transport,
//!   and ractor_cluster's cookie handshake runs inside it.
//! - [`PREAMBLE_ENROLL`]: a joiner asks for a certificate, see [`crate::enroll`].
//!
//! # Limits before authentication
//! At most [`MAX_PREAUTH_CONNECTIONS`] connections may be in that state at once (more are
//! closed at once), each must finish within [`PREAUTH_TIMEOUT`], and each may send at most
//! [`PREAUTH_BYTES`] before its TLS handshake is done (enrollment frames are smaller still),
//! so an unauthenticated peer can make a member hold at most a few KiB. Counted in
//! `wharf_cluster_connections_total{kind, outcome}`; `wharf_cluster_preauth_connections` is
//! the number in that state now.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use ractor::ActorRef;
use ractor_cluster::{BoxRead, BoxWrite, ClusterBidiStream, NodeServerMessage};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::cookie::Cookie;
use crate::tls::{Identity, TlsConfigs};

/// The preamble of a cluster (mutual TLS) connection.
pub(crate) const PREAMBLE_TLS: &[u8; 8] = b"WHARF1T\n";
/// The preamble of an enrollment connection.
pub(crate) const PREAMBLE_ENROLL: &[u8; 8] = b"WHARF1J\n";

/// Bytes a peer may send before its TLS handshake is done. A TLS 1.3 handshake with P-256
/// certificates takes about 1.5 KiB from the client.
pub const PREAUTH_BYTES: usize = 8 * 1024;
/// Connections that may be between accept and authentication at once.
pub const MAX_PREAUTH_CONNECTIONS: usize = 64;
/// How long a peer has to finish its handshake (or its enrollment).
pub const PREAUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long dialling a member may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// What the accept loop and the dialler share.
pub(crate) struct Gate {
    pub(crate) server: ActorRef<NodeServerMessage>,
    pub(crate) tls: TlsConfigs,
    pub(crate) identity: Arc<Identity>,
    pub(crate) cookie: Cookie,
    preauth: Arc<Semaphore>,
}

impl Gate {
    pub(crate) fn new(server: ActorRef<NodeServerMessage>, tls: TlsConfigs, identity: Arc<Identity>, cookie: Cookie) -> Gate {
        Gate {
            server,
            tls,
            identity,
            cookie,
            preauth: Arc::new(Semaphore::new(MAX_PREAUTH_CONNECTIONS)),
        }
    }
}

/// Accepts connections on `listener` until the task is aborted.
pub(crate) async fn accept_loop(listener: TcpListener, gate: Arc<Gate>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "cannot accept a cluster connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = gate.preauth.clone().try_acquire_owned() else {
            count("unknown", "busy");
            tracing::warn!(%peer, "too many unauthenticated cluster connections; closing this one");
            continue;
        };
        let gate = gate.clone();
        tokio::spawn(async move {
            metrics::gauge!("wharf_cluster_preauth_connections").increment(1.0);
            let outcome = tokio::time::timeout(PREAUTH_TIMEOUT, admit(stream, peer, &gate)).await;
            metrics::gauge!("wharf_cluster_preauth_connections").decrement(1.0);
            drop(permit);
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err((kind, error))) => {
                    count(kind, "refused");
                    tracing::info!(%peer, kind, %error, "cluster connection refused");
                }
                Err(_) => {
                    count("unknown", "timeout");
                    tracing::info!(%peer, "cluster connection closed: no handshake within {PREAUTH_TIMEOUT:?}");
                }
            }
        });
    }
}

/// Reads the preamble, then runs the TLS handshake or the enrollment. On success a TLS stream
/// has been handed to the node server.
async fn admit(stream: TcpStream, peer: SocketAddr, gate: &Gate) -> Result<(), (&'static str, std::io::Error)> {
    stream.set_nodelay(true).map_err(|e| ("unknown", e))?;
    let mut stream = Budgeted {
        inner: stream,
        left: Some(PREAUTH_BYTES),
    };
    let mut preamble = [0u8; 8];
    stream.read_exact(&mut preamble).await.map_err(|e| ("unknown", e))?;
    match &preamble {
        PREAMBLE_TLS => {
            let acceptor = tokio_rustls::TlsAcceptor::from(gate.tls.server.clone());
            let mut tls = acceptor.accept(stream).await.map_err(|e| ("tls", e))?;
            // The peer proved it holds a certificate of the cluster CA: from here on only
            // ractor_cluster's own frame limit applies.
            tls.get_mut().0.left = None;
            count("tls", "accepted");
            hand_over(gate, tls, peer, true).map_err(|e| ("tls", e))
        }
        PREAMBLE_ENROLL => {
            use crate::enroll::Served;
            let served = crate::enroll::serve(&mut stream, &gate.cookie, &gate.identity)
                .await
                .map_err(|e| ("enroll", e))?;
            match served {
                Served::Issued => {
                    count("enroll", "issued");
                    tracing::info!(%peer, "issued a cluster certificate");
                }
                Served::Checked => count("enroll", "checked"),
                Served::Refused => {
                    count("enroll", "refused");
                    tracing::warn!(%peer, "refused a process: wrong cookie, or this member cannot issue certificates");
                }
            }
            Ok(())
        }
        _ => Err(("unknown", std::io::Error::new(std::io::ErrorKind::InvalidData, "not a Wharf cluster preamble"))),
    }
}

/// Dials the member at `addr` and hands the TLS stream to the node server.
pub(crate) async fn dial(gate: &Gate, addr: &str) -> std::io::Result<()> {
    let connect = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let peer = stream.peer_addr()?;
        stream.write_all(PREAMBLE_TLS).await?;
        let connector = tokio_rustls::TlsConnector::from(gate.tls.client.clone());
        let tls = connector.connect(crate::tls::server_name(), stream).await?;
        Ok::<_, std::io::Error>((tls, peer))
    };
    let (tls, peer) = tokio::time::timeout(DIAL_TIMEOUT, connect)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no TLS handshake within {DIAL_TIMEOUT:?}")))??;
    count("tls", "dialled");
    hand_over(gate, tls, peer, false)
}

fn hand_over<S>(gate: &Gate, stream: S, peer: SocketAddr, is_server: bool) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    gate.server
        .cast(NodeServerMessage::ConnectionOpenedExternal {
            stream: Box::new(ClusterStream { stream, peer }),
            is_server,
        })
        .map_err(|e| std::io::Error::other(format!("the node server is gone: {e}")))
}

fn count(kind: &'static str, outcome: &'static str) {
    metrics::counter!("wharf_cluster_connections_total", "kind" => kind, "outcome" => outcome).increment(1);
}

/// A TLS stream, as ractor_cluster takes an external transport.
struct ClusterStream<S> {
    stream: S,
    peer: SocketAddr,
}

impl<S> ClusterBidiStream for ClusterStream<S>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    fn split(self: Box<Self>) -> (BoxRead, BoxWrite) {
        let (read, write) = tokio::io::split(self.stream);
        (Box::new(read), Box::new(write))
    }

    fn peer_label(&self) -> Option<String> {
        Some(self.peer.to_string())
    }
}

/// A stream that fails once its peer sent more than `left` bytes; `None` lifts the limit.
struct Budgeted<S> {
    inner: S,
    left: Option<usize>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Budgeted<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let Some(left) = self.left else {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        };
        if left == 0 {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("the peer sent more than {PREAUTH_BYTES} bytes before authenticating"),
            )));
        }
        // Never read past the budget, so nothing beyond it is ever buffered. Through a small
        // buffer of our own: limiting `buf` in place would need `unsafe` (`assume_init`).
        let mut scratch = [0u8; 2048];
        let cap = left.min(buf.remaining()).min(scratch.len());
        let mut limited = ReadBuf::new(&mut scratch[..cap]);
        let poll = Pin::new(&mut self.inner).poll_read(cx, &mut limited);
        if let Poll::Ready(Ok(())) = &poll {
            let read = limited.filled().len();
            buf.put_slice(limited.filled());
            self.left = Some(left - read);
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Budgeted<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_budgeted_stream_refuses_bytes_past_its_budget() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        client.write_all(&vec![7u8; PREAUTH_BYTES + 100]).await.unwrap();
        let mut budgeted = Budgeted {
            inner: server,
            left: Some(PREAUTH_BYTES),
        };
        let mut sink = vec![0u8; 64 * 1024];
        let mut total = 0;
        let error = loop {
            match budgeted.read(&mut sink).await {
                Ok(n) => total += n,
                Err(error) => break error,
            }
        };
        assert_eq!(total, PREAUTH_BYTES, "exactly the budget is read, nothing more");
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
        budgeted.left = None;
        assert_eq!(budgeted.read(&mut sink).await.unwrap(), 100, "once lifted, the rest flows");
    }
}
