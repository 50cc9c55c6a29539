//! Sending a [`NodeRequest`] to a storage node and waiting for its reply: what a front does
//! for every request, and what a node does to reach another (moves, forwarding).
//!
//! The node's router actor is found in its process group, whether it runs in this process
//! (`wharf dev`) or in another one reached through `ractor_cluster`: one code path. Every call
//! has a deadline, because a peer that cannot decode a message never answers.
//!
//! Every call carries the current [`RequestId`] (see [`crate::trace`]) and is counted:
//! `wharf_actor_calls_total` and `wharf_actor_call_duration_seconds`, by request kind, by
//! whether the actor runs in this process (`local`) or another (`remote`), and by outcome.

use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::ActorRef;
use crate::{codec, node_group, ApiError, NodeId, NodeMessage, NodeReply, NodeRequest, RequestId};

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

/// [`crate::CallEnvelope`] by reference, so that a call does not copy its payload (up to a 1 MiB chunk
/// of a push) to encode it. The same fields in the same order: the codec writes the same bytes,
/// which the test below checks.
#[derive(serde::Serialize)]
struct BorrowedEnvelope<'a> {
    request_id: Option<&'a RequestId>,
    request: &'a NodeRequest,
}

/// One call of an actor that answers [`NodeMessage::Call`]: its decoded result, or why there
/// was none.
async fn call_actor(
    actor: ActorRef<NodeMessage>,
    request: &NodeRequest,
    timeout: Duration,
) -> Result<Result<NodeReply, ApiError>, CallError> {
    let kind = request.kind();
    let target = if actor.get_id().is_local() { "local" } else { "remote" };
    let started = std::time::Instant::now();
    let request_id = RequestId::current();
    let envelope = BorrowedEnvelope {
        request_id: request_id.as_ref(),
        request,
    };
    let bytes = codec::encode(&envelope).map_err(|e| CallError::Api(ApiError::internal("encode request", e)))?;
    let result = match actor.call(|port| NodeMessage::CallTraced(bytes, port), Some(timeout)).await {
        Ok(CallResult::Success(reply)) => codec::decode::<Result<NodeReply, ApiError>>(&reply)
            .map_err(|e| CallError::Api(ApiError::internal("decode reply", e))),
        Ok(CallResult::Timeout) => Err(CallError::Unavailable(format!("no answer within {timeout:?}"))),
        Ok(CallResult::SenderError) => Err(CallError::Unavailable("it dropped the request".into())),
        Err(_) => Err(CallError::Unavailable("its actor is gone".into())),
    };
    let outcome = match &result {
        Ok(Ok(_)) => "ok",
        Ok(Err(_)) => "error",
        Err(CallError::Unavailable(_)) => "unavailable",
        Err(CallError::Api(_)) => "undecodable",
    };
    metrics::counter!("wharf_actor_calls_total", "kind" => kind, "target" => target, "outcome" => outcome).increment(1);
    metrics::histogram!("wharf_actor_call_duration_seconds", "kind" => kind, "target" => target)
        .record(started.elapsed().as_secs_f64());
    result
}

#[cfg(test)]
mod tests {
    use super::BorrowedEnvelope;
    use crate::{codec, CallEnvelope, NodeRequest, RequestId, SessionId};

    #[test]
    fn a_borrowed_envelope_decodes_as_a_call_envelope() {
        let request = NodeRequest::SessionWrite {
            session: SessionId(7),
            data: vec![1, 2, 3],
        };
        for request_id in [None, RequestId::parse("req-42")] {
            let bytes = codec::encode(&BorrowedEnvelope {
                request_id: request_id.as_ref(),
                request: &request,
            })
            .expect("encodes");
            let decoded: CallEnvelope = codec::decode(&bytes).expect("decodes");
            assert_eq!(decoded, CallEnvelope { request_id, request: request.clone() });
        }
    }
}
