//! Metadata reads that routing and authentication need without a round trip.

use crate::deploy::{DeploymentRecord, EnvironmentRecord, InstanceRecord};
use crate::{
    JobRecord, NodeId, NodeRecord, PipelineRecord, Principal, PushEvent, RaftRole, RepoId, RepoName, RepoRecord, Variable,
};

/// A read-only, local view of the applied metadata state.
///
/// The metadata store implements it over its applied records on the local disk (sled, through
/// its cache), so a front routes a request and checks a token without waiting on Raft. Lookups
/// by id and by name are indexed.
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
    fn pipelines(&self, repo: RepoId, limit: usize) -> Vec<PipelineRecord>;
    /// One pipeline.
    fn pipeline(&self, id: u64) -> Option<PipelineRecord>;
    /// One job.
    fn job(&self, id: u64) -> Option<JobRecord>;
    /// Jobs waiting for a runner, oldest first, at most `limit`.
    fn queued_jobs(&self, limit: usize) -> Vec<JobRecord>;
    /// Jobs a runner holds now.
    fn running_jobs(&self) -> Vec<JobRecord>;
    /// A repository's CI variables, by name.
    fn variables(&self, repo: RepoId) -> Vec<Variable>;
    /// The record of a repository, by id.
    fn repo_by_id(&self, id: RepoId) -> Option<RepoRecord>;
    /// The environments of `repo`, or of every repository.
    fn environments(&self, repo: Option<RepoId>) -> Vec<EnvironmentRecord>;
    /// One environment.
    fn environment(&self, id: u64) -> Option<EnvironmentRecord>;
    /// The deployments of `env` (of every environment when `None`), oldest first.
    fn deployments(&self, env: Option<u64>) -> Vec<DeploymentRecord>;
    /// One deployment.
    fn deployment(&self, id: u64) -> Option<DeploymentRecord>;
    /// The instances of `env` (of every environment when `None`).
    fn instances(&self, env: Option<u64>) -> Vec<InstanceRecord>;
    /// Every member of the Raft group and its role, as this process last saw it.
    fn raft_roles(&self) -> Vec<(NodeId, RaftRole)> {
        Vec::new()
    }
}
