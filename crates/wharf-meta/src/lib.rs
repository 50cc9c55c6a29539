//! Wharf's metadata: one openraft group whose log and state machine live in sled.
//!
//! The metadata is everything that is not a repository's content: members, repository
//! records and their owners, push events, tokens, pipelines and jobs with their leases
//! (`ci`), environments, deployments and instances (`deploy`). It changes only through [`Meta::write`],
//! which proposes a [`Command`] to Raft and returns the state machine's answer once the
//! command is committed and applied. Reads go to [`Meta::directory`], an in-memory view of
//! the applied state, so routing a request never waits on Raft.
//!
//! [`export_raft_metrics`] turns Raft's metrics watch into Prometheus gauges.
//!
//! This crate owns the sled database of a node (one per process: sled holds a file lock).
//! It knows nothing of git, actors or HTTP.

mod ci;
mod command;
mod deploy;
mod log_store;
mod network;
mod state_machine;
mod telemetry;

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::{BasicNode, Config, Raft};
use serde::Serialize;
use wharf_proto::{Directory, NodeId};

pub use ci::{CiCommand, JobResult, MAX_LOST_RUNNERS};
pub use deploy::{DeployCommand, DeployOutcome};
pub use command::{hash_token, Command, CommandOutcome, CommandResult, RefUpdate, State};
pub use network::{RaftTransport, TransportError, TransportFuture};
pub use telemetry::export_raft_metrics;

openraft::declare_raft_types!(
    /// Wharf's Raft types: commands in, command results out, nodes known by address.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
);

/// How long a write waits for a leader to exist and accept it.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(15);

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

/// Why a leader did not take a forwarded write.
#[derive(Serialize, serde::Deserialize)]
enum ForwardRefusal {
    /// It does not lead (any more): the write was not applied.
    NotLeader,
    /// It failed; the write may or may not have been applied.
    Failed(String),
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
    /// The learners (members that replicate the log without a vote: new nodes, fronts).
    pub learners: Vec<u64>,
    /// Every member's cluster address.
    pub addresses: BTreeMap<u64, String>,
}

/// The metadata store of one node. Clones share it.
#[derive(Clone)]
pub struct Meta {
    inner: Arc<Inner>,
}

struct Inner {
    raft: Raft<TypeConfig>,
    transport: Option<Arc<dyn RaftTransport>>,
    state: Arc<command::SharedState>,
    db: sled::Db,
    node_id: NodeId,
    addr: String,
}

