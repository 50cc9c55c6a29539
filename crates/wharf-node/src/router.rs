//! The node router: the one remotable actor of a storage node.
//!
//! It decodes each [`NodeRequest`], answers malformed bytes with an error (a peer that got no
//! answer would wait for its timeout), and passes the work on without waiting for it:
//! repository requests to the [`crate::repo_actor::RepoRegistry`], session steps to their
//! [`crate::session`], and repository creation to a task. It also passivates idle repository
//! actors on a timer.
//!
//! Each call runs inside a `call` span that carries the request id from its
//! [`wharf_proto::CallEnvelope`], and inside that id's [`RequestId::scope`], so the node's log
//! lines name the HTTP request that caused them and calls passed on to other nodes carry it.
//! Work the router hands to a task or a repository actor keeps both ([`Traced`]).

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::Instrument;
use wharf_git::GitRepo;
use wharf_meta::{Command, CommandOutcome};
use wharf_proto::{ApiError, CallEnvelope, NodeId, NodeMessage, NodeReply, NodeRequest, NodeStats, RepoId, RepoName, RequestId};

use crate::activity::answer;
use crate::repo_actor::RepoMessage;
use crate::session::SessionOp;
use crate::traced::Traced;
use crate::NodeContext;

/// The node router actor. See the module doc.
pub(crate) struct NodeRouter;

impl Actor for NodeRouter {
    type Msg = NodeMessage;
    type State = Arc<NodeContext>;
    type Arguments = Arc<NodeContext>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        node: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(node)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        node: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (call, reply) = message.into_call();
        match call {
            Ok(CallEnvelope { request_id, request }) => {
                let span = tracing::info_span!(
                    "call",
                    request_id = request_id.as_ref().map(RequestId::as_str).unwrap_or(""),
                    kind = request.kind(),
                );
                let work = route(node, request, reply, false).instrument(span);
                match request_id {
                    Some(id) => id.scope(work).await,
                    None => work.await,
                }
            }
            Err(error) => answer(reply, Err(ApiError::invalid(format!("undecodable request: {error}")))),
        }
        Ok(())
    }
}

/// Spawns `work` inside the current call's span and request id, so that its log lines and
/// the calls it makes name the request too.
fn spawn_traced(work: impl std::future::Future<Output = ()> + Send + 'static) {
    Traced::current().spawn(work);
}

/// How long a forwarded request may take: as long as a git step, since it may be a push
/// waiting for its write turn.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(300);

/// Passes `request` to node `target` (the repository moved there) and returns its answer; a
/// session opened there is reported with its node.
pub(crate) async fn forward(node: &NodeContext, target: NodeId, request: NodeRequest) -> Result<NodeReply, ApiError> {
    let forwarded = NodeRequest::Forwarded(Box::new(request));
    match node.peers.call_with_timeout(target, &forwarded, FORWARD_TIMEOUT).await? {
        NodeReply::Session(session) => Ok(NodeReply::SessionOn { node: target, session }),
        other => Ok(other),
    }
}

/// Removes a drained, empty node from the Raft group and the records, at the leader.
async fn remove_member(node: &Arc<NodeContext>, member: NodeId) -> Result<NodeReply, ApiError> {
    let directory = node.meta.directory();
    let record = directory
        .nodes()
        .into_iter()
        .find(|n| n.id == member)
        .ok_or_else(|| ApiError::invalid(format!("node {member} is not a storage node of this cluster")))?;
    if record.state != wharf_proto::NodeState::Drained || directory.repos().iter().any(|r| r.node == member) {
        return Err(ApiError::invalid(format!("node {member} must be drained before it leaves (it is {:?})", record.state)));
    }
    if member == node.config.id {
        return Err(ApiError::invalid("a node cannot remove itself: ask another one"));
    }
    match node.meta.remove_member(member.0).await {
        Ok(()) => {}
        Err(wharf_meta::MetaError::NotLeader { leader: Some(leader) }) if leader != node.config.id.0 => {
            return node.peers.call(NodeId(leader), &NodeRequest::RemoveMember { node: member }).await;
        }
        Err(error) => return Err(error.into_api("remove the node from the Raft group")),
    }
    match node.meta.write(Command::RemoveNode { node: member }).await {
        Ok(_) => Ok(NodeReply::Done),
        Err(error) => Err(error.into_api("remove the node's record")),
    }
}

