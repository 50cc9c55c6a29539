//! The requests a front sends to a storage node, and their replies.
//!
//! Everything travels inside one remotable actor message, [`NodeMessage::Call`], as bytes
//! encoded by [`crate::codec`]: a `NodeRequest` in, a `Result<NodeReply, ApiError>` out. One
//! envelope keeps the `ractor_cluster` surface to a single derive and lets every request share
//! the codec's version marker. Add variants at the end, never rename or reorder them.

use ractor::RpcReplyPort;
use ractor_cluster::RactorClusterMessage;
use serde::{Deserialize, Serialize};

use crate::deploy::{DeploymentKind, EnvConfig, InstanceTraffic};
use crate::views::*;
use crate::{NodeId, PipelineRecord, RepoId, RepoName, RepoRecord, SessionId, Variable};

/// The message a node router actor receives, locally or from another process.
#[derive(RactorClusterMessage)]
pub enum NodeMessage {
    /// An encoded [`NodeRequest`]; the reply is an encoded `Result<NodeReply, ApiError>`.
    /// Sent by processes from before [`NodeMessage::CallTraced`]; answered by the node's
    /// router actor like a `CallTraced` without a request id.
    #[rpc]
    Call(Vec<u8>, RpcReplyPort<Vec<u8>>),
    /// An encoded [`CallEnvelope`]: a request with the id of the HTTP request that caused
    /// it. The reply is an encoded `Result<NodeReply, ApiError>`. Sent by [`crate::NodeClient`]
    /// (a front, or a node passing work on); answered by a node's router actor or a front's
    /// router-statistics actor.
    #[rpc]
    CallTraced(Vec<u8>, RpcReplyPort<Vec<u8>>),
}

impl NodeMessage {
    /// The call this message carries, decoded, and the port its answer goes to.
    pub fn into_call(self) -> (Result<CallEnvelope, crate::codec::CodecError>, RpcReplyPort<Vec<u8>>) {
        match self {
            NodeMessage::Call(bytes, reply) => {
                let envelope = crate::codec::decode::<NodeRequest>(&bytes).map(|request| CallEnvelope {
                    request_id: None,
                    request,
                });
                (envelope, reply)
            }
            NodeMessage::CallTraced(bytes, reply) => (crate::codec::decode::<CallEnvelope>(&bytes), reply),
        }
    }
}

/// A request and the context it was sent in (see [`NodeMessage::CallTraced`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallEnvelope {
    /// The HTTP request this call serves, if it serves one: the owning node logs under it.
    pub request_id: Option<crate::RequestId>,
    /// The request.
    pub request: NodeRequest,
}

/// The name of the process group in which node `id` registers its router actor.
pub fn node_group(id: NodeId) -> String {
    format!("wharf.node.{id}")
}

/// The process group in which every front registers its router-statistics actor, which
/// answers [`NodeRequest::RouterStats`].
pub const ROUTERS_GROUP: &str = "wharf.routers";

