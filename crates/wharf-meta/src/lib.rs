//! Wharf's metadata: one openraft group whose log and state machine live in sled.
//!
//! The metadata is everything that is not a repository's content: members, repository
//! records and their owners, push events, tokens ([`records`]), pipelines and jobs with their
//! leases (`wharf-ci`), environments, deployments and instances (`wharf-deploy`). It changes
//! only through [`Meta::write`], which proposes a [`Command`] to Raft and returns the state
//! machine's answer once the command is committed and applied. The state machine keeps every
//! record in typed sled key spaces ([`keys`]), written in one atomic batch with the applied
//! log id; nothing is held in memory beyond sled's bounded cache. Reads go to
//! [`Meta::directory`], a view of the applied records on the local disk, so routing a request
//! never waits on Raft.
//!
//! [`export_raft_metrics`] turns Raft's metrics watch into Prometheus gauges.
//!
//! Everything this crate writes (log entries, records, Raft messages between nodes, forwarded
//! writes) is encoded with the one versioned codec of `wharf-proto`; the data directory
//! carries its format version ([`keys::DATA_FORMAT`]), and a directory of the previous format
//! is migrated on open (the `legacy` module).
//!
//! This crate owns the sled database of a node (one per process: sled holds a file lock) and
//! holds no domain rules of its own beyond the cluster's records: CI and deployment commands
//! are applied by their crates. It knows nothing of git, actors or HTTP. [`Meta::shutdown`]
//! stops Raft and flushes sled.

pub mod keys;
mod legacy;
mod log_store;
mod network;
pub mod records;
mod state_machine;
mod store;
mod telemetry;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::{BasicNode, Config, Raft};
use serde::Serialize;
use wharf_proto::{codec, Directory, NodeId};

pub use network::{RaftTransport, TransportError, TransportFuture};
pub use records::{hash_token, Command, CommandOutcome, CommandResult, RefUpdate};
pub use wharf_ci::{CiCommand, JobResult, MAX_LOST_RUNNERS};
pub use wharf_deploy::{DeployCommand, DeployOutcome};
pub use telemetry::export_raft_metrics;

openraft::declare_raft_types!(
    /// Wharf's Raft types: commands in, command results out, nodes known by address,
    /// snapshots as files.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        SnapshotData = tokio::fs::File,
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
    /// sled's page cache, in bytes. Default 32 MiB. The records are read through it; a
    /// larger cache keeps more of a big metadata set in memory, a smaller one reads the disk
    /// more often. Memory does not otherwise grow with the records held.
    pub cache_bytes: u64,
    /// Log entries applied between two snapshots. Default 20,000. A snapshot copies every
    /// record to a file while applying waits, so fewer snapshots cost less; the log kept on
    /// disk until the next one is the price.
    pub snapshot_every: u64,
    /// Log entries kept behind a snapshot, so a follower a little behind catches up from the
    /// log rather than a whole snapshot. Default 1,000 (openraft's).
    pub logs_kept_after_snapshot: u64,
}

impl Default for MetaConfig {
    fn default() -> Self {
        MetaConfig {
            heartbeat_ms: 250,
            election_min_ms: 1500,
            election_max_ms: 3000,
            cache_bytes: 32 << 20,
            snapshot_every: 20_000,
            logs_kept_after_snapshot: 1000,
        }
    }
}

/// Why the metadata store failed (as opposed to refusing a command, which is an
/// [`ApiError`] inside a successful write).
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// sled failed.
    #[error("metadata storage, {what}: {source}")]
    Storage {
        /// What was being done.
        what: &'static str,
        /// What sled said.
        source: sled::Error,
    },
    /// A file beside the database (snapshots) could not be read or written.
    #[error("metadata files, {what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// What the system said.
        source: std::io::Error,
    },
    /// A stored value or a peer's message does not decode.
    #[error("metadata encoding, {what}: {source}")]
    Codec {
        /// What was being decoded.
        what: &'static str,
        /// What the codec said.
        source: wharf_proto::codec::CodecError,
    },
    /// The data directory was written by a newer Wharf.
    #[error(
        "the metadata in this data directory has format {found}, newer than this Wharf knows ({known}): \
         run the Wharf version that wrote it, or a newer one"
    )]
    NewerFormat {
        /// The directory's format.
        found: u32,
        /// The newest this build knows.
        known: u32,
    },
    /// A data directory of the previous format could not be migrated.
    #[error("migrating the metadata from format 0: {0}")]
    Migration(String),
    /// A snapshot install was cut short (a crash while a follower took the leader's state):
    /// the records are incomplete.
    #[error(
        "a snapshot install into this data directory was interrupted, so its metadata is incomplete: \
         remove its meta/ directory and join the node to the cluster again"
    )]
    Interrupted,
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

