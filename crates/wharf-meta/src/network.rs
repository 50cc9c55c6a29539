//! Raft's network: how this node reaches the other members.
//!
//! This crate knows nothing of actors or sockets. It encodes each Raft RPC to bytes and hands
//! them to a [`RaftTransport`] that the node provides (in Wharf: a Raft actor per node, reached
//! through `ractor_cluster`, apart from the request router so that a burst of requests cannot
//! delay heartbeats). The receiving side passes the bytes to [`crate::Meta::handle_rpc`]. A
//! one-node group (`wharf dev`) has no transport and never sends a Raft message.
//!
//! RPCs are encoded as JSON: they are small and rare next to git traffic, and JSON copes with
//! every serde feature openraft's types use.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use wharf_proto::codec;

use crate::TypeConfig;

/// What a transport's call returns: the peer's encoded answer, or why it did not arrive.
pub type TransportFuture = Pin<Box<dyn Future<Output = Result<Vec<u8>, TransportError>> + Send>>;

/// Why a message did not get an answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    /// There is no connection to the peer: the message was not sent.
    #[error("node {0} is not connected")]
    NotConnected(u64),
    /// It was sent, but no answer came (the peer may or may not have acted on it).
    #[error("{0}")]
    NoAnswer(String),
}

/// Carries one encoded Raft RPC to node `target` and brings back its encoded answer.
///
/// An implementation must give every call a deadline: a peer that is gone must turn into an
/// error, not a call that never returns.
pub trait RaftTransport: Send + Sync + 'static {
    /// Sends `payload` to `target`'s [`crate::Meta::handle_rpc`].
    fn call(&self, target: u64, payload: Vec<u8>) -> TransportFuture;

    /// Sends an encoded write to `target`'s [`crate::Meta::handle_forwarded_write`]: how a
    /// member that does not lead proposes through the leader.
    fn forward(&self, target: u64, payload: Vec<u8>) -> TransportFuture;
}

/// A Raft RPC on the wire.
#[derive(Serialize, Deserialize)]
pub(crate) enum RaftRpc {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    Vote(VoteRequest<u64>),
}

/// Makes clients for peers.
#[derive(Clone, Default)]
pub struct Network {
    pub(crate) transport: Option<Arc<dyn RaftTransport>>,
}

/// A client of one peer.
pub struct Peer {
    target: u64,
    node: BasicNode,
    transport: Option<Arc<dyn RaftTransport>>,
}

#[derive(Debug, thiserror::Error)]
#[error("node {target} is unreachable: {reason}")]
struct PeerUnreachable {
    target: u64,
    reason: String,
}

impl Peer {
    fn unreachable<E: std::error::Error>(&self, reason: String) -> RPCError<u64, BasicNode, E> {
        RPCError::Unreachable(Unreachable::new(&PeerUnreachable {
            target: self.target,
            reason,
        }))
    }

    /// Sends `rpc` and decodes the peer's `Result<T, E>`.
    async fn send<T, E>(&self, rpc: RaftRpc) -> Result<T, RPCError<u64, BasicNode, E>>
    where
        T: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let Some(transport) = &self.transport else {
            return Err(self.unreachable("this node has no cluster transport".into()));
        };
        let payload = codec::encode(&rpc).map_err(|e| self.unreachable(e.to_string()))?;
        let answer = transport
            .call(self.target, payload)
            .await
            .map_err(|error| self.unreachable(error.to_string()))?;
        // An empty answer is a peer that could not decode the request: another format version.
        let answer: Result<T, E> = codec::decode(&answer)
            .map_err(|e| self.unreachable(format!("undecodable answer from node {} (another Wharf version?): {e}", self.target)))?;
        answer.map_err(|error| RPCError::RemoteError(RemoteError::new_with_node(self.target, self.node.clone(), error)))
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Self::Network {
        Peer {
            target,
            node: node.clone(),
            transport: self.transport.clone(),
        }
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.send(RaftRpc::AppendEntries(rpc)).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>> {
        self.send(RaftRpc::InstallSnapshot(rpc)).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.send(RaftRpc::Vote(rpc)).await
    }
}