/// A request to a storage node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum NodeRequest {
    /// Create a repository owned by the receiving node: record it in the metadata store,
    /// then initialise it on disk. Replies [`NodeReply::Created`].
    CreateRepo {
        /// The new repository's name.
        name: RepoName,
    },
    /// Remove a repository from the metadata store and from disk. Replies [`NodeReply::Done`].
    DeleteRepo {
        /// Its id.
        id: RepoId,
        /// Its name.
        name: RepoName,
    },
    /// A request for one repository's actor.
    Repo {
        /// The repository's id.
        id: RepoId,
        /// Its name (for errors and logs).
        name: RepoName,
        /// What to do.
        request: RepoRequest,
    },
    /// Feed bytes to a git session's standard input. Replies [`NodeReply::Done`] once the
    /// session has taken them: the caller sends the next chunk only then (backpressure).
    SessionWrite {
        /// The session.
        session: SessionId,
        /// At most [`crate::MAX_CHUNK_BYTES`].
        data: Vec<u8>,
    },
    /// Close a session's standard input: the request body is complete. Replies
    /// [`NodeReply::Done`].
    SessionFinishInput {
        /// The session.
        session: SessionId,
    },
    /// Take the next chunk of a session's output. Replies [`NodeReply::Chunk`]; the last one has
    /// `eof` set and the session is gone after it.
    SessionRead {
        /// The session.
        session: SessionId,
    },
    /// Kill a session (the client went away). Nothing it was writing takes effect. Replies
    /// [`NodeReply::Done`].
    SessionAbort {
        /// The session.
        session: SessionId,
    },
    /// What the node is doing now. Replies [`NodeReply::Stats`].
    Stats,
    /// Change a member's state (drain, undrain), through the metadata store. Replies
    /// [`NodeReply::Done`].
    SetNodeState {
        /// The member.
        node: NodeId,
        /// Its new state.
        state: crate::NodeState,
    },
    /// Copy a repository that is moving here from `from`: pull the bundle `transfer` from it
    /// and fetch it into the incoming copy. With `finalize`, also check the copy (`git fsck`,
    /// refs equal to `refs`) and put it in place, ready to serve once Raft says so. Replies
    /// [`NodeReply::Done`].
    ImportRepo(ImportRepo),
    /// Read a piece of a transfer file this node offered. Replies [`NodeReply::Chunk`].
    ReadTransfer {
        /// The transfer.
        transfer: u64,
        /// Where to read from.
        offset: u64,
    },
    /// Forget a transfer file. Replies [`NodeReply::Done`].
    EndTransfer {
        /// The transfer.
        transfer: u64,
    },
    /// Remove a drained node from the cluster: from the Raft group, then its record. Only the
    /// Raft leader does it; other nodes pass it on. Replies [`NodeReply::Done`].
    RemoveMember {
        /// The node.
        node: NodeId,
    },
    /// Read a CI job's log from `offset`. Replies [`NodeReply::Chunk`]; `eof` once the job has
    /// finished and all of it was read.
    JobLog {
        /// The job.
        job: u64,
        /// Where to read from.
        offset: u64,
    },
    /// A request another node passed on because the repository moved here: served here
    /// whatever this node's (possibly lagging) view of the owner says, never passed on again.
    Forwarded(Box<NodeRequest>),
    /// Read a kept file of a CI job from `offset`. Replies [`NodeReply::Chunk`].
    ReadArtifact {
        /// The job.
        job: u64,
        /// The file's path, as listed in the job's record.
        path: String,
        /// Where to read from.
        offset: u64,
    },
    /// Change pipelines, jobs or CI variables on a user's behalf; any storage node proposes it
    /// to Raft. Replies [`NodeReply::Done`], or [`NodeReply::Pipeline`] for a change to one.
    Ci(CiAction),
    /// Change environments or ask for a deployment on a user's behalf; any storage node
    /// proposes it to Raft. Replies [`NodeReply::Id`] for what was created, else
    /// [`NodeReply::Done`].
    Deploy(DeployAction),
    /// To a front's router-statistics actor: what its application router has seen of these
    /// instances since it started. Replies [`NodeReply::RouterStats`].
    RouterStats {
        /// The instances.
        instances: Vec<u64>,
    },
    /// Read the output of a deployed instance that runs (or ran) on this node, from `offset`.
    /// Replies [`NodeReply::Chunk`].
    InstanceLog {
        /// The instance.
        instance: u64,
        /// Where to read from.
        offset: u64,
    },
    /// Where the receiving process serves `/metrics`. Replies [`NodeReply::MetricsAddress`].
    /// A front's router-statistics actor answers it too, which is how a front lists the other
    /// fronts for Prometheus.
    MetricsAddress,
}

impl NodeRequest {
    /// The request's kind, for metrics: a fixed name per variant (per repository request for
    /// [`NodeRequest::Repo`]), so the number of series stays bounded.
    pub fn kind(&self) -> &'static str {
        match self {
            NodeRequest::CreateRepo { .. } => "create_repo",
            NodeRequest::DeleteRepo { .. } => "delete_repo",
            NodeRequest::Repo { request, .. } => request.kind(),
            NodeRequest::SessionWrite { .. } => "session_write",
            NodeRequest::SessionFinishInput { .. } => "session_finish_input",
            NodeRequest::SessionRead { .. } => "session_read",
            NodeRequest::SessionAbort { .. } => "session_abort",
            NodeRequest::Stats => "stats",
            NodeRequest::SetNodeState { .. } => "set_node_state",
            NodeRequest::ImportRepo(_) => "import_repo",
            NodeRequest::ReadTransfer { .. } => "read_transfer",
            NodeRequest::EndTransfer { .. } => "end_transfer",
            NodeRequest::RemoveMember { .. } => "remove_member",
            NodeRequest::JobLog { .. } => "job_log",
            NodeRequest::Forwarded(_) => "forwarded",
            NodeRequest::ReadArtifact { .. } => "read_artifact",
            NodeRequest::Ci(_) => "ci",
            NodeRequest::Deploy(_) => "deploy",
            NodeRequest::RouterStats { .. } => "router_stats",
            NodeRequest::InstanceLog { .. } => "instance_log",
            NodeRequest::MetricsAddress => "metrics_address",
        }
    }
}

