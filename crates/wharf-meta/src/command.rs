//! The metadata state and the commands that change it.
//!
//! [`State::apply`] is the whole of the state machine's logic: pure, deterministic, and
//! tested without Raft. A command that breaks a rule (a name that is taken, say) is not an
//! error of the log: it is applied as a no-op whose outcome is the [`ApiError`], so every
//! replica decides the same way.

use std::collections::BTreeMap;

use openraft::{BasicNode, LogId, StoredMembership};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wharf_proto::{
    ApiError, Directory, JobRecord, JobStatus, NodeId, NodeRecord, NodeState, PipelineRecord, Principal, PushEvent,
    RepoId, RepoName, RepoRecord, Variable,
};

use crate::ci::{CiCommand, CiState};
use crate::deploy::{DeployCommand, DeployOutcome, DeployState};
use wharf_proto::deploy::{DeploymentRecord, EnvironmentRecord, InstanceRecord};

/// A change to the metadata, proposed through Raft.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Add or update a member.
    AddNode {
        /// The member.
        record: NodeRecord,
    },
    /// Create the record of a repository owned by `node`.
    CreateRepo {
        /// Its name; refused if taken.
        name: RepoName,
        /// Its owner.
        node: NodeId,
        /// Creation time, decided by the proposer so that replicas agree.
        now_ms: u64,
    },
    /// Remove the record of a repository, and its push events.
    DeleteRepo {
        /// Its name.
        name: RepoName,
    },
    /// Record the ref updates of one push.
    RecordPush {
        /// Names this push uniquely, so that proposing it twice (a retry after a lost answer)
        /// records it once.
        push_id: String,
        /// The repository.
        repo: RepoId,
        /// What changed.
        updates: Vec<RefUpdate>,
        /// Who pushed.
        pusher: String,
        /// When.
        now_ms: u64,
    },
    /// Hand a repository from one node to another. Refused unless `from` owns it, so two
    /// movers can never both switch it.
    MoveRepo {
        /// The repository.
        name: RepoName,
        /// Its owner now.
        from: NodeId,
        /// Its next owner.
        to: NodeId,
    },
    /// Change pipelines, jobs or CI variables.
    Ci(CiCommand),
    /// Change environments, deployments or instances.
    Deploy(DeployCommand),
    /// Forget a storage node that holds nothing (it left the cluster).
    RemoveNode {
        /// The node.
        node: NodeId,
    },
    /// Change a member's state (drain, undrain, mark drained).
    SetNodeState {
        /// The member.
        node: NodeId,
        /// Its new state.
        state: NodeState,
    },
    /// Store a token (its hash only) for a principal.
    AddToken {
        /// [`hash_token`] of the token.
        token_hash: String,
        /// Whom it authenticates.
        principal: Principal,
    },
}

impl Command {
    /// Whether applying the command twice has the same effect as once, so that a proposal
    /// whose answer was lost can be sent again.
    pub fn is_idempotent(&self) -> bool {
        matches!(
            self,
            Command::AddNode { .. } | Command::RecordPush { .. } | Command::SetNodeState { .. } | Command::AddToken { .. }
        ) || matches!(self, Command::Ci(command) if command.is_idempotent())
            || matches!(self, Command::Deploy(command) if command.is_idempotent())
    }
}

/// One ref changed by a push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefUpdate {
    /// Full ref name.
    pub ref_name: String,
    /// Value before (`None`: created).
    pub old: Option<String>,
    /// Value after (`None`: deleted).
    pub new: Option<String>,
}

/// What an applied command produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CommandOutcome {
    /// The repository record created.
    Repo(RepoRecord),
    /// The push events recorded.
    Pushed(Vec<PushEvent>),
    /// Nothing to report.
    Done,
    /// The pipeline created or changed.
    Pipeline(PipelineRecord),
    /// The id of what was created.
    Created(u64),
}

/// The answer of the state machine to one command.
pub type CommandResult = Result<CommandOutcome, ApiError>;

/// The hash under which a token is stored: hex SHA-256. Tokens are random and long, so no
/// salt or slow hash is needed; only the hash ever reaches the log and snapshots.
pub fn hash_token(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Everything the metadata store knows, as applied up to `last_applied`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    /// The last log entry applied.
    pub last_applied: Option<LogId<u64>>,
    /// The last membership applied.
    pub last_membership: StoredMembership<u64, BasicNode>,
    nodes: BTreeMap<u64, NodeRecord>,
    repos: BTreeMap<String, RepoRecord>,
    /// The id the next repository gets; ids are never reused.
    next_repo_id: u64,
    /// Push events by repository id, oldest first.
    events: BTreeMap<u64, Vec<PushEvent>>,
    /// Principals by token hash.
    tokens: BTreeMap<String, Principal>,
    /// The last [`RECENT_PUSHES`] pushes by id, to recognise a push proposed twice.
    #[serde(default)]
    recent_pushes: BTreeMap<String, Vec<PushEvent>>,
    #[serde(default)]
    recent_order: std::collections::VecDeque<String>,
    /// Pipelines, jobs and CI variables.
    #[serde(default)]
    pub ci: CiState,
    /// Environments, deployments and instances.
    #[serde(default)]
    pub deploy: DeployState,
}