/// Hands a request to repository `id`'s actor. An active actor gets it at once, in the order
/// the router received it; one that must be activated first (opened on disk) gets it from a
/// task of its own, so a slow open never holds up the router and the other repositories.
async fn dispatch_repo(
    node: &Arc<NodeContext>,
    id: RepoId,
    name: RepoName,
    reply: RpcReplyPort<Vec<u8>>,
    build: impl FnOnce(RpcReplyPort<Vec<u8>>, crate::activity::InflightGuard) -> RepoMessage + Send + 'static,
) {
    async fn run(
        node: &Arc<NodeContext>,
        id: RepoId,
        name: RepoName,
        reply: RpcReplyPort<Vec<u8>>,
        build: impl FnOnce(RpcReplyPort<Vec<u8>>, crate::activity::InflightGuard) -> RepoMessage,
    ) {
        let mut parts = Some((reply, build));
        let result = node
            .registry
            .dispatch(node, id, name, |guard| {
                let (port, build) = parts.take().expect("dispatch builds the message once");
                build(port, guard)
            })
            .await;
        if let (Err(error), Some((port, _))) = (result, parts) {
            answer(port, Err(error));
        }
    }
    if node.registry.is_active(id).await {
        run(node, id, name, reply, build).await;
    } else {
        let node = node.clone();
        tokio::spawn(async move { run(&node, id, name, reply, build).await });
    }
}

/// The node that owns repository `id` now, if it is not this one.
fn owner_elsewhere(node: &NodeContext, id: RepoId, name: &RepoName) -> Option<NodeId> {
    let record = node.meta.directory().repo(name)?;
    (record.id == id && record.node != node.config.id).then_some(record.node)
}

fn route<'a>(
    node: &'a Arc<NodeContext>,
    request: NodeRequest,
    reply: RpcReplyPort<Vec<u8>>,
    forwarded: bool,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
    Box::pin(route_one(node, request, reply, forwarded))
}

