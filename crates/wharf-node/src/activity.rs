//! Counting work in flight on one repository, so that passivation never stops an actor that
//! still has a request, a write or a git session to finish.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ractor::RpcReplyPort;
use wharf_proto::{codec, ApiError, NodeReply};

/// Work in flight on one repository, and when it last finished.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    inflight: AtomicUsize,
    last_done_ms: AtomicU64,
}

impl Activity {
    /// Whether nothing is in flight and the last work ended more than `idle` ago.
    pub fn is_idle(&self, idle: Duration) -> bool {
        self.inflight.load(Ordering::SeqCst) == 0
            && crate::now_ms().saturating_sub(self.last_done_ms.load(Ordering::SeqCst))
                >= idle.as_millis() as u64
    }
}

/// One unit of work in flight; dropping it marks the work done. The router creates it when it
/// hands a message to a repository actor, and it travels with the work to whatever task ends
/// it (a read task, the write queue, a git session).
#[derive(Debug)]
pub(crate) struct InflightGuard(Arc<Activity>);

impl InflightGuard {
    pub fn new(activity: Arc<Activity>) -> Self {
        activity.inflight.fetch_add(1, Ordering::SeqCst);
        InflightGuard(activity)
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.last_done_ms.store(crate::now_ms(), Ordering::SeqCst);
        self.0.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Answers an encoded `Result<NodeReply, ApiError>` on a reply port. A caller that has gone
/// away (timed out, disconnected) is not an error for the node.
pub(crate) fn answer(port: RpcReplyPort<Vec<u8>>, result: Result<NodeReply, ApiError>) {
    let bytes = codec::encode(&result).unwrap_or_else(|error| {
        let fallback: Result<NodeReply, ApiError> = Err(ApiError::internal("encode reply", error));
        codec::encode(&fallback).expect("an ApiError::Internal always encodes")
    });
    let _ = port.send(bytes);
}
