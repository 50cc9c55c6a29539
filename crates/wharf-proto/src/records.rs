//! Records the metadata store keeps and hands out through [`crate::Directory`].

use serde::{Deserialize, Serialize};

use crate::{NodeId, RepoId, RepoName};

/// Where a node is in its life in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Known to Raft, not yet given repositories.
    Joining,
    /// Takes part in placement.
    Active,
    /// Being emptied of repositories.
    Draining,
    /// Holds no repositories; may be stopped or removed.
    Drained,
    /// Missed its heartbeats.
    Down,
}

/// A member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Its id (also its Raft id).
    pub id: NodeId,
    /// Its cluster address (`host:port`).
    pub addr: String,
    /// Its state.
    pub state: NodeState,
    /// Its placement weight: relative share of repositories (100 = the usual share).
    pub weight: u32,
}

/// A repository and where it lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoRecord {
    /// Its id; its directory on disk derives from it.
    pub id: RepoId,
    /// Its name.
    pub name: RepoName,
    /// The node that owns it: the only node that accepts writes to it.
    pub node: NodeId,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: u64,
}

/// One ref update of one push, as recorded in the metadata store. CI starts from these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushEvent {
    /// Position in the repository's event list, from 1.
    pub seq: u64,
    /// The repository.
    pub repo: RepoId,
    /// The full ref name (`refs/heads/main`).
    pub ref_name: String,
    /// The ref's value before the push (`None` when the push created it).
    pub old: Option<String>,
    /// The ref's value after the push (`None` when the push deleted it).
    pub new: Option<String>,
    /// Who pushed.
    pub pusher: String,
    /// When, milliseconds since the Unix epoch.
    pub time_ms: u64,
}

/// Who a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// The user name.
    pub user: String,
    /// Whether the user may do everything.
    pub admin: bool,
}

/// A process's part in the Raft group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RaftRole {
    /// The voter that leads.
    Leader,
    /// A voter that follows.
    Follower,
    /// A member that replicates the log without a vote (a new node, a front).
    Learner,
    /// Not in the group.
    None,
}