impl Meta {
    /// Opens (or creates) the store in `dir` and starts this node's Raft. `transport` reaches
    /// the other members; `None` for a group that will only ever have this node.
    pub async fn open(
        dir: &Path,
        node_id: NodeId,
        addr: String,
        config: MetaConfig,
        transport: Option<Arc<dyn RaftTransport>>,
    ) -> Result<Meta, MetaError> {
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
        let network = network::Network {
            transport: transport.clone(),
        };
        let raft = Raft::new(node_id.0, Arc::new(raft_config), network, log_store, state_machine)
            .await
            .map_err(|e| MetaError::Raft(e.to_string()))?;
        Ok(Meta {
            inner: Arc::new(Inner {
                raft,
                transport,
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
        if !self.is_initialized().await? {
            self.initialize_single().await?;
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

    /// Whether this node has ever been part of a Raft group (initialized or joined).
    pub async fn is_initialized(&self) -> Result<bool, MetaError> {
        self.inner.raft.is_initialized().await.map_err(|e| MetaError::Raft(e.to_string()))
    }

    /// Starts a new group with this node as its only voter. Call once in a cluster's life.
    pub async fn initialize_single(&self) -> Result<(), MetaError> {
        let members = BTreeMap::from([(
            self.inner.node_id.0,
            BasicNode {
                addr: self.inner.addr.clone(),
            },
        )]);
        self.inner.raft.initialize(members).await.map_err(|e| MetaError::Raft(e.to_string()))
    }

    /// Adds node `id` at `addr` as a learner, waiting until it has caught up, then, if
    /// `voter`, makes it a voter. Only the leader can; others answer [`MetaError::NotLeader`].
    pub async fn add_member(&self, id: u64, addr: String, voter: bool) -> Result<(), MetaError> {
        let raft = &self.inner.raft;
        let known = self.status();
        if !known.voters.contains(&id) && !known.learners.contains(&id) {
            raft.add_learner(id, BasicNode { addr }, true)
                .await
                .map_err(write_error)?;
        }
        if voter && !self.status().voters.contains(&id) {
            raft.change_membership(openraft::ChangeMembers::AddVoterIds([id].into()), true)
                .await
                .map_err(write_error)?;
        }
        Ok(())
    }

    /// Takes node `id` out of the Raft group entirely (vote and replication). Only the
    /// leader can; others answer [`MetaError::NotLeader`].
    pub async fn remove_member(&self, id: u64) -> Result<(), MetaError> {
        let raft = &self.inner.raft;
        if self.status().voters.contains(&id) {
            raft.change_membership(openraft::ChangeMembers::RemoveVoters([id].into()), false)
                .await
                .map_err(write_error)?;
        }
        if self.status().learners.contains(&id) {
            raft.change_membership(openraft::ChangeMembers::RemoveNodes([id].into()), false)
                .await
                .map_err(write_error)?;
        }
        Ok(())
    }

    /// Answers a Raft RPC that a peer sent through its [`RaftTransport`].
    pub async fn handle_rpc(&self, payload: &[u8]) -> Vec<u8> {
        let raft = &self.inner.raft;
        let rpc: network::RaftRpc = match serde_json::from_slice(payload) {
            Ok(rpc) => rpc,
            // The sender cannot decode an empty answer and treats the peer as unreachable.
            Err(error) => {
                tracing::warn!(%error, "undecodable raft rpc");
                return Vec::new();
            }
        };
        let encoded = match rpc {
            network::RaftRpc::AppendEntries(rpc) => serde_json::to_vec(&raft.append_entries(rpc).await),
            network::RaftRpc::InstallSnapshot(rpc) => serde_json::to_vec(&raft.install_snapshot(rpc).await),
            network::RaftRpc::Vote(rpc) => serde_json::to_vec(&raft.vote(rpc).await),
        };
        encoded.unwrap_or_default()
    }

    /// Waits until a leader is known and everything in this member's log is applied: after a
    /// restart, the commit index it remembered may be behind, and the first message from the
    /// leader brings it up to date.
    pub async fn wait_caught_up(&self, timeout: Duration) -> Result<(), MetaError> {
        self.inner
            .raft
            .wait(Some(timeout))
            .metrics(
                |m| {
                    m.current_leader.is_some()
                        && m.last_applied.map(|id| id.index) >= m.last_log_index
                },
                "caught up with the leader",
            )
            .await
            .map(drop)
            .map_err(|e| MetaError::Timeout(format!("catching up with the leader: {e}")))
    }

    /// Waits until the applied state satisfies `condition`, for at most `timeout`.
    pub async fn wait_for_state(
        &self,
        timeout: Duration,
        what: &str,
        condition: impl Fn(&dyn Directory) -> bool,
    ) -> Result<(), MetaError> {
        let mut metrics = self.inner.raft.metrics();
        let directory = self.directory();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if condition(directory.as_ref()) {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, metrics.changed()).await.is_err() {
                return Err(MetaError::Timeout(what.to_owned()));
            }
        }
    }

    /// Proposes `command` through the leader, wherever it is, and returns the state
    /// machine's answer once the command is committed and applied.
    ///
    /// On a member that does not lead, the command is forwarded to the leader over the
    /// transport. While no leader is known (an election), it waits up to [`WRITE_TIMEOUT`].
    pub async fn write(&self, command: Command) -> Result<CommandResult, MetaError> {
        let deadline = tokio::time::Instant::now() + WRITE_TIMEOUT;
        loop {
            let result = match self.write_here(command.clone()).await {
                Err(MetaError::NotLeader { leader: Some(leader) }) if leader != self.inner.node_id.0 => {
                    self.forward_write(leader, &command).await
                }
                other => other,
            };
            // A write known not to have been applied is retried; so is any write that is
            // harmless to apply twice. Others might hide an applied write behind a lost answer.
            let retry = match &result {
                Err(MetaError::NotLeader { .. }) => true,
                Err(MetaError::Raft(_) | MetaError::Timeout(_)) => command.is_idempotent(),
                _ => false,
            };
            match result {
                Err(error) if retry && tokio::time::Instant::now() < deadline => {
                    tracing::debug!(%error, "metadata write not placed yet; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                done => return done,
            }
        }
    }

    /// Proposes `command` to this node's Raft, which must lead.
    async fn write_here(&self, command: Command) -> Result<CommandResult, MetaError> {
        match self.inner.raft.client_write(command).await {
            Ok(response) => Ok(response.data),
            Err(error) => Err(write_error(error)),
        }
    }

    async fn forward_write(&self, leader: u64, command: &Command) -> Result<CommandResult, MetaError> {
        let Some(transport) = &self.inner.transport else {
            return Err(MetaError::NotLeader { leader: Some(leader) });
        };
        let payload = serde_json::to_vec(command).map_err(|e| MetaError::Raft(e.to_string()))?;
        let answer = match transport.forward(leader, payload).await {
            Ok(answer) => answer,
            // Not sent at all: safe to try again once the connection or a new leader is there.
            Err(network::TransportError::NotConnected(_)) => return Err(MetaError::NotLeader { leader: None }),
            Err(error) => return Err(MetaError::Raft(format!("forwarding to leader {leader}: {error}"))),
        };
        let answer: Result<CommandResult, ForwardRefusal> =
            serde_json::from_slice(&answer).map_err(|e| MetaError::Raft(format!("undecodable answer from the leader: {e}")))?;
        answer.map_err(|refusal| match refusal {
            // It stopped leading before it took the write: worth a retry.
            ForwardRefusal::NotLeader => MetaError::NotLeader { leader: None },
            ForwardRefusal::Failed(reason) => MetaError::Raft(format!("leader {leader}: {reason}")),
        })
    }

    /// Answers a write forwarded by another member (see [`RaftTransport::forward`]).
    pub async fn handle_forwarded_write(&self, payload: &[u8]) -> Vec<u8> {
        let answer: Result<CommandResult, ForwardRefusal> = match serde_json::from_slice::<Command>(payload) {
            Ok(command) => self.write_here(command).await.map_err(|error| match error {
                MetaError::NotLeader { .. } => ForwardRefusal::NotLeader,
                other => ForwardRefusal::Failed(other.to_string()),
            }),
            Err(error) => Err(ForwardRefusal::Failed(format!("undecodable forwarded write: {error}"))),
        };
        serde_json::to_vec(&answer).unwrap_or_default()
    }

    /// The applied state, read locally.
    pub fn directory(&self) -> Arc<dyn Directory> {
        Arc::new(MetaDirectory {
            state: self.inner.state.clone(),
            metrics: self.inner.raft.metrics(),
        })
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
            learners: metrics.membership_config.membership().learner_ids().collect(),
            addresses: metrics
                .membership_config
                .membership()
                .nodes()
                .map(|(id, node)| (*id, node.addr.clone()))
                .collect(),
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

impl MetaError {
    /// The error as an API caller sees it: a metadata store without a reachable leader is
    /// unavailable for a moment (503, retry); anything else is internal.
    pub fn into_api(self, what: &str) -> wharf_proto::ApiError {
        match self {
            MetaError::NotLeader { .. } | MetaError::Timeout(_) | MetaError::Raft(_) => {
                wharf_proto::ApiError::Unavailable {
                    what: "the metadata store".into(),
                    reason: format!("{what}: {self}"),
                    retry_after_secs: 2,
                }
            }
            MetaError::Storage(_) => wharf_proto::ApiError::internal(what, self),
        }
    }
}

/// A failed write or membership change: [`MetaError::NotLeader`] when another node leads.
fn write_error(
    error: openraft::error::RaftError<u64, openraft::error::ClientWriteError<u64, BasicNode>>,
) -> MetaError {
    match error.forward_to_leader::<BasicNode>() {
        Some(forward) => MetaError::NotLeader {
            leader: forward.leader_id,
        },
        None => MetaError::Raft(error.to_string()),
    }
}

/// The applied state, plus Raft's view of who leads: what routing and status pages read.
struct MetaDirectory {
    state: Arc<command::SharedState>,
    metrics: tokio::sync::watch::Receiver<openraft::RaftMetrics<u64, BasicNode>>,
}

impl Directory for MetaDirectory {
    fn repo(&self, name: &wharf_proto::RepoName) -> Option<wharf_proto::RepoRecord> {
        self.state.repo(name)
    }

    fn repos(&self) -> Vec<wharf_proto::RepoRecord> {
        self.state.repos()
    }

    fn nodes(&self) -> Vec<wharf_proto::NodeRecord> {
        self.state.nodes()
    }

    fn authenticate(&self, token: &str) -> Option<wharf_proto::Principal> {
        self.state.authenticate(token)
    }

    fn push_events(&self, repo: wharf_proto::RepoId, after: u64, limit: usize) -> Vec<wharf_proto::PushEvent> {
        self.state.push_events(repo, after, limit)
    }

    fn pipelines(&self, repo: wharf_proto::RepoId, limit: usize) -> Vec<wharf_proto::PipelineRecord> {
        self.state.pipelines(repo, limit)
    }

    fn pipeline(&self, id: u64) -> Option<wharf_proto::PipelineRecord> {
        self.state.pipeline(id)
    }

    fn job(&self, id: u64) -> Option<wharf_proto::JobRecord> {
        self.state.job(id)
    }

    fn queued_jobs(&self, limit: usize) -> Vec<wharf_proto::JobRecord> {
        self.state.queued_jobs(limit)
    }

    fn running_jobs(&self) -> Vec<wharf_proto::JobRecord> {
        self.state.running_jobs()
    }

    fn variables(&self, repo: wharf_proto::RepoId) -> Vec<wharf_proto::Variable> {
        self.state.variables(repo)
    }

    fn repo_by_id(&self, id: wharf_proto::RepoId) -> Option<wharf_proto::RepoRecord> {
        self.state.repo_by_id(id)
    }

    fn environments(&self, repo: Option<wharf_proto::RepoId>) -> Vec<wharf_proto::deploy::EnvironmentRecord> {
        self.state.environments(repo)
    }

    fn environment(&self, id: u64) -> Option<wharf_proto::deploy::EnvironmentRecord> {
        self.state.environment(id)
    }

    fn deployments(&self, env: Option<u64>) -> Vec<wharf_proto::deploy::DeploymentRecord> {
        self.state.deployments(env)
    }

    fn deployment(&self, id: u64) -> Option<wharf_proto::deploy::DeploymentRecord> {
        self.state.deployment(id)
    }

    fn instances(&self, env: Option<u64>) -> Vec<wharf_proto::deploy::InstanceRecord> {
        self.state.instances(env)
    }

    fn raft_roles(&self) -> Vec<(NodeId, wharf_proto::RaftRole)> {
        use wharf_proto::RaftRole;
        let metrics = self.metrics.borrow();
        let membership = metrics.membership_config.membership();
        let voters = membership.voter_ids().map(|id| {
            let role = if Some(id) == metrics.current_leader { RaftRole::Leader } else { RaftRole::Follower };
            (NodeId(id), role)
        });
        let learners = membership.learner_ids().map(|id| (NodeId(id), RaftRole::Learner));
        voters.chain(learners).collect()
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
