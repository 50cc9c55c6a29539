//! Enrollment: how a process with the cookie but no certificate gets one.
//!
//! A joiner has no certificate yet, so it cannot open a cluster (mutual TLS) connection. It
//! opens an enrollment connection to any member instead, on the same port, and the two prove
//! to each other that they know the cookie without sending it:
//!
//! 1. member → joiner: a fresh 32-byte nonce `Ns`.
//! 2. joiner → member: its node id, a public key it just made, its own nonce `Nc`, and
//!    `HMAC-SHA256(cookie, "request" ‖ Ns ‖ Nc ‖ id ‖ key)`.
//! 3. member → joiner: if the MAC is wrong, a refusal (the joiner then exits with "the cluster
//!    refused this node's cookie"); otherwise the CA's certificate, a certificate for the key,
//!    the CA's key sealed with AES-256-GCM under `HMAC(cookie, "ca key" ‖ Ns ‖ Nc)` (so any
//!    member can later enroll others), and `HMAC(cookie, "reply" ‖ Nc ‖ Ns ‖ …)` over all of
//!    it. The joiner trusts the CA only if that MAC checks, so a member that does not know the
//!    cookie cannot hand it a CA of its own.
//!
//! A member that restarts sends the same request with no public key, to check its cookie
//! before it goes on ([`check_cookie`]): the answer is then only "accepted" or "refused".
//!
//! Nothing secret crosses in clear: the certificates are public, the key is sealed, and the
//! MACs are bound to nonces, so a recorded exchange cannot be replayed. An eavesdropper could
//! try to guess the cookie offline from a MAC, which is why cookies of fewer than 16
//! characters are refused (see [`crate::cookie`]). Every frame a member reads before the
//! joiner has proved the cookie is at most [`MAX_REQUEST_BYTES`].

use std::time::Duration;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use aws_lc_rs::hmac;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use wharf_proto::NodeId;

use crate::cookie::Cookie;
use crate::tls::{Identity, TlsError};

/// The largest request frame a member reads from a joiner that has not proved the cookie.
pub const MAX_REQUEST_BYTES: usize = 1024;
/// The largest reply frame a joiner reads (two certificates and a sealed key, hex-encoded).
const MAX_REPLY_BYTES: usize = 16 * 1024;

/// Why a joiner did not get a certificate.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// The member checked the proof of the cookie and it was wrong.
    #[error("the cluster refused this node's cookie (the member at {addr} says it does not match); every process of a cluster needs the same cookie")]
    CookieRefused {
        /// The member asked.
        addr: String,
    },
    /// The member's answer did not prove it knows the cookie.
    #[error("the process at {addr} did not prove it knows the cookie: it is not a member of this cluster (or a different cluster's)")]
    MemberUnproven {
        /// The member asked.
        addr: String,
    },
    /// The member cannot issue certificates.
    #[error("the member at {addr} cannot issue certificates: {reason}")]
    CannotIssue {
        /// The member asked.
        addr: String,
        /// What it said.
        reason: String,
    },
    /// The connection failed or the member is not there (yet).
    #[error("cannot enroll through {addr}: {reason}")]
    Unreachable {
        /// The member asked.
        addr: String,
        /// Why.
        reason: String,
    },
    /// What came back could not be used.
    #[error("the certificate from {addr} cannot be used: {source}")]
    Certificate {
        /// The member asked.
        addr: String,
        /// Why.
        source: TlsError,
    },
}

impl EnrollError {
    /// Whether trying again (the same or another member) may help.
    pub fn is_transient(&self) -> bool {
        matches!(self, EnrollError::Unreachable { .. })
    }
}