/// How many push ids the state remembers. A retry comes seconds after the first proposal, so
/// a few thousand is far more than enough.
const RECENT_PUSHES: usize = 4096;

impl State {
    fn remember_push(&mut self, push_id: String, events: Vec<PushEvent>) {
        self.recent_order.push_back(push_id.clone());
        self.recent_pushes.insert(push_id, events);
        while self.recent_order.len() > RECENT_PUSHES {
            if let Some(old) = self.recent_order.pop_front() {
                self.recent_pushes.remove(&old);
            }
        }
    }

    /// Applies one command.
    pub fn apply(&mut self, command: Command) -> CommandResult {
        match command {
            Command::AddNode { record } => {
                self.nodes.insert(record.id.0, record);
                Ok(CommandOutcome::Done)
            }
            Command::CreateRepo { name, node, now_ms } => {
                let key = name.to_string();
                if self.repos.contains_key(&key) {
                    return Err(ApiError::RepoExists { repo: key });
                }
                let id = RepoId(self.next_repo_id.max(1));
                self.next_repo_id = id.0 + 1;
                let record = RepoRecord {
                    id,
                    name,
                    node,
                    created_ms: now_ms,
                };
                self.repos.insert(key, record.clone());
                Ok(CommandOutcome::Repo(record))
            }
            Command::DeleteRepo { name } => {
                let key = name.to_string();
                let record = self.repos.remove(&key).ok_or(ApiError::RepoNotFound { repo: key })?;
                self.events.remove(&record.id.0);
                self.ci.forget_repo(record.id);
                Ok(CommandOutcome::Done)
            }
            Command::RecordPush {
                push_id,
                repo,
                updates,
                pusher,
                now_ms,
            } => {
                if !self.repos.values().any(|r| r.id == repo) {
                    return Err(ApiError::RepoNotFound {
                        repo: format!("#{repo}"),
                    });
                }
                if let Some(recorded) = self.recent_pushes.get(&push_id) {
                    return Ok(CommandOutcome::Pushed(recorded.clone()));
                }
                let events = self.events.entry(repo.0).or_default();
                let mut recorded = Vec::with_capacity(updates.len());
                for update in updates {
                    let event = PushEvent {
                        seq: events.len() as u64 + 1,
                        repo,
                        ref_name: update.ref_name,
                        old: update.old,
                        new: update.new,
                        pusher: pusher.clone(),
                        time_ms: now_ms,
                    };
                    events.push(event.clone());
                    recorded.push(event);
                }
                self.remember_push(push_id, recorded.clone());
                Ok(CommandOutcome::Pushed(recorded))
            }
            Command::MoveRepo { name, from, to } => {
                let key = name.to_string();
                let record = self.repos.get_mut(&key).ok_or(ApiError::RepoNotFound { repo: key.clone() })?;
                if record.node != from {
                    return Err(ApiError::invalid(format!(
                        "{key} is owned by node {}, not node {from}",
                        record.node
                    )));
                }
                record.node = to;
                Ok(CommandOutcome::Repo(record.clone()))
            }
            Command::Ci(command) => match self.ci.apply(command)? {
                Some(pipeline) => Ok(CommandOutcome::Pipeline(pipeline)),
                None => Ok(CommandOutcome::Done),
            },
            Command::Deploy(command) => match self.deploy.apply(command)? {
                DeployOutcome::Created(id) => Ok(CommandOutcome::Created(id)),
                DeployOutcome::Done => Ok(CommandOutcome::Done),
            },
            Command::RemoveNode { node } => {
                if self.repos.values().any(|r| r.node == node) {
                    return Err(ApiError::invalid(format!("node {node} still owns repositories: drain it first")));
                }
                self.nodes.remove(&node.0);
                Ok(CommandOutcome::Done)
            }
            Command::SetNodeState { node, state } => {
                let record = self
                    .nodes
                    .get_mut(&node.0)
                    .ok_or_else(|| ApiError::invalid(format!("node {node} is not a member")))?;
                record.state = state;
                Ok(CommandOutcome::Done)
            }
            Command::AddToken { token_hash, principal } => {
                self.tokens.insert(token_hash, principal);
                Ok(CommandOutcome::Done)
            }
        }
    }
}

/// The applied state shared between the state machine (which writes it) and the directory
/// (which reads it).
#[derive(Debug, Default)]
pub struct SharedState(std::sync::RwLock<State>);

impl SharedState {
    /// Wraps a loaded state.
    pub fn new(state: State) -> Self {
        SharedState(std::sync::RwLock::new(state))
    }

