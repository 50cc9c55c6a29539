//! Sending a [`NodeRequest`] to a storage node and waiting for its reply: what a front does
//! for every request, and what a node does to reach another (moves, forwarding).
//!
//! The node's router actor is found in its process group, whether it runs in this process
//! (`wharf dev`) or in another one reached through `ractor_cluster`: one code path. Every call
//! has a deadline, because a peer that cannot decode a message never answers.

use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::ActorRef;
use crate::{codec, node_group, ApiError, NodeId, NodeMessage, NodeReply, NodeRequest};

/// Calls storage nodes by id.
#[derive(Debug, Clone)]
pub struct NodeClient {
    /// Deadline for ordinary requests.
    pub timeout: Duration,
}

impl NodeClient {
    /// Sends `request` to node `node` with the default deadline.
    pub async fn call(&self, node: NodeId, request: &NodeRequest) -> Result<NodeReply, ApiError> {
        self.call_with_timeout(node, request, self.timeout).await
    }

    /// Sends `request` to node `node` and waits at most `timeout` for the reply.
    pub async fn call_with_timeout(
        &self,
        node: NodeId,
        request: &NodeRequest,
        timeout: Duration,
    ) -> Result<NodeReply, ApiError> {
        let unavailable = |reason: String| ApiError::Unavailable {
            what: format!("node {node}"),
            reason,
            retry_after_secs: 2,
        };
        let Some(router) = ractor::pg::get_members(&node_group(node)).into_iter().next() else {
            return Err(unavailable("it is not connected".into()));
        };
        call_actor(router.into(), request, timeout).await.map_err(|reason| match reason {
            CallError::Unavailable(reason) => unavailable(reason),
            CallError::Api(error) => error,
        })?
    }

    /// Sends `request` to every member of process group `group` (the fronts' router actors)
    /// in turn, and returns the answers of those that answered within `timeout`.
    pub async fn call_group(&self, group: &str, request: &NodeRequest, timeout: Duration) -> Vec<NodeReply> {
        let mut answers = Vec::new();
        for member in ractor::pg::get_members(&group.to_owned()) {
            if let Ok(Ok(reply)) = call_actor(member.into(), request, timeout).await {
                answers.push(reply);
            }
        }
        answers
    }
}

/// Why a call got no decoded answer.
enum CallError {
    /// The actor did not answer.
    Unavailable(String),
    /// The answer could not be encoded or decoded.
    Api(ApiError),
}

/// One call of an actor that answers [`NodeMessage::Call`]: its decoded result, or why there
/// was none.
async fn call_actor(
    actor: ActorRef<NodeMessage>,
    request: &NodeRequest,
    timeout: Duration,
) -> Result<Result<NodeReply, ApiError>, CallError> {
    let bytes = codec::encode(request).map_err(|e| CallError::Api(ApiError::internal("encode request", e)))?;
    match actor.call(|port| NodeMessage::Call(bytes, port), Some(timeout)).await {
        Ok(CallResult::Success(reply)) => codec::decode::<Result<NodeReply, ApiError>>(&reply)
            .map_err(|e| CallError::Api(ApiError::internal("decode reply", e))),
        Ok(CallResult::Timeout) => Err(CallError::Unavailable(format!("no answer within {timeout:?}"))),
        Ok(CallResult::SenderError) => Err(CallError::Unavailable("it dropped the request".into())),
        Err(_) => Err(CallError::Unavailable("its actor is gone".into())),
    }
}