/// A user's change to environments and deployments (see [`NodeRequest::Deploy`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DeployAction {
    /// Create an environment.
    CreateEnvironment {
        /// The repository.
        repo: RepoId,
        /// Its name.
        name: String,
        /// Its instance size.
        config: EnvConfig,
        /// Whether it deploys only on an explicit call.
        protected: bool,
    },
    /// Change an environment.
    UpdateEnvironment {
        /// The environment.
        env: u64,
        /// A new size.
        config: Option<EnvConfig>,
        /// A new protection.
        protected: Option<bool>,
    },
    /// Delete an environment and stop its instances.
    DeleteEnvironment {
        /// The environment.
        env: u64,
    },
    /// Let a blue-green deployment that waits for promotion switch traffic.
    PromoteDeployment {
        /// The deployment.
        deployment: u64,
    },
    /// Deploy a commit, or return to an earlier revision.
    CreateDeployment {
        /// The environment.
        env: u64,
        /// Why.
        kind: DeploymentKind,
        /// The branch asked for.
        branch: Option<String>,
        /// The commit.
        sha: String,
    },
}

/// A user's change to CI state (see [`NodeRequest::Ci`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CiAction {
    /// Cancel every unfinished job of a pipeline.
    CancelPipeline {
        /// The pipeline.
        pipeline: u64,
    },
    /// Run a finished job again.
    RetryJob {
        /// The job.
        job: u64,
    },
    /// Add or replace a repository's variable.
    SetVariable {
        /// The repository.
        repo: RepoId,
        /// The variable.
        variable: Variable,
    },
    /// Remove a repository's variable.
    DeleteVariable {
        /// The repository.
        repo: RepoId,
        /// Its name.
        name: String,
    },
}

/// See [`NodeRequest::ImportRepo`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportRepo {
    /// The repository.
    pub id: RepoId,
    /// Its name.
    pub name: RepoName,
    /// The node it comes from.
    pub from: NodeId,
    /// The bundle to pull from `from`, if the repository has any refs.
    pub transfer: Option<u64>,
    /// The bundle's size in bytes.
    pub size: u64,
    /// The branch HEAD points at.
    pub head: Option<String>,
    /// Every ref of the source at the time of the bundle.
    pub refs: std::collections::BTreeMap<String, String>,
    /// Whether this is the last import: check the copy and put it in place.
    pub finalize: bool,
}

