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
        let router: ActorRef<NodeMessage> = router.into();
        let bytes = codec::encode(request).map_err(|e| ApiError::internal("encode request", e))?;
        match router.call(|port| NodeMessage::Call(bytes, port), Some(timeout)).await {
            Ok(CallResult::Success(reply)) => codec::decode::<Result<NodeReply, ApiError>>(&reply)
                .map_err(|e| ApiError::internal("decode reply", e))?,
            Ok(CallResult::Timeout) => Err(unavailable(format!("no answer within {timeout:?}"))),
            Ok(CallResult::SenderError) => Err(unavailable("it dropped the request".into())),
            Err(_) => Err(unavailable("its router actor is gone".into())),
        }
    }
}