#[derive(Serialize, Deserialize)]
struct Request {
    node: u64,
    public_key: String,
    nonce: String,
    mac: String,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
enum Reply {
    Issued {
        ca: String,
        cert: String,
        /// The CA's key, sealed; absent if the member has none to give.
        sealed_ca_key: Option<String>,
        mac: String,
    },
    /// The request's MAC was wrong.
    CookieRefused,
    /// The request's MAC was right and it asked for no certificate (a cookie check).
    CookieAccepted,
    /// The member cannot issue (no CA key, or a malformed request).
    CannotIssue { reason: String },
}

/// The member's side: answers one enrollment or cookie check on `stream` (the preamble
/// already read).
pub(crate) async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    cookie: &Cookie,
    identity: &Identity,
) -> std::io::Result<Served> {
    let server_nonce = nonce();
    write_frame(stream, &hex::encode(server_nonce).into_bytes()).await?;
    let request = read_frame(stream, MAX_REQUEST_BYTES).await?;
    let request: Request = serde_json::from_slice(&request).map_err(invalid)?;
    let (Ok(public_key), Ok(client_nonce), Ok(mac)) =
        (hex::decode(&request.public_key), hex::decode(&request.nonce), hex::decode(&request.mac))
    else {
        return Err(invalid("an enrollment request field is not hex"));
    };
    let key = hmac::Key::new(hmac::HMAC_SHA256, cookie.expose().as_bytes());
    let proof = request_proof(&server_nonce, &client_nonce, request.node, &public_key);
    let reply = if hmac::verify(&key, &proof, &mac).is_err() {
        Reply::CookieRefused
    } else if public_key.is_empty() {
        Reply::CookieAccepted
    } else {
        match identity.issue(NodeId(request.node), &public_key) {
            Err(error) => Reply::CannotIssue { reason: error.to_string() },
            Ok(cert) => {
                let sealed_ca_key = identity
                    .ca_key_der()
                    .map(|der| seal(&key, &server_nonce, &client_nonce, der))
                    .transpose()?;
                let mac = hmac::sign(
                    &key,
                    &reply_proof(&client_nonce, &server_nonce, identity.ca_der(), &cert, sealed_ca_key.as_deref()),
                );
                Reply::Issued {
                    ca: hex::encode(identity.ca_der()),
                    cert: hex::encode(cert),
                    sealed_ca_key: sealed_ca_key.map(hex::encode),
                    mac: hex::encode(mac.as_ref()),
                }
            }
        }
    };
    let outcome = match &reply {
        Reply::Issued { .. } => Served::Issued,
        Reply::CookieAccepted => Served::Checked,
        Reply::CookieRefused | Reply::CannotIssue { .. } => Served::Refused,
    };
    write_frame(stream, &serde_json::to_vec(&reply).map_err(invalid)?).await?;
    stream.flush().await?;
    Ok(outcome)
}

/// What [`serve`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Served {
    /// Issued a certificate.
    Issued,
    /// Confirmed a cookie.
    Checked,
    /// Refused: a wrong cookie, or nothing to issue with.
    Refused,
}

/// The joiner's side: asks the member at `addr` for a certificate for node `node`.
pub async fn enroll(addr: &str, node: NodeId, cookie: &Cookie, timeout: Duration) -> Result<Identity, EnrollError> {
    let (member_key, public_key) = crate::tls::new_member_key().map_err(|source| EnrollError::Certificate {
        addr: addr.to_owned(),
        source,
    })?;
    let exchange = exchange(addr, node, cookie, &public_key, timeout).await?;
    match exchange.reply {
        Reply::CookieRefused => Err(EnrollError::CookieRefused { addr: addr.to_owned() }),
        Reply::CannotIssue { reason } => Err(EnrollError::CannotIssue {
            addr: addr.to_owned(),
            reason,
        }),
        Reply::CookieAccepted => Err(EnrollError::MemberUnproven { addr: addr.to_owned() }),
        Reply::Issued {
            ca,
            cert,
            sealed_ca_key,
            mac,
        } => {
            let unproven = || EnrollError::MemberUnproven { addr: addr.to_owned() };
            let ca = hex::decode(ca).map_err(|_| unproven())?;
            let cert = hex::decode(cert).map_err(|_| unproven())?;
            let sealed = sealed_ca_key.map(hex::decode).transpose().map_err(|_| unproven())?;
            let mac = hex::decode(mac).map_err(|_| unproven())?;
            let (key, server_nonce, client_nonce) = (&exchange.key, &exchange.server_nonce, &exchange.client_nonce);
            let proof = reply_proof(client_nonce, server_nonce, &ca, &cert, sealed.as_deref());
            hmac::verify(key, &proof, &mac).map_err(|_| unproven())?;
            let ca_key = sealed
                .map(|sealed| open(key, server_nonce, client_nonce, sealed))
                .transpose()
                .map_err(|_| unproven())?;
            Identity::enrolled(&member_key, ca, cert, ca_key).map_err(|source| EnrollError::Certificate {
                addr: addr.to_owned(),
                source,
            })
        }
    }
}