/// Why a write produced no outcome: the state machine refused the command (every replica
/// decides so, and nothing changed), or the store could not carry it out.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The command breaks a rule (a name that is taken, a job no longer held); it was applied
    /// as a no-op.
    #[error(transparent)]
    Refused(#[from] wharf_proto::ApiError),
    /// The store failed, or no leader took the write in time: it may or may not have been
    /// applied unless the command is idempotent.
    #[error(transparent)]
    Meta(#[from] MetaError),
}

impl WriteError {
    /// The error as an API caller sees it: a refusal as it is, a store failure as
    /// [`MetaError::into_api`] says.
    pub fn into_api(self, what: &str) -> wharf_proto::ApiError {
        match self {
            WriteError::Refused(error) => error,
            WriteError::Meta(error) => error.into_api(what),
        }
    }
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
    records: store::TreeRecords,
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
        let cache_bytes = config.cache_bytes;
        let db = tokio::task::spawn_blocking(move || sled::Config::new().path(path).cache_capacity(cache_bytes).open())
            .await
            .map_err(|e| MetaError::Io {
                what: "opening the database",
                source: std::io::Error::other(e),
            })?
            .map_err(MetaError::storage("opening the database"))?;
        let log_store = log_store::LogStore::open(&db).map_err(MetaError::storage("opening the log"))?;
        let state_machine = state_machine::StateMachineStore::open(&db, &dir.join("snapshots"))?;
        let records = state_machine.records.clone();
        {
            let db = db.clone();
            let state_machine = state_machine.clone();
            tokio::task::spawn_blocking(move || legacy::upgrade(&db, &state_machine))
                .await
                .map_err(|e| MetaError::Migration(e.to_string()))??;
        }
        let raft_config = Config {
            cluster_name: "wharf".into(),
            heartbeat_interval: config.heartbeat_ms,
            election_timeout_min: config.election_min_ms,
            election_timeout_max: config.election_max_ms,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_every),
            max_in_snapshot_log_to_keep: config.logs_kept_after_snapshot,
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
                records,
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
        let rpc: network::RaftRpc = match codec::decode(payload) {
            Ok(rpc) => rpc,
            // The sender cannot decode an empty answer and treats the peer as unreachable.
            Err(error) => {
                tracing::warn!(%error, "undecodable raft rpc (a peer of another Wharf version?)");
                return Vec::new();
            }
        };
        let encoded = match rpc {
            network::RaftRpc::AppendEntries(rpc) => codec::encode(&raft.append_entries(rpc).await),
            network::RaftRpc::InstallSnapshot(rpc) => codec::encode(&raft.install_snapshot(rpc).await),
            network::RaftRpc::Vote(rpc) => codec::encode(&raft.vote(rpc).await),
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

    /// Waits until the applied log index differs from `seen` (the value this returned last
    /// time, or `None` at first) and returns it. Waiting loops use it instead of polling: they
    /// wake the moment a new entry is applied.
    pub async fn applied_changed(&self, seen: Option<u64>) -> Option<u64> {
        let mut metrics = self.inner.raft.metrics();
        loop {
            let now = metrics.borrow_and_update().last_applied.map(|id| id.index);
            if now != seen {
                return now;
            }
            if metrics.changed().await.is_err() {
                // Raft stopped: nothing will be applied any more.
                std::future::pending::<()>().await;
            }
        }
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
    pub async fn write(&self, command: Command) -> Result<CommandOutcome, WriteError> {
        Ok(self.write_result(command).await??)
    }

    /// [`Meta::write`], with the state machine's answer apart from the store's failure.
    async fn write_result(&self, command: Command) -> Result<CommandResult, MetaError> {
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
        let payload = codec::encode(command).map_err(|source| MetaError::Codec {
            what: "a write to forward",
            source,
        })?;
        let answer = match transport.forward(leader, payload).await {
            Ok(answer) => answer,
            // Not sent at all: safe to try again once the connection or a new leader is there.
            Err(network::TransportError::NotConnected(_)) => return Err(MetaError::NotLeader { leader: None }),
            Err(error) => return Err(MetaError::Raft(format!("forwarding to leader {leader}: {error}"))),
        };
        let answer: Result<CommandResult, ForwardRefusal> = codec::decode(&answer).map_err(|source| MetaError::Codec {
            what: "the leader's answer to a forwarded write",
            source,
        })?;
        answer.map_err(|refusal| match refusal {
            // It stopped leading before it took the write: worth a retry.
            ForwardRefusal::NotLeader => MetaError::NotLeader { leader: None },
            ForwardRefusal::Failed(reason) => MetaError::Raft(format!("leader {leader}: {reason}")),
        })
    }

    /// Answers a write forwarded by another member (see [`RaftTransport::forward`]).
    pub async fn handle_forwarded_write(&self, payload: &[u8]) -> Vec<u8> {
        let answer: Result<CommandResult, ForwardRefusal> = match codec::decode::<Command>(payload) {
            Ok(command) => self.write_here(command).await.map_err(|error| match error {
                MetaError::NotLeader { .. } => ForwardRefusal::NotLeader,
                other => ForwardRefusal::Failed(other.to_string()),
            }),
            Err(error) => Err(ForwardRefusal::Failed(format!("undecodable forwarded write: {error}"))),
        };
        codec::encode(&answer).unwrap_or_default()
    }

    /// The applied state, read locally.
    pub fn directory(&self) -> Arc<dyn Directory> {
        Arc::new(MetaDirectory {
            records: self.inner.records.clone(),
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
            .map_err(|e| MetaError::Io {
                what: "flushing the database",
                source: std::io::Error::other(e),
            })?
            .map_err(MetaError::storage("flushing the database"))?;
        Ok(())
    }
}

impl MetaError {
    /// A maker of [`MetaError::Storage`] for `map_err`.
    pub(crate) fn storage(what: &'static str) -> impl FnOnce(sled::Error) -> MetaError {
        move |source| MetaError::Storage { what, source }
    }

    /// A maker of [`MetaError::Io`] for `map_err`.
    pub(crate) fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> MetaError {
        move |source| MetaError::Io { what, source }
    }

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
            MetaError::Storage { .. }
            | MetaError::Io { .. }
            | MetaError::Codec { .. }
            | MetaError::NewerFormat { .. }
            | MetaError::Migration(_)
            | MetaError::Interrupted => wharf_proto::ApiError::internal(what, self),
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

/// The applied records on this node's disk, plus Raft's view of who leads: what routing and
/// status pages read.
struct MetaDirectory {
    records: store::TreeRecords,
    metrics: tokio::sync::watch::Receiver<openraft::RaftMetrics<u64, BasicNode>>,
}

impl Directory for MetaDirectory {
    fn repo(&self, name: &wharf_proto::RepoName) -> Option<wharf_proto::RepoRecord> {
        records::repo(&self.records, name)
    }

    fn repos(&self) -> Vec<wharf_proto::RepoRecord> {
        records::repos(&self.records)
    }

    fn nodes(&self) -> Vec<wharf_proto::NodeRecord> {
        records::nodes(&self.records)
    }

    fn authenticate(&self, token: &str) -> Option<wharf_proto::Principal> {
        records::authenticate(&self.records, token)
    }

    fn push_events(&self, repo: wharf_proto::RepoId, after: u64, limit: usize) -> Vec<wharf_proto::PushEvent> {
        records::push_events(&self.records, repo, after, limit)
    }

    fn pipelines(&self, repo: wharf_proto::RepoId, limit: usize) -> Vec<wharf_proto::PipelineRecord> {
        wharf_ci::state::pipelines_of(&self.records, repo, limit)
    }

    fn pipeline(&self, id: u64) -> Option<wharf_proto::PipelineRecord> {
        wharf_ci::state::pipeline(&self.records, id)
    }

    fn job(&self, id: u64) -> Option<wharf_proto::JobRecord> {
        wharf_ci::state::job(&self.records, id)
    }

    fn queued_jobs(&self, limit: usize) -> Vec<wharf_proto::JobRecord> {
        wharf_ci::state::jobs_with(&self.records, wharf_proto::JobStatus::Queued, limit)
    }

    fn running_jobs(&self) -> Vec<wharf_proto::JobRecord> {
        wharf_ci::state::jobs_with(&self.records, wharf_proto::JobStatus::Running, usize::MAX)
    }

    fn variables(&self, repo: wharf_proto::RepoId) -> Vec<wharf_proto::Variable> {
        wharf_ci::state::variables(&self.records, repo)
    }

    fn repo_by_id(&self, id: wharf_proto::RepoId) -> Option<wharf_proto::RepoRecord> {
        records::repo_by_id(&self.records, id)
    }

    fn environments(&self, repo: Option<wharf_proto::RepoId>) -> Vec<wharf_proto::deploy::EnvironmentRecord> {
        wharf_deploy::environments(&self.records, repo)
    }

    fn environment(&self, id: u64) -> Option<wharf_proto::deploy::EnvironmentRecord> {
        wharf_deploy::environment(&self.records, id)
    }

    fn deployments(&self, env: Option<u64>) -> Vec<wharf_proto::deploy::DeploymentRecord> {
        wharf_deploy::deployments(&self.records, env)
    }

    fn deployment(&self, id: u64) -> Option<wharf_proto::deploy::DeploymentRecord> {
        wharf_deploy::deployment(&self.records, id)
    }

    fn instances(&self, env: Option<u64>) -> Vec<wharf_proto::deploy::InstanceRecord> {
        wharf_deploy::instances(&self.records, env)
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
