//! How Wharf processes find each other and keep one Raft group.
//!
//! - [`Cluster::start`] binds the cluster port on exactly the `--listen` address and runs this
//!   process's `ractor_cluster` node server behind it; every connection is mutual TLS 1.3 with
//!   certificates of the cluster CA ([`tls::Identity`]), and ractor_cluster's cookie handshake
//!   runs inside it ([`listener`] says why Wharf accepts and dials itself).
//!   [`Cluster::connect`] dials a peer; [`Cluster::connect_all`] (while starting) and
//!   [`Cluster::keep_connected`] (after) dial every member the metadata knows, so the mesh is
//!   full.
//! - [`enroll::enroll`] is how a process that has the cookie but no certificate yet gets one
//!   from any member, before it creates anything in its data directory.
//! - [`Cluster::serve_raft`] spawns this process's Raft endpoint: one remotable actor in the
//!   process group `wharf.raft.{id}`, apart from the node's request router so that request
//!   traffic never sits in front of heartbeats. [`Cluster::transport`] is the
//!   [`RaftTransport`] that reaches the other members' endpoints.
//! - [`Cluster::join`] asks the current leader (through any member) to take this process in:
//!   as a learner that catches up, then, for a storage node while the group has fewer than
//!   three voters (five in clusters of five or more nodes), as a voter.
//!
//! This crate owns connectivity and membership; it does not route requests (the front does)
//! or hold repositories (the node does).

pub mod cookie;
mod endpoint;
pub mod enroll;
pub mod listener;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorRef};
use ractor_cluster::node::NodeConnectionMode;
use ractor_cluster::{IncomingEncryptionMode, NodeServer, NodeServerMessage};
use serde::{Deserialize, Serialize};
use wharf_meta::{Meta, RaftTransport};
use wharf_proto::{NodeId, NodeRecord};

pub use cookie::{Cookie, WeakCookie};
pub use endpoint::{raft_group, ActorTransport, RaftMessage};
pub use enroll::EnrollError;
pub use tls::{Identity, OperatorFiles, TlsError};

/// How long one Raft RPC may take before the peer counts as unreachable.
pub const RAFT_RPC_TIMEOUT: Duration = Duration::from_secs(5);

/// Why joining or connecting failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The node server could not start.
    #[error("cannot start the cluster listener on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// A peer could not be dialled.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The peer's cluster address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// No member became reachable in time.
    #[error(
        "no cluster member answered within {0:?}: check the --join address and that every process \
         uses the same cookie (WHARF_COOKIE or --cookie-file); a wrong cookie is refused"
    )]
    NoPeer(Duration),
    /// The certificates cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The leader refused or failed to add this process.
    #[error("joining the cluster failed: {0}")]
    Join(String),
}

/// What a process asks for when it joins.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    /// Its Raft id.
    pub id: u64,
    /// Its cluster address.
    pub addr: String,
    /// Its record, for a storage node; `None` for a front, which only follows the log.
    pub storage: Option<NodeRecord>,
}

/// This process's place in the cluster.
pub struct Cluster {
    id: NodeId,
    gate: Arc<listener::Gate>,
    accept: tokio::task::JoinHandle<()>,
    endpoint: Option<ActorRef<RaftMessage>>,
}