/// A request for one repository, handled by its actor on the owning node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RepoRequest {
    /// Replies [`NodeReply::Summary`].
    Summary,
    /// Replies [`NodeReply::Branches`].
    ListBranches,
    /// Replies [`NodeReply::Tags`].
    ListTags,
    /// Create a branch at `from` (a branch, tag or commit; default: the default branch).
    /// Replies [`NodeReply::Branch`].
    CreateBranch {
        /// Short branch name.
        name: String,
        /// Where it starts.
        from: Option<String>,
    },
    /// Delete a branch. Replies [`NodeReply::Done`].
    DeleteBranch {
        /// Short branch name.
        name: String,
    },
    /// List a directory. Replies [`NodeReply::Tree`].
    Tree {
        /// Branch, tag or commit; default: the default branch.
        rev: Option<String>,
        /// Directory path; empty for the root.
        path: String,
        /// Entries to skip.
        offset: u64,
        /// Entries to return at most.
        limit: u64,
    },
    /// Read a file. Replies [`NodeReply::Blob`].
    Blob {
        /// Branch, tag or commit; default: the default branch.
        rev: Option<String>,
        /// File path.
        path: String,
    },
    /// History, newest first. Replies [`NodeReply::Log`].
    Log {
        /// Branch, tag or commit to start from; default: the default branch.
        rev: Option<String>,
        /// Only commits that change this path.
        path: Option<String>,
        /// Commits per page.
        limit: u64,
        /// The `next_cursor` of the previous page.
        cursor: Option<String>,
    },
    /// One commit with its diff stats. Replies [`NodeReply::Commit`].
    Commit {
        /// Commit id or ref.
        rev: String,
    },
    /// Compare two refs. Replies [`NodeReply::Compare`].
    Compare {
        /// The base.
        base: String,
        /// The head.
        head: String,
    },
    /// Create one commit from file actions. Replies [`NodeReply::Commit`].
    CommitFiles(CommitFilesRequest),
    /// Merge one ref into a branch. Replies [`NodeReply::Merged`].
    Merge(MergeRequest),
    /// Start a git protocol session. Replies [`NodeReply::Session`]; the caller then writes
    /// its request body and reads the output with the `Session*` requests.
    OpenSession(OpenSession),
    /// Bundle every ref so that a runner on another node can check out a commit. Replies
    /// [`NodeReply::Offered`]; the caller reads the bundle with [`NodeRequest::ReadTransfer`]
    /// and ends it with [`NodeRequest::EndTransfer`].
    Bundle,
    /// Start a pipeline for a branch's tip, as a push would (the seed's test trigger).
    /// Replies [`NodeReply::PipelineStarted`].
    TriggerPipeline {
        /// The branch.
        branch: String,
        /// Only the jobs of this stage or with this name, and what they need.
        only: Option<String>,
    },
    /// A write (`CreateBranch`, `DeleteBranch`, `CommitFiles`, `Merge`) made by `user`, who is
    /// recorded in the push events of the refs it changes. Sent by fronts for every write
    /// through the API; replies as the write does.
    AsUser {
        /// The authenticated user.
        user: String,
        /// The write.
        request: Box<RepoRequest>,
    },
}

impl RepoRequest {
    /// The request's kind, for metrics (see [`NodeRequest::kind`]).
    pub fn kind(&self) -> &'static str {
        match self {
            RepoRequest::Summary => "repo_summary",
            RepoRequest::ListBranches => "repo_list_branches",
            RepoRequest::ListTags => "repo_list_tags",
            RepoRequest::CreateBranch { .. } => "repo_create_branch",
            RepoRequest::DeleteBranch { .. } => "repo_delete_branch",
            RepoRequest::Tree { .. } => "repo_tree",
            RepoRequest::Blob { .. } => "repo_blob",
            RepoRequest::Log { .. } => "repo_log",
            RepoRequest::Commit { .. } => "repo_commit",
            RepoRequest::Compare { .. } => "repo_compare",
            RepoRequest::CommitFiles(_) => "repo_commit_files",
            RepoRequest::Merge(_) => "repo_merge",
            RepoRequest::OpenSession(_) => "repo_open_session",
            RepoRequest::Bundle => "repo_bundle",
            RepoRequest::TriggerPipeline { .. } => "repo_trigger_pipeline",
            RepoRequest::AsUser { request, .. } => request.kind(),
        }
    }
}

/// Which git service a session runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GitService {
    /// `git-upload-pack`: clone and fetch.
    UploadPack,
    /// `git-receive-pack`: push.
    ReceivePack,
}

impl GitService {
    /// The service name as git's HTTP protocol spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            GitService::UploadPack => "git-upload-pack",
            GitService::ReceivePack => "git-receive-pack",
        }
    }
}

/// How to start a git protocol session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenSession {
    /// The service.
    pub service: GitService,
    /// `true` for the ref advertisement (`GET info/refs`), `false` for the RPC (`POST`).
    pub advertise_refs: bool,
    /// The client's `Git-Protocol` header; passed on to receive-pack only (fetches are served in
    /// protocol v0, see `wharf_git::service::spawn_service`).
    pub git_protocol: Option<String>,
    /// The authenticated user, recorded in push events.
    pub user: String,
}

/// One piece of a session's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionChunk {
    /// At most [`crate::MAX_CHUNK_BYTES`].
    pub data: Vec<u8>,
    /// The output is complete; the session is gone.
    pub eof: bool,
}