/// A restarting member's check that the member at `addr` accepts its cookie. `Ok` also when
/// that member cannot issue certificates (it checked the cookie first).
pub async fn check_cookie(addr: &str, node: NodeId, cookie: &Cookie, timeout: Duration) -> Result<(), EnrollError> {
    match exchange(addr, node, cookie, &[], timeout).await?.reply {
        Reply::CookieRefused => Err(EnrollError::CookieRefused { addr: addr.to_owned() }),
        Reply::CookieAccepted | Reply::CannotIssue { .. } => Ok(()),
        Reply::Issued { .. } => Err(EnrollError::MemberUnproven { addr: addr.to_owned() }),
    }
}

/// One request and its reply.
struct Exchange {
    reply: Reply,
    key: hmac::Key,
    server_nonce: Vec<u8>,
    client_nonce: [u8; 32],
}

async fn exchange(addr: &str, node: NodeId, cookie: &Cookie, public_key: &[u8], timeout: Duration) -> Result<Exchange, EnrollError> {
    let unreachable = |reason: String| EnrollError::Unreachable {
        addr: addr.to_owned(),
        reason,
    };
    let run = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream.write_all(crate::listener::PREAMBLE_ENROLL).await?;
        let server_nonce = hex::decode(read_frame(&mut stream, 64).await?).map_err(invalid)?;
        let client_nonce = nonce();
        let key = hmac::Key::new(hmac::HMAC_SHA256, cookie.expose().as_bytes());
        let mac = hmac::sign(&key, &request_proof(&server_nonce, &client_nonce, node.0, public_key));
        let request = Request {
            node: node.0,
            public_key: hex::encode(public_key),
            nonce: hex::encode(client_nonce),
            mac: hex::encode(mac.as_ref()),
        };
        write_frame(&mut stream, &serde_json::to_vec(&request).map_err(invalid)?).await?;
        let reply: Reply = serde_json::from_slice(&read_frame(&mut stream, MAX_REPLY_BYTES).await?).map_err(invalid)?;
        Ok::<_, std::io::Error>(Exchange {
            reply,
            key,
            server_nonce,
            client_nonce,
        })
    };
    tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| unreachable(format!("no answer within {timeout:?}")))?
        .map_err(|error| unreachable(error.to_string()))
}

fn request_proof(server_nonce: &[u8], client_nonce: &[u8], node: u64, public_key: &[u8]) -> Vec<u8> {
    let mut proof = b"wharf enroll request v1\0".to_vec();
    for part in [server_nonce, client_nonce, &node.to_be_bytes(), public_key] {
        push_part(&mut proof, part);
    }
    proof
}

fn reply_proof(client_nonce: &[u8], server_nonce: &[u8], ca: &[u8], cert: &[u8], sealed_ca_key: Option<&[u8]>) -> Vec<u8> {
    let mut proof = b"wharf enroll reply v1\0".to_vec();
    for part in [client_nonce, server_nonce, ca, cert, sealed_ca_key.unwrap_or_default()] {
        push_part(&mut proof, part);
    }
    proof
}

/// Appends `part` with its length, so that no two different sequences of parts give the same
/// bytes.
fn push_part(out: &mut Vec<u8>, part: &[u8]) {
    out.extend_from_slice(&(part.len() as u32).to_be_bytes());
    out.extend_from_slice(part);
}

/// The key that seals the CA's key for one enrollment: it depends on both nonces, so it is
/// used once, which makes the fixed AEAD nonce safe.
fn sealing_key(key: &hmac::Key, server_nonce: &[u8], client_nonce: &[u8]) -> std::io::Result<LessSafeKey> {
    let mut input = b"wharf ca key v1\0".to_vec();
    push_part(&mut input, server_nonce);
    push_part(&mut input, client_nonce);
    let derived = hmac::sign(key, &input);
    let unbound = UnboundKey::new(&AES_256_GCM, derived.as_ref()).map_err(|_| invalid("cannot derive the sealing key"))?;
    Ok(LessSafeKey::new(unbound))
}

fn seal(key: &hmac::Key, server_nonce: &[u8], client_nonce: &[u8], mut data: Vec<u8>) -> std::io::Result<Vec<u8>> {
    sealing_key(key, server_nonce, client_nonce)?
        .seal_in_place_append_tag(Nonce::assume_unique_for_key([0u8; 12]), Aad::from(b"wharf ca key"), &mut data)
        .map_err(|_| invalid("cannot seal the CA key"))?;
    Ok(data)
}

fn open(key: &hmac::Key, server_nonce: &[u8], client_nonce: &[u8], mut sealed: Vec<u8>) -> std::io::Result<Vec<u8>> {
    let plain = sealing_key(key, server_nonce, client_nonce)?
        .open_in_place(Nonce::assume_unique_for_key([0u8; 12]), Aad::from(b"wharf ca key"), &mut sealed)
        .map_err(|_| invalid("the sealed CA key does not open"))?;
    Ok(plain.to_vec())
}