impl Cluster {
    /// Starts listening for peers on exactly `listen`, admitting only those that present a
    /// certificate of `identity`'s CA and then `cookie`.
    pub async fn start(id: NodeId, listen: SocketAddr, cookie: Cookie, identity: Identity) -> Result<Cluster, ClusterError> {
        let listen_error = |reason: String| ClusterError::Listen { addr: listen, reason };
        let tls = identity.configs()?;
        let tcp = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| listen_error(e.to_string()))?;
        // ractor_cluster's NodeServer always opens a listener of its own. Wharf hands it its
        // connections instead (see `listener`), so that one is put where it harms nothing: on
        // loopback, on a free port, behind a TLS configuration no client can satisfy. Its
        // `hostname` only names this node to peers (`wharf-{id}@{listen}`), which keeps the
        // names ractor_cluster compares to spot a connection to itself unique in the cluster.
        let unused = IncomingEncryptionMode::Tls(tokio_rustls::TlsAcceptor::from(identity.refuse_all_config()?));
        let server = NodeServer::new(
            0,
            cookie.expose().to_owned(),
            format!("wharf-{id}"),
            listen.to_string(),
            Some(unused),
            // Isolated: in transitive mode ractor_cluster would dial the peers it hears of
            // itself, without TLS; `keep_connected` dials every member instead.
            Some(NodeConnectionMode::Isolated),
        )
        .with_listen_addr(std::net::IpAddr::from([127, 0, 0, 1]));
        let (server, _) = Actor::spawn(None, server, ())
            .await
            .map_err(|e| listen_error(e.to_string()))?;
        let gate = Arc::new(listener::Gate::new(server, tls, Arc::new(identity), cookie));
        let accept = tokio::spawn(listener::accept_loop(tcp, gate.clone()));
        Ok(Cluster {
            id,
            gate,
            accept,
            endpoint: None,
        })
    }

    /// Dials the peer at `addr`. Returns once the TLS session is up; ractor_cluster's
    /// handshake (and its cookie check) completes afterwards, see [`Cluster::wait_for_peer`].
    pub async fn connect(&self, addr: &str) -> Result<(), ClusterError> {
        listener::dial(&self.gate, addr).await.map_err(|e| ClusterError::Connect {
            addr: addr.to_owned(),
            reason: e.to_string(),
        })
    }

    /// The transport openraft uses to reach the other members.
    pub fn transport(&self) -> Arc<dyn RaftTransport> {
        Arc::new(ActorTransport {
            timeout: RAFT_RPC_TIMEOUT,
        })
    }

    /// Serves Raft RPCs and join requests for `meta`.
    pub async fn serve_raft(&mut self, meta: Meta) -> Result<(), ClusterError> {
        let endpoint = endpoint::spawn(self.id, meta).await.map_err(|e| ClusterError::Listen {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            reason: format!("cannot spawn the raft endpoint: {e}"),
        })?;
        self.endpoint = Some(endpoint);
        Ok(())
    }

    /// Waits until the Raft endpoint of some other member is reachable: the handshake is done
    /// and the process groups are synchronised. Dials `peers` again every couple of seconds
    /// meanwhile, so a process may start before the member it joins through.
    pub async fn wait_for_peer(&self, peers: &[String], timeout: Duration) -> Result<(), ClusterError> {
        // Hand-written rather than a backon retry: this waits for a session that may come
        // either from our own dial or from a peer dialling us, so it watches often (100 ms)
        // while it dials only every 2 s; a retry of the dial alone would miss the second way.
        let deadline = tokio::time::Instant::now() + timeout;
        let mut next_dial = tokio::time::Instant::now();
        while tokio::time::Instant::now() < deadline {
            if endpoint::any_peer_endpoint(self.id).is_some() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= next_dial {
                for peer in peers {
                    if let Err(error) = self.connect(peer).await {
                        tracing::info!(%error, "member not reachable yet");
                    }
                }
                next_dial = tokio::time::Instant::now() + Duration::from_secs(2);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(ClusterError::NoPeer(timeout))
    }

    /// Asks the leader, through any member, to take this process in; retries until `timeout`
    /// (a leader may be being elected).
    pub async fn join(&self, request: &JoinRequest, timeout: Duration) -> Result<(), ClusterError> {
        use backon::Retryable;
        let attempt = || async {
            let peer = endpoint::any_peer_endpoint(self.id).ok_or_else(|| String::from("no member reachable"))?;
            endpoint::send_join(&peer, request).await
        };
        let backoff = backon::ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(1))
            .with_total_delay(Some(timeout))
            .without_max_times();
        attempt
            .retry(backoff)
            .notify(|error, _| tracing::info!(%error, "join not done yet; retrying"))
            .await
            .map_err(ClusterError::Join)
    }

    /// Dials every member `meta` knows whose Raft endpoint is not visible here yet, and waits
    /// until all are (their sessions are up and their process groups synchronised), at most
    /// `timeout`. A process calls it before it says it is ready, so that it can reach every
    /// member at once: ractor_cluster's transitive mode used to do this, but it dials without
    /// TLS (see [`listener`]).
    pub async fn connect_all(&self, meta: &Meta, own_addr: &str, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut next_dial = tokio::time::Instant::now();
        loop {
            let missing: Vec<(u64, String)> = meta
                .status()
                .addresses
                .into_iter()
                .filter(|(id, addr)| *id != self.id.0 && addr != own_addr && endpoint::endpoint_of(*id).is_none())
                .collect();
            if missing.is_empty() {
                return;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                tracing::warn!(?missing, "some members are not reachable yet; going on");
                return;
            }
            if now >= next_dial {
                for (_, addr) in &missing {
                    if let Err(error) = listener::dial(&self.gate, addr).await {
                        tracing::info!(%addr, %error, "member not reachable yet");
                    }
                }
                next_dial = now + Duration::from_secs(1);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Keeps a connection to every member `meta` knows, redialling any that is missing every
    /// couple of seconds. ractor_cluster does not reconnect by itself, and two processes that
    /// dial each other at once can both drop the duplicate; this loop heals both.
    pub fn keep_connected(&self, meta: Meta, own_addr: String) {
        let gate = self.gate.clone();
        let server = self.gate.server.clone();
        // Different processes check at different moments, so they rarely dial each other at once.
        let period = Duration::from_millis(1500 + 137 * (self.id.0 % 8));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let Ok(sessions) = ractor::call_t!(server, NodeServerMessage::GetSessions, 2_000) else {
                    if server.get_status() != ractor::ActorStatus::Running {
                        return;
                    }
                    continue;
                };
                let connected: Vec<u64> = sessions
                    .values()
                    .filter_map(|session| session.peer_name.as_ref().and_then(|name| member_id(&name.name)))
                    .collect();
                for (id, addr) in meta.status().addresses {
                    if addr != own_addr && !connected.contains(&id) {
                        tracing::info!(%addr, "member not connected; dialling");
                        if let Err(error) = listener::dial(&gate, &addr).await {
                            tracing::debug!(%addr, %error, "dial failed");
                        }
                    }
                }
            }
        });
    }

    /// Stops accepting, then stops the Raft endpoint and the node server.
    pub fn shutdown(self) {
        self.accept.abort();
        if let Some(endpoint) = self.endpoint {
            endpoint.stop(None);
        }
        self.gate.server.stop(None);
    }
}

/// The Raft id in a ractor_cluster node name (`wharf-{id}@{listen}`).
fn member_id(name: &str) -> Option<u64> {
    name.strip_prefix("wharf-")?.split('@').next()?.parse().ok()
}