/// What to do to one file in a [`CommitFilesRequest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FileActionKind {
    /// Add a file that must not exist.
    Create,
    /// Change a file that must exist.
    Update,
    /// Remove a file that must exist.
    Delete,
}

/// One file change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileAction {
    /// What to do.
    pub action: FileActionKind,
    /// The path from the repository root.
    pub path: String,
    /// The new content, for create and update.
    pub content: Vec<u8>,
    /// Whether the file is executable.
    pub executable: bool,
}

/// Create one commit on a branch from several file changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitFilesRequest {
    /// The branch to commit to.
    pub branch: String,
    /// Where to start the branch if it does not exist (default: the default branch, or a
    /// root commit in an empty repository).
    pub start_branch: Option<String>,
    /// The tip the client last saw; if the branch is elsewhere the commit is refused (409).
    pub expected_parent: Option<String>,
    /// The commit message.
    pub message: String,
    /// Author name.
    pub author_name: String,
    /// Author email.
    pub author_email: String,
    /// The changes.
    pub actions: Vec<FileAction>,
}

/// How to merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum MergeStrategy {
    /// Move base to head; refused unless base is an ancestor of head.
    FastForward,
    /// A merge commit with both parents.
    Merge,
    /// One commit on base with head's changes, and base as its only parent.
    Squash,
}

/// Merge `head` into the branch `base`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeRequest {
    /// The branch that moves.
    pub base: String,
    /// The branch, tag or commit merged into it.
    pub head: String,
    /// How.
    pub strategy: MergeStrategy,
    /// The commit message (a default names both refs).
    pub message: Option<String>,
    /// Who merges.
    pub author_name: String,
    /// Their email.
    pub author_email: String,
}

/// A node's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeReply {
    /// The request was carried out; nothing to return.
    Done,
    /// A repository was created.
    Created(RepoRecord),
    /// See [`RepoRequest::Summary`].
    Summary(RepoSummary),
    /// See [`RepoRequest::ListBranches`].
    Branches(Vec<BranchView>),
    /// See [`RepoRequest::ListTags`].
    Tags(Vec<TagView>),
    /// See [`RepoRequest::CreateBranch`].
    Branch(BranchView),
    /// See [`RepoRequest::Tree`].
    Tree(TreePage),
    /// See [`RepoRequest::Blob`].
    Blob(BlobView),
    /// See [`RepoRequest::Log`].
    Log(LogPage),
    /// See [`RepoRequest::Commit`] and [`RepoRequest::CommitFiles`].
    Commit(CommitDetail),
    /// See [`RepoRequest::Compare`].
    Compare(CompareView),
    /// See [`RepoRequest::Merge`].
    Merged(MergeOutcome),
    /// See [`RepoRequest::OpenSession`].
    Session(SessionId),
    /// See [`NodeRequest::SessionRead`].
    Chunk(SessionChunk),
    /// See [`NodeRequest::Stats`].
    Stats(NodeStats),
    /// A session opened on another node than the one asked (the repository moved there):
    /// its `Session*` requests go to `node`.
    SessionOn {
        /// The node that holds the session.
        node: NodeId,
        /// The session.
        session: SessionId,
    },
    /// A transfer offered by `node` (see [`RepoRequest::Bundle`]).
    Offered {
        /// The node that offers it.
        node: NodeId,
        /// The transfer.
        transfer: u64,
    },
    /// The pipeline started (see [`RepoRequest::TriggerPipeline`]).
    PipelineStarted(u64),
    /// A pipeline as it is after a change.
    Pipeline(PipelineRecord),
    /// The id of what was created.
    Id(u64),
    /// Requests per instance, as one front's router saw them (see [`NodeRequest::RouterStats`]).
    RouterStats(Vec<InstanceTraffic>),
    /// Where a process serves `/metrics` (`host:port`), if it does (see
    /// [`NodeRequest::MetricsAddress`]).
    MetricsAddress(Option<String>),
}

/// A node's live figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NodeStats {
    /// Repository actors active now.
    pub actors: u64,
    /// Git protocol sessions open now.
    pub sessions: u64,
    /// Repositories this node has moved away since it started.
    pub moves: u64,
    /// What confines its jobs and instances, or why nothing can (then none run there).
    pub sandbox: String,
}
