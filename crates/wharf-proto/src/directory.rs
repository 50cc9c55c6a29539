//! Metadata reads that routing and authentication need without a round trip.

use crate::{JobRecord, NodeId, NodeRecord, PipelineRecord, Principal, PushEvent, RaftRole, RepoId, RepoName, RepoRecord};

/// A read-only, local view of the applied metadata state.
///
/// The metadata store implements it over its applied state machine, so a front routes a
/// request and checks a token without waiting on Raft. Every method answers from memory.
pub trait Directory: Send + Sync + 'static {
    /// The record of a repository, by name.
    fn repo(&self, name: &RepoName) -> Option<RepoRecord>;
    /// Every repository, ordered by name.
    fn repos(&self) -> Vec<RepoRecord>;
    /// The members of the cluster.
    fn nodes(&self) -> Vec<NodeRecord>;
    /// Who a bearer token belongs to, if anyone.
    fn authenticate(&self, token: &str) -> Option<Principal>;
    /// A repository's push events with `seq` greater than `after`, oldest first, at most
    /// `limit`.
    fn push_events(&self, repo: RepoId, after: u64, limit: usize) -> Vec<PushEvent>;
    /// A repository's pipelines, newest first, at most `limit`.
    fn pipelines(&self, _repo: RepoId, _limit: usize) -> Vec<PipelineRecord> {
        Vec::new()
    }
    /// One pipeline.
    fn pipeline(&self, _id: u64) -> Option<PipelineRecord> {
        None
    }
    /// One job.
    fn job(&self, _id: u64) -> Option<JobRecord> {
        None
    }
    /// Every member of the Raft group and its role, as this process last saw it.
    fn raft_roles(&self) -> Vec<(NodeId, RaftRole)> {
        Vec::new()
    }
}