    /// Reads the state. A writer that panicked left it consistent (apply does not panic
    /// midway), so a poisoned lock is still read.
    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.0.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Changes the state.
    pub fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.0.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Directory for SharedState {
    fn pipelines(&self, repo: RepoId, limit: usize) -> Vec<PipelineRecord> {
        self.read().ci.pipelines_of(repo, limit)
    }

    fn pipeline(&self, id: u64) -> Option<PipelineRecord> {
        self.read().ci.pipeline_record(id)
    }

    fn job(&self, id: u64) -> Option<JobRecord> {
        self.read().ci.job(id)
    }

    fn queued_jobs(&self, limit: usize) -> Vec<JobRecord> {
        self.read().ci.jobs_with(JobStatus::Queued, limit)
    }

    fn running_jobs(&self) -> Vec<JobRecord> {
        self.read().ci.jobs_with(JobStatus::Running, usize::MAX)
    }

    fn variables(&self, repo: RepoId) -> Vec<Variable> {
        self.read().ci.variables(repo)
    }

    fn repo_by_id(&self, id: RepoId) -> Option<RepoRecord> {
        self.read().repos.values().find(|r| r.id == id).cloned()
    }

    fn environments(&self, repo: Option<RepoId>) -> Vec<EnvironmentRecord> {
        self.read().deploy.environments(repo)
    }

    fn environment(&self, id: u64) -> Option<EnvironmentRecord> {
        self.read().deploy.environment(id)
    }

    fn deployments(&self, env: Option<u64>) -> Vec<DeploymentRecord> {
        self.read().deploy.deployments(env)
    }

    fn deployment(&self, id: u64) -> Option<DeploymentRecord> {
        self.read().deploy.deployment(id)
    }

    fn instances(&self, env: Option<u64>) -> Vec<InstanceRecord> {
        self.read().deploy.instances(env)
    }

    fn repo(&self, name: &RepoName) -> Option<RepoRecord> {
        self.read().repos.get(&name.to_string()).cloned()
    }

    fn repos(&self) -> Vec<RepoRecord> {
        self.read().repos.values().cloned().collect()
    }

    fn nodes(&self) -> Vec<NodeRecord> {
        self.read().nodes.values().cloned().collect()
    }

    fn authenticate(&self, token: &str) -> Option<Principal> {
        self.read().tokens.get(&hash_token(token)).cloned()
    }

    fn push_events(&self, repo: RepoId, after: u64, limit: usize) -> Vec<PushEvent> {
        let state = self.read();
        let Some(events) = state.events.get(&repo.0) else {
            return Vec::new();
        };
        // Events are numbered from 1 in order, so `after` is also an index.
        events.iter().skip(after as usize).take(limit).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> RepoName {
        RepoName::parse(s).unwrap()
    }

    fn create(state: &mut State, repo: &str) -> CommandResult {
        state.apply(Command::CreateRepo {
            name: name(repo),
            node: NodeId(1),
            now_ms: 7,
        })
    }

    #[test]
    fn repositories_get_fresh_ids_and_unique_names() {
        let mut state = State::default();
        let Ok(CommandOutcome::Repo(first)) = create(&mut state, "a/one") else { panic!() };
        assert_eq!(first.id, RepoId(1));
        assert_eq!(create(&mut state, "a/one"), Err(ApiError::RepoExists { repo: "a/one".into() }));
        state.apply(Command::DeleteRepo { name: name("a/one") }).unwrap();
        let Ok(CommandOutcome::Repo(again)) = create(&mut state, "a/one") else { panic!() };
        assert_eq!(again.id, RepoId(2), "ids are never reused");
        assert!(matches!(
            state.apply(Command::DeleteRepo { name: name("a/none") }),
            Err(ApiError::RepoNotFound { .. })
        ));
    }

    #[test]
    fn pushes_are_numbered_per_repository() {
        let lock = SharedState::default();
        let mut state = lock.write();
        create(&mut state, "a/one").unwrap();
        let update = |r: &str| RefUpdate {
            ref_name: r.into(),
            old: None,
            new: Some("abc".into()),
        };
        let push = |state: &mut State, updates| {
            state.apply(Command::RecordPush {
                push_id: format!("push-{}", state.recent_order.len()),
                repo: RepoId(1),
                updates,
                pusher: "ada".into(),
                now_ms: 1,
            })
        };
        push(&mut state, vec![update("refs/heads/main"), update("refs/tags/v1")]).unwrap();
        let Ok(CommandOutcome::Pushed(events)) = push(&mut state, vec![update("refs/heads/dev")]) else { panic!() };
        assert_eq!(events[0].seq, 3);
        assert!(push_to_missing(&mut state).is_err());
        drop(state);
        let after_first = lock.push_events(RepoId(1), 1, 10);
        assert_eq!(after_first.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3]);
    }

    fn push_to_missing(state: &mut State) -> CommandResult {
        state.apply(Command::RecordPush {
            push_id: "missing".into(),
            repo: RepoId(99),
            updates: vec![],
            pusher: "x".into(),
            now_ms: 0,
        })
    }

    #[test]
    fn tokens_authenticate_by_hash() {
        let lock = SharedState::default();
        lock.write()
            .apply(Command::AddToken {
                token_hash: hash_token("secret"),
                principal: Principal {
                    user: "admin".into(),
                    admin: true,
                },
            })
            .unwrap();
        assert_eq!(lock.authenticate("secret").unwrap().user, "admin");
        assert!(lock.authenticate("guess").is_none());
    }
}
