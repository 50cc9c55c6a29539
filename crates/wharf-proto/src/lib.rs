//! The vocabulary every Wharf process shares: ids, the messages a front sends to a node, the
//! records the metadata store holds, the errors that travel in replies, and the one wire codec.
//!
//! A front turns an HTTP request into a [`NodeRequest`], wraps it in a [`CallEnvelope`] with
//! the HTTP request's [`RequestId`], encodes it with [`codec`], and sends it as a
//! [`NodeMessage::CallTraced`] to the node router actor found in the process group named by
//! [`node_group`]. The node answers with an encoded `Result<NodeReply, ApiError>`. The same bytes
//! go to a local actor in `wharf dev` and across `ractor_cluster` in a cluster: one code path.
//! Reads of metadata that must not wait on a node (routing, authentication, listings) go
//! through the [`Directory`] trait, which the metadata store implements.
//!
//! This crate holds no I/O and no policy: it must not depend on any other Wharf crate.

#![warn(missing_docs)]

mod client;
pub mod codec;
pub mod deploy;
mod directory;
mod error;
mod ids;
mod message;
mod records;
mod trace;
pub mod store;
mod views;

pub use client::NodeClient;
pub use directory::Directory;
pub use error::ApiError;
pub use ids::{NodeId, RepoId, RepoName, SessionId};
pub use message::{
    node_group, CallEnvelope, CiAction, ROUTERS_GROUP, CommitFilesRequest, DeployAction, FileAction, FileActionKind, GitService, ImportRepo, MergeRequest,
    MergeStrategy, NodeMessage, NodeReply, NodeRequest, NodeStats, OpenSession, RepoRequest, SessionChunk,
};
pub use trace::RequestId;
pub use records::{
    ArtifactFile, JobRecord, JobStatus, NodeRecord, NodeState, PipelineRecord, PipelineStatus, Principal, PushEvent,
    RaftRole, RepoRecord, TestFailure, TestReport, Variable,
};
pub use views::{
    BlobView, BranchView, ChangeKind, CommitDetail, CommitView, CompareView, FileDiffStat,
    LogPage, MergeOutcome, PersonView, RepoSummary, TagView, TreeEntryKind, TreeEntryView,
    TreePage,
};

/// Largest payload Wharf puts in one actor message. `ractor_cluster` drops a connection on an
/// inbound frame over 16 MiB, so pack data and blobs travel in chunks of at most this size.
pub const MAX_CHUNK_BYTES: usize = 1 << 20;

/// Largest blob the browsing API returns in one reply (8 MiB): well under the 16 MiB frame
/// limit, and larger than any file a web UI should render inline.
pub const MAX_BLOB_BYTES: u64 = 8 << 20;
