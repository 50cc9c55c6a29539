//! Wharf's metadata: one openraft group whose log and state machine live in sled.
//!
//! The metadata is everything that is not a repository's content: members, repository
//! records and their owners, push events, tokens. It changes only through [`Meta::write`],
//! which proposes a [`Command`] to Raft and returns the state machine's answer once the
//! command is committed and applied. Reads go to [`Meta::directory`], an in-memory view of
//! the applied state, so routing a request never waits on Raft.
//!
//! This crate owns the sled database of a node (one per process: sled holds a file lock).
//! It knows nothing of git, actors or HTTP.

mod command;
mod log_store;
mod network;
mod state_machine;

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::{BasicNode, Config, Raft};
use serde::Serialize;
use wharf_proto::{Directory, NodeId};

pub use command::{hash_token, Command, CommandOutcome, CommandResult, RefUpdate, State};

openraft::declare_raft_types!(
    /// Wharf's Raft types: commands in, command results out, nodes known by address.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
);

/// Raft timers. The defaults are raised well above openraft's (50 ms heartbeat, 150–300 ms
/// election) because a loaded two-core machine with millisecond fsync tails makes those flap.
#[derive(Debug, Clone)]
pub struct MetaConfig {
    /// Leader heartbeat interval.
    pub heartbeat_ms: u64,
    /// Lower bound of the randomized election timeout.
    pub election_min_ms: u64,
    /// Upper bound of the randomized election timeout.
    pub election_max_ms: u64,
}

impl Default for MetaConfig {
    fn default() -> Self {
        MetaConfig {
            heartbeat_ms: 250,
            election_min_ms: 1500,
            election_max_ms: 3000,
        }
    }
}

/// Why the metadata store failed (as opposed to refusing a command, which is an
/// [`ApiError`] inside a successful write).
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// sled could not be opened or read.
    #[error("metadata storage: {0}")]
    Storage(String),
    /// Raft failed.
    #[error("raft: {0}")]
    Raft(String),
    /// This node is not the leader; writes go to `leader`.
    #[error("this node is not the metadata leader (leader: {leader:?})")]
    NotLeader {
        /// The leader, if known.
        leader: Option<u64>,
    },
    /// Something did not happen in time.
    #[error("timed out waiting for {0}")]
    Timeout(String),
}

/// What [`Meta::status`] reports.
#[derive(Debug, Clone, Serialize)]
pub struct MetaStatus {
    /// This node.
    pub node_id: u64,
    /// The current leader.
    pub leader: Option<u64>,
    /// The current term.
    pub term: u64,
    /// The last applied log index.
    pub last_applied: Option<u64>,
    /// The voters.
    pub voters: Vec<u64>,
}

/// The metadata store of one node. Clones share it.
#[derive(Clone)]
pub struct Meta {
    inner: Arc<Inner>,
}

struct Inner {
    raft: Raft<TypeConfig>,
    state: Arc<command::SharedState>,
    db: sled::Db,
    node_id: NodeId,
    addr: String,
}

impl Meta {
    /// Opens (or creates) the store in `dir` and starts this node's Raft.
    pub async fn open(dir: &Path, node_id: NodeId, addr: String, config: MetaConfig) -> Result<Meta, MetaError> {
        let path = dir.to_owned();
        let db = tokio::task::spawn_blocking(move || sled::open(path))
            .await
            .map_err(|e| MetaError::Storage(e.to_string()))?
            .map_err(|e| MetaError::Storage(format!("cannot open {}: {e}", dir.display())))?;
        let log_store = log_store::LogStore::open(&db).map_err(|e| MetaError::Storage(e.to_string()))?;
        let state_machine = state_machine::StateMachineStore::open(&db).map_err(MetaError::Storage)?;
        let state = state_machine.state.clone();
        let raft_config = Config {
            cluster_name: "wharf".into(),
            heartbeat_interval: config.heartbeat_ms,
            election_timeout_min: config.election_min_ms,
            election_timeout_max: config.election_max_ms,
            ..Config::default()
        }
        .validate()
        .map_err(|e| MetaError::Raft(e.to_string()))?;
        let raft = Raft::new(node_id.0, Arc::new(raft_config), network::Network, log_store, state_machine)
            .await
            .map_err(|e| MetaError::Raft(e.to_string()))?;
        Ok(Meta {
            inner: Arc::new(Inner {
                raft,
                state,
                db,
                node_id,
                addr,
            }),
        })
    }

    /// Makes this node the single voter of a new group, or, after a restart, waits until it
    /// leads again. Returns once this node leads and has applied its whole log.
    pub async fn bootstrap_single(&self) -> Result<(), MetaError> {
        let raft = &self.inner.raft;
        let id = self.inner.node_id.0;
        if !raft.is_initialized().await.map_err(|e| MetaError::Raft(e.to_string()))? {
            let members = BTreeMap::from([(
                id,
                BasicNode {
                    addr: self.inner.addr.clone(),
                },
            )]);
            raft.initialize(members).await.map_err(|e| MetaError::Raft(e.to_string()))?;
        }
        let deadline = Some(Duration::from_secs(60));
        let metrics = raft
            .wait(deadline)
            .current_leader(id, "bootstrap")
            .await
            .map_err(|e| MetaError::Timeout(format!("leadership: {e}")))?;
        raft.wait(deadline)
            .applied_index_at_least(metrics.last_log_index, "bootstrap")
            .await
            .map_err(|e| MetaError::Timeout(format!("applying the log: {e}")))?;
        Ok(())
    }

    /// Proposes `command`; returns the state machine's answer once it is committed and
    /// applied.
    pub async fn write(&self, command: Command) -> Result<CommandResult, MetaError> {
        match self.inner.raft.client_write(command).await {
            Ok(response) => Ok(response.data),
            Err(error) => match error.forward_to_leader::<BasicNode>() {
                Some(forward) => Err(MetaError::NotLeader {
                    leader: forward.leader_id,
                }),
                None => Err(MetaError::Raft(error.to_string())),
            },
        }
    }

    /// The applied state, read locally.
    pub fn directory(&self) -> Arc<dyn Directory> {
        self.inner.state.clone()
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    /// Leader, term and progress, from Raft's metrics.
    pub fn status(&self) -> MetaStatus {
        let metrics = self.inner.raft.metrics().borrow().clone();
        MetaStatus {
            node_id: self.inner.node_id.0,
            leader: metrics.current_leader,
            term: metrics.current_term,
            last_applied: metrics.last_applied.map(|id| id.index),
            voters: metrics.membership_config.membership().voter_ids().collect(),
        }
    }

    /// Stops Raft and flushes sled.
    pub async fn shutdown(&self) -> Result<(), MetaError> {
        self.inner.raft.shutdown().await.map_err(|e| MetaError::Raft(e.to_string()))?;
        let db = self.inner.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| MetaError::Storage(e.to_string()))?
            .map_err(|e| MetaError::Storage(e.to_string()))?;
        Ok(())
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;

// `declare_raft_types!` names the snapshot type `Cursor<Vec<u8>>` unqualified.
#[allow(dead_code)]
type SnapshotData = Cursor<Vec<u8>>;