async fn route_one(node: &Arc<NodeContext>, request: NodeRequest, reply: RpcReplyPort<Vec<u8>>, forwarded: bool) {
    if let NodeRequest::Repo { id, name, .. } | NodeRequest::DeleteRepo { id, name } = &request {
        if let Some(target) = owner_elsewhere(node, *id, name).filter(|_| !forwarded) {
            let node = node.clone();
            spawn_traced(async move { answer(reply, forward(&node, target, request).await) });
            return;
        }
    }
    match request {
        NodeRequest::Forwarded(inner) => route(node, *inner, reply, true).await,
        NodeRequest::JobLog { job, offset } => {
            let node = node.clone();
            spawn_traced(async move {
                let read = tokio::task::spawn_blocking(move || crate::ci::read_log(&node, job, offset)).await;
                let result = read
                    .map_err(|e| ApiError::internal("read log", e))
                    .and_then(|chunk| chunk.map(NodeReply::Chunk));
                answer(reply, result)
            });
        }
        NodeRequest::ReadArtifact { job, path, offset } => {
            let node = node.clone();
            spawn_traced(async move {
                let read = tokio::task::spawn_blocking(move || crate::ci::read_artifact(&node, job, &path, offset)).await;
                let result = read
                    .map_err(|e| ApiError::internal("read artifact", e))
                    .and_then(|chunk| chunk.map(NodeReply::Chunk));
                answer(reply, result)
            });
        }
        NodeRequest::InstanceLog { instance, offset } => {
            let node = node.clone();
            spawn_traced(async move {
                let read = tokio::task::spawn_blocking(move || crate::deploy::read_instance_log(&node, instance, offset)).await;
                let result = read
                    .map_err(|e| ApiError::internal("read instance log", e))
                    .and_then(|chunk| chunk.map(NodeReply::Chunk));
                answer(reply, result)
            });
        }
        NodeRequest::RouterStats { .. } => {
            answer(reply, Err(ApiError::invalid("router statistics are kept by fronts, not storage nodes")));
        }
        NodeRequest::Deploy(action) => {
            let node = node.clone();
            spawn_traced(async move { answer(reply, crate::deploy::act(&node, action).await) });
        }
        NodeRequest::Ci(action) => {
            let node = node.clone();
            spawn_traced(async move { answer(reply, crate::ci::act(&node, action).await) });
        }
        NodeRequest::RemoveMember { node: member } => {
            let node = node.clone();
            spawn_traced(async move { answer(reply, remove_member(&node, member).await) });
        }
        NodeRequest::ImportRepo(import) => {
            let node = node.clone();
            spawn_traced(async move { answer(reply, crate::mover::import(&node, import).await) });
        }
        NodeRequest::ReadTransfer { transfer, offset } => {
            let node = node.clone();
            spawn_traced(async move {
                let read = tokio::task::spawn_blocking(move || node.transfers.read(transfer, offset)).await;
                let result = read
                    .map_err(|e| ApiError::internal("read transfer", e))
                    .and_then(|chunk| chunk.map(NodeReply::Chunk));
                answer(reply, result)
            });
        }
        NodeRequest::EndTransfer { transfer } => {
            node.transfers.end(transfer);
            answer(reply, Ok(NodeReply::Done));
        }
        NodeRequest::Repo { id, name, request } => {
            // Taken here, in the call's span: the message may be built in a task of its own.
            let traced = Traced::current();
            dispatch_repo(node, id, name, reply, move |port, guard| RepoMessage::Handle(request, port, guard, traced)).await;
        }
        NodeRequest::DeleteRepo { id, name } => {
            let traced = Traced::current();
            dispatch_repo(node, id, name, reply, move |port, guard| RepoMessage::Delete(port, guard, traced)).await;
        }
        NodeRequest::CreateRepo { name } => {
            let node = node.clone();
            spawn_traced(async move { answer(reply, create(&node, name).await) });
        }
        NodeRequest::SessionWrite { session, data } => {
            node.sessions.deliver(session, SessionOp::Write(data, reply))
        }
        NodeRequest::SessionFinishInput { session } => {
            node.sessions.deliver(session, SessionOp::FinishInput(reply))
        }
        NodeRequest::SessionRead { session } => {
            node.sessions.deliver(session, SessionOp::Read(reply))
        }
        NodeRequest::SessionAbort { session } => {
            node.sessions.deliver(session, SessionOp::Abort(reply))
        }
        NodeRequest::MetricsAddress => answer(reply, Ok(NodeReply::MetricsAddress(node.config.metrics_addr.clone()))),
        NodeRequest::Stats => {
            let node = node.clone();
            spawn_traced(async move {
                let stats = NodeStats {
                    actors: node.registry.active().await as u64,
                    sessions: node.sessions.open_count() as u64,
                    moves: node.transfers.moves_done.load(std::sync::atomic::Ordering::SeqCst),
                    sandbox: node.sandbox.describe(),
                };
                answer(reply, Ok(NodeReply::Stats(stats)))
            });
        }
        NodeRequest::SetNodeState { node: member, state } => {
            let node = node.clone();
            spawn_traced(async move {
                let result = match node.meta.write(Command::SetNodeState { node: member, state }).await {
                    Ok(_) => Ok(NodeReply::Done),
                    Err(error) => Err(error.into_api("change a node's state")),
                };
                answer(reply, result)
            });
        }
    }
}

/// Records a new repository owned by this node, then initialises it on disk. If the disk
/// step fails the record is removed again, so a listed repository always has its data.
async fn create(node: &NodeContext, name: RepoName) -> Result<NodeReply, ApiError> {
    let command = Command::CreateRepo {
        name: name.clone(),
        node: node.config.id,
        now_ms: crate::now_ms(),
    };
    let record = match node.meta.write(command).await {
        Ok(CommandOutcome::Repo(record)) => record,
        Ok(other) => return Err(ApiError::internal("create repository", format!("unexpected outcome {other:?}"))),
        Err(error) => return Err(error.into_api("create repository record")),
    };
    let path = node.config.repo_path(record.id);
    let init_name = name.clone();
    let initialised = tokio::task::spawn_blocking(move || GitRepo::init(&path, init_name.to_string()))
        .await
        .map_err(|error| ApiError::internal("initialise repository", error))
        .and_then(std::convert::identity);
    if let Err(error) = initialised {
        tracing::error!(repo = %name, %error, "initialising the repository failed; removing its record");
        let _ = node.meta.write(Command::DeleteRepo { name }).await;
        return Err(error);
    }
    tracing::info!(repo = %record.name, id = %record.id, "repository created");
    Ok(NodeReply::Created(record))
}
