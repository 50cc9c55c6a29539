//! The Raft endpoint: one remotable actor per process that answers Raft RPCs and join
//! requests, and the [`RaftTransport`] that calls other processes' endpoints.
//!
//! Each message is handled on its own task, so a slow membership change (adding a learner
//! waits until it has caught up) never holds up heartbeats.

use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorClusterMessage;
use wharf_meta::{Command, Meta, RaftTransport, TransportError, TransportFuture};
use wharf_proto::NodeId;

use crate::JoinRequest;

/// How long a join may take at the leader: adding a learner waits for it to catch up.
const JOIN_TIMEOUT: Duration = Duration::from_secs(120);

/// The process group of node `id`'s Raft endpoint.
pub fn raft_group(id: NodeId) -> String {
    format!("wharf.raft.{id}")
}

/// Messages to a Raft endpoint. Both carry JSON bytes; add variants, never rename them.
#[derive(RactorClusterMessage)]
pub enum RaftMessage {
    /// An encoded Raft RPC; answered with the encoded result.
    #[rpc]
    Rpc(Vec<u8>, RpcReplyPort<Vec<u8>>),
    /// An encoded [`JoinRequest`]; answered with an encoded `Result<(), String>`.
    #[rpc]
    Join(Vec<u8>, RpcReplyPort<Vec<u8>>),
    /// A metadata write forwarded to the leader; see [`Meta::handle_forwarded_write`].
    #[rpc]
    Write(Vec<u8>, RpcReplyPort<Vec<u8>>),
}

struct RaftEndpoint;

impl Actor for RaftEndpoint {
    type Msg = RaftMessage;
    type State = Meta;
    type Arguments = Meta;

    async fn pre_start(&self, _myself: ActorRef<Self::Msg>, meta: Meta) -> Result<Self::State, ActorProcessingErr> {
        Ok(meta)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        meta: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let meta = meta.clone();
        match message {
            RaftMessage::Rpc(payload, reply) => {
                tokio::spawn(async move {
                    let _ = reply.send(meta.handle_rpc(&payload).await);
                });
            }
            RaftMessage::Write(payload, reply) => {
                tokio::spawn(async move {
                    let _ = reply.send(meta.handle_forwarded_write(&payload).await);
                });
            }
            RaftMessage::Join(payload, reply) => {
                tokio::spawn(async move {
                    let result = match serde_json::from_slice::<JoinRequest>(&payload) {
                        Ok(request) => handle_join(&meta, &request).await,
                        Err(error) => Err(format!("undecodable join request: {error}")),
                    };
                    let _ = reply.send(serde_json::to_vec(&result).unwrap_or_default());
                });
            }
        }
        Ok(())
    }
}

/// Spawns this process's endpoint and registers it in its process group.
pub(crate) async fn spawn(id: NodeId, meta: Meta) -> Result<ActorRef<RaftMessage>, ractor::SpawnErr> {
    let (endpoint, _) = Actor::spawn(Some(format!("wharf.raft.{id}.endpoint")), RaftEndpoint, meta).await?;
    ractor::pg::join(raft_group(id), vec![endpoint.get_cell()]);
    Ok(endpoint)
}

/// The endpoint of node `id`, if it is connected.
pub(crate) fn endpoint_of(id: u64) -> Option<ActorRef<RaftMessage>> {
    ractor::pg::get_members(&raft_group(NodeId(id)))
        .into_iter()
        .next()
        .map(ActorRef::from)
}

/// The endpoint of any other connected member.
pub(crate) fn any_peer_endpoint(own: NodeId) -> Option<ActorRef<RaftMessage>> {
    let own_group = raft_group(own);
    ractor::pg::which_groups()
        .into_iter()
        .filter(|group| group.starts_with("wharf.raft.") && *group != own_group)
        .find_map(|group| ractor::pg::get_members(&group).into_iter().next())
        .map(ActorRef::from)
}

/// Sends a join request to `endpoint` and decodes its answer.
pub(crate) async fn send_join(endpoint: &ActorRef<RaftMessage>, request: &JoinRequest) -> Result<(), String> {
    let payload = serde_json::to_vec(request).map_err(|e| e.to_string())?;
    let answer = call(endpoint, |port| RaftMessage::Join(payload, port), JOIN_TIMEOUT).await?;
    serde_json::from_slice::<Result<(), String>>(&answer).map_err(|e| format!("undecodable join answer: {e}"))?
}

/// Takes a process into the group, at the leader; elsewhere, passes the request to the leader.
async fn handle_join(meta: &Meta, request: &JoinRequest) -> Result<(), String> {
    let status = meta.status();
    let leader = status.leader.ok_or("no leader has been elected yet")?;
    if leader != meta.node_id().0 {
        let endpoint = endpoint_of(leader).ok_or_else(|| format!("the leader, node {leader}, is not connected here"))?;
        return send_join(&endpoint, request).await;
    }
    let storage_nodes = meta.directory().nodes().len() + usize::from(request.storage.is_some());
    let wanted_voters = if storage_nodes >= 5 { 5 } else { 3 };
    let voter = request.storage.is_some() && (status.voters.len() < wanted_voters || status.voters.contains(&request.id));
    tracing::info!(id = request.id, addr = %request.addr, voter, "adding a member");
    meta.add_member(request.id, request.addr.clone(), voter)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(record) = &request.storage {
        meta.write(Command::AddNode { record: record.clone() }).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

async fn call(
    endpoint: &ActorRef<RaftMessage>,
    message: impl FnOnce(RpcReplyPort<Vec<u8>>) -> RaftMessage,
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    match endpoint.call(message, Some(timeout)).await {
        Ok(CallResult::Success(answer)) => Ok(answer),
        Ok(CallResult::Timeout) => Err(format!("no answer within {timeout:?}")),
        Ok(CallResult::SenderError) => Err("the endpoint dropped the request".into()),
        Err(error) => Err(format!("the endpoint is gone: {error}")),
    }
}

/// Reaches other members' endpoints through their process groups.
pub struct ActorTransport {
    /// Deadline of one RPC.
    pub timeout: Duration,
}

impl RaftTransport for ActorTransport {
    fn call(&self, target: u64, payload: Vec<u8>) -> TransportFuture {
        let timeout = self.timeout;
        Box::pin(async move {
            let endpoint = endpoint_of(target).ok_or(TransportError::NotConnected(target))?;
            call(&endpoint, |port| RaftMessage::Rpc(payload, port), timeout)
                .await
                .map_err(TransportError::NoAnswer)
        })
    }

    fn forward(&self, target: u64, payload: Vec<u8>) -> TransportFuture {
        Box::pin(async move {
            let endpoint = endpoint_of(target).ok_or(TransportError::NotConnected(target))?;
            call(&endpoint, |port| RaftMessage::Write(payload, port), wharf_meta::WRITE_TIMEOUT)
                .await
                .map_err(TransportError::NoAnswer)
        })
    }
}