fn nonce() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes
}

fn invalid(error: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, error.to_string())
}

/// Writes a frame: a big-endian `u16` length, then the bytes.
async fn write_frame<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(bytes.len()).map_err(|_| invalid("enrollment frame too large"))?;
    stream.write_all(&len.to_be_bytes()).await?;
    stream.write_all(bytes).await?;
    stream.flush().await
}

/// Reads a frame of at most `max` bytes; a longer one is refused before it is read.
async fn read_frame<S: AsyncRead + Unpin>(stream: &mut S, max: usize) -> std::io::Result<Vec<u8>> {
    let len = usize::from(stream.read_u16().await?);
    if len > max {
        return Err(invalid(format!("an enrollment frame of {len} bytes is over the limit of {max}")));
    }
    let mut bytes = vec![0u8; len];
    stream.read_exact(&mut bytes).await?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A member on a free port that answers enrollments with `cookie` until the test ends.
    async fn member(cookie: &str, identity: Identity) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let cookie = Cookie::new(cookie).unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut preamble = [0u8; 8];
                stream.read_exact(&mut preamble).await.unwrap();
                assert_eq!(&preamble, crate::listener::PREAMBLE_ENROLL);
                let _ = serve(&mut stream, &cookie, &identity).await;
            }
        });
        addr
    }

    const COOKIE: &str = "0123456789abcdef0123456789abcdef";
    const OTHER: &str = "fedcba9876543210fedcba9876543210";
    const TIMEOUT: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn a_joiner_with_the_cookie_gets_a_certificate_and_the_ca_key() {
        let addr = member(COOKIE, Identity::new_cluster(NodeId(1)).unwrap()).await;
        let identity = enroll(&addr, NodeId(2), &Cookie::new(COOKIE).unwrap(), TIMEOUT).await.unwrap();
        assert!(identity.can_issue(), "the CA key came along, so this member can enroll others");
        check_cookie(&addr, NodeId(2), &Cookie::new(COOKIE).unwrap(), TIMEOUT).await.unwrap();
    }

    #[tokio::test]
    async fn a_wrong_cookie_is_refused_in_both_kinds_of_request() {
        let addr = member(COOKIE, Identity::new_cluster(NodeId(1)).unwrap()).await;
        let wrong = Cookie::new(OTHER).unwrap();
        let error = enroll(&addr, NodeId(2), &wrong, TIMEOUT).await.unwrap_err();
        assert!(matches!(error, EnrollError::CookieRefused { .. }), "{error}");
        assert!(error.to_string().contains("the cluster refused this node's cookie"));
        let error = check_cookie(&addr, NodeId(2), &wrong, TIMEOUT).await.unwrap_err();
        assert!(matches!(error, EnrollError::CookieRefused { .. }), "{error}");
    }

    #[tokio::test]
    async fn a_member_without_the_ca_key_checks_cookies_but_issues_nothing() {
        let first = Identity::new_cluster(NodeId(1)).unwrap();
        let (key, public) = crate::tls::new_member_key().unwrap();
        let cert = first.issue(NodeId(2), &public).unwrap();
        let without_key = Identity::enrolled(&key, first.ca_der().to_vec(), cert, None).unwrap();
        let addr = member(COOKIE, without_key).await;
        let cookie = Cookie::new(COOKIE).unwrap();
        let error = enroll(&addr, NodeId(3), &cookie, TIMEOUT).await.unwrap_err();
        assert!(matches!(error, EnrollError::CannotIssue { .. }), "{error}");
        check_cookie(&addr, NodeId(3), &cookie, TIMEOUT).await.unwrap();
    }

    #[tokio::test]
    async fn a_request_frame_over_the_limit_is_refused_before_it_is_read() {
        let (mut joiner, mut member) = tokio::io::duplex(64 * 1024);
        let identity = Identity::new_cluster(NodeId(1)).unwrap();
        let cookie = Cookie::new(COOKIE).unwrap();
        let serving = tokio::spawn(async move { serve(&mut member, &cookie, &identity).await });
        let _nonce = read_frame(&mut joiner, 64).await.unwrap();
        joiner.write_all(&u16::MAX.to_be_bytes()).await.unwrap();
        let error = serving.await.unwrap().unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
        assert!(error.to_string().contains("over the limit of 1024"), "{error}");
    }
}
