//! The cluster's own records (members, repositories, push events, tokens) and the one
//! [`Command`] enum that is the Raft log's payload.
//!
//! [`apply`] is the whole of the state machine's logic: deterministic, over the typed key
//! spaces of a [`RecordsMut`] store, and tested without Raft on
//! [`wharf_proto::store::MemRecords`]. It hands CI and deployment commands to their domain
//! crates (`wharf-ci`, `wharf-deploy`). A command that breaks a rule (a name that is taken,
//! say) is not an error of the log: it is applied as a no-op whose outcome is the
//! [`ApiError`], so every replica decides the same way.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wharf_ci::CiCommand;
use wharf_deploy::{DeployCommand, DeployOutcome};
use wharf_proto::store::{Order, Records, RecordsMut, Sequence};
use wharf_proto::{ApiError, NodeId, NodeRecord, NodeState, PipelineRecord, Principal, PushEvent, RepoId, RepoName, RepoRecord};

use crate::keys::{EVENTS, NODES, RECENT_PUSHES, RECENT_PUSH_ORDER, REPOS, REPOS_BY_ID, SEQUENCES, TOKENS};

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
    /// Remove the record of a repository, its push events, CI records and environments (whose
    /// instances are stopped).
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

const REPO_IDS: Sequence = Sequence(SEQUENCES, "repo");
const RECENT_PUSH_PLACES: Sequence = Sequence(SEQUENCES, "recent_push");

/// How many push ids the state remembers. A retry comes seconds after the first proposal, so
/// a few thousand is far more than enough.
const RECENT_PUSHES_KEPT: u64 = 4096;

/// Applies one command to the records in `store`.
pub fn apply(store: &mut dyn RecordsMut, command: Command) -> CommandResult {
    match command {
        Command::AddNode { record } => {
            NODES.put(store, &record.id.0, &record);
            Ok(CommandOutcome::Done)
        }
        Command::CreateRepo { name, node, now_ms } => {
            let key = name.to_string();
            if REPOS.contains(store, &key) {
                return Err(ApiError::RepoExists { repo: key });
            }
            // Names are unique regardless of case (`Acme/App` beside `acme/app` would pass for
            // it in a clone URL). Names are ASCII, so ASCII case folding is all there is. A
            // scan of the names, once per creation: linear in the number of repositories, with
            // no index to migrate.
            if let Some(twin) = REPOS.keys(store, &()).into_iter().find(|existing| existing.eq_ignore_ascii_case(&key)) {
                return Err(ApiError::RepoExists { repo: twin });
            }
            let record = RepoRecord {
                id: RepoId(REPO_IDS.next(store)),
                name,
                node,
                created_ms: now_ms,
            };
            REPOS.put(store, &key, &record);
            REPOS_BY_ID.put(store, &record.id.0, &key);
            Ok(CommandOutcome::Repo(record))
        }
        Command::DeleteRepo { name } => {
            let key = name.to_string();
            let record = REPOS.get(store, &key).ok_or(ApiError::RepoNotFound { repo: key.clone() })?;
            REPOS.remove(store, &key);
            REPOS_BY_ID.remove(store, &record.id.0);
            for event in EVENTS.keys(store, &record.id.0) {
                EVENTS.remove(store, &event);
            }
            wharf_ci::state::forget_repo(store, record.id);
            wharf_deploy::forget_repo(store, record.id);
            Ok(CommandOutcome::Done)
        }
        Command::RecordPush {
            push_id,
            repo,
            updates,
            pusher,
            now_ms,
        } => {
            if !REPOS_BY_ID.contains(store, &repo.0) {
                return Err(ApiError::RepoNotFound {
                    repo: format!("#{repo}"),
                });
            }
            if let Some((_, recorded)) = RECENT_PUSHES.get(store, &push_id) {
                return Ok(CommandOutcome::Pushed(recorded));
            }
            let last_seq = EVENTS.scan(store, &repo.0, Order::Descending, 1).first().map_or(0, |((_, seq), _)| *seq);
            let recorded: Vec<PushEvent> = updates
                .into_iter()
                .zip(last_seq + 1..)
                .map(|(update, seq)| PushEvent {
                    seq,
                    repo,
                    ref_name: update.ref_name,
                    old: update.old,
                    new: update.new,
                    pusher: pusher.clone(),
                    time_ms: now_ms,
                })
                .collect();
            for event in &recorded {
                EVENTS.put(store, &(repo.0, event.seq), event);
            }
            remember_push(store, push_id, &recorded);
            Ok(CommandOutcome::Pushed(recorded))
        }
        Command::MoveRepo { name, from, to } => {
            let key = name.to_string();
            let mut record = REPOS.get(store, &key).ok_or(ApiError::RepoNotFound { repo: key.clone() })?;
            if record.node != from {
                return Err(ApiError::invalid(format!(
                    "{key} is owned by node {}, not node {from}",
                    record.node
                )));
            }
            record.node = to;
            REPOS.put(store, &key, &record);
            Ok(CommandOutcome::Repo(record))
        }
        Command::Ci(command) => match wharf_ci::state::apply(store, command)? {
            Some(pipeline) => Ok(CommandOutcome::Pipeline(pipeline)),
            None => Ok(CommandOutcome::Done),
        },
        Command::Deploy(command) => match wharf_deploy::apply(store, command)? {
            DeployOutcome::Created(id) => Ok(CommandOutcome::Created(id)),
            DeployOutcome::Done => Ok(CommandOutcome::Done),
        },
        Command::RemoveNode { node } => {
            if repos(store).iter().any(|r| r.node == node) {
                return Err(ApiError::invalid(format!("node {node} still owns repositories: drain it first")));
            }
            NODES.remove(store, &node.0);
            Ok(CommandOutcome::Done)
        }
        Command::SetNodeState { node, state } => {
            let mut record = NODES
                .get(store, &node.0)
                .ok_or_else(|| ApiError::invalid(format!("node {node} is not a member")))?;
            record.state = state;
            NODES.put(store, &node.0, &record);
            Ok(CommandOutcome::Done)
        }
        Command::AddToken { token_hash, principal } => {
            TOKENS.put(store, &token_hash, &principal);
            Ok(CommandOutcome::Done)
        }
    }
}

/// Remembers a push's events under its id, forgetting the oldest beyond
/// [`RECENT_PUSHES_KEPT`].
fn remember_push(store: &mut dyn RecordsMut, push_id: String, events: &[PushEvent]) {
    let place = RECENT_PUSH_PLACES.next(store);
    RECENT_PUSH_ORDER.put(store, &place, &push_id);
    RECENT_PUSHES.put(store, &push_id, &(place, events.to_vec()));
    if let Some(old_place) = place.checked_sub(RECENT_PUSHES_KEPT) {
        if let Some(old) = RECENT_PUSH_ORDER.get(store, &old_place) {
            RECENT_PUSH_ORDER.remove(store, &old_place);
            RECENT_PUSHES.remove(store, &old);
        }
    }
}

/// The record of a repository, by name.
pub fn repo(store: &dyn Records, name: &RepoName) -> Option<RepoRecord> {
    REPOS.get(store, &name.to_string())
}

/// The record of a repository, by id.
pub fn repo_by_id(store: &dyn Records, id: RepoId) -> Option<RepoRecord> {
    REPOS.get(store, &REPOS_BY_ID.get(store, &id.0)?)
}

/// Every repository, ordered by name.
pub fn repos(store: &dyn Records) -> Vec<RepoRecord> {
    REPOS.scan(store, &(), Order::Ascending, usize::MAX).into_iter().map(|(_, r)| r).collect()
}

/// The members.
pub fn nodes(store: &dyn Records) -> Vec<NodeRecord> {
    NODES.scan(store, &(), Order::Ascending, usize::MAX).into_iter().map(|(_, n)| n).collect()
}

/// Who a token belongs to.
pub fn authenticate(store: &dyn Records, token: &str) -> Option<Principal> {
    TOKENS.get(store, &hash_token(token))
}

/// A repository's push events with `seq` greater than `after`, oldest first, at most `limit`.
pub fn push_events(store: &dyn Records, repo: RepoId, after: u64, limit: usize) -> Vec<PushEvent> {
    EVENTS.scan_after(store, &repo.0, &(repo.0, after), limit).into_iter().map(|(_, e)| e).collect()
}

/// Imports the cluster records of an older Wharf's data directory (see `legacy`).
pub(crate) fn import(
    store: &mut dyn RecordsMut,
    nodes: impl IntoIterator<Item = NodeRecord>,
    repos: impl IntoIterator<Item = RepoRecord>,
    next_repo_id: u64,
    events: impl IntoIterator<Item = PushEvent>,
    tokens: impl IntoIterator<Item = (String, Principal)>,
    recent_pushes: impl IntoIterator<Item = (String, Vec<PushEvent>)>,
) {
    for record in nodes {
        NODES.put(store, &record.id.0, &record);
    }
    for record in repos {
        let name = record.name.to_string();
        REPOS_BY_ID.put(store, &record.id.0, &name);
        REPOS.put(store, &name, &record);
    }
    REPO_IDS.raise_to(store, next_repo_id);
    for event in events {
        EVENTS.put(store, &(event.repo.0, event.seq), &event);
    }
    for (hash, principal) in tokens {
        TOKENS.put(store, &hash, &principal);
    }
    for (push_id, events) in recent_pushes {
        remember_push(store, push_id, &events);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wharf_proto::store::MemRecords;

    /// The cluster records of a store, as the tests read them.
    #[derive(Default)]
    struct State(MemRecords);

    impl State {
        fn apply(&mut self, command: Command) -> CommandResult {
            super::apply(&mut self.0, command)
        }
    }

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
        for twin in ["A/one", "a/ONE", "A/One"] {
            assert_eq!(create(&mut state, twin), Err(ApiError::RepoExists { repo: "a/one".into() }), "{twin}");
        }
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
        let mut state = State::default();
        create(&mut state, "a/one").unwrap();
        let update = |r: &str| RefUpdate {
            ref_name: r.into(),
            old: None,
            new: Some("abc".into()),
        };
        let push = |state: &mut State, updates: Vec<RefUpdate>| {
            state.apply(Command::RecordPush {
                push_id: format!("push-{}", updates[0].ref_name),
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
        let after_first = push_events(&state.0, RepoId(1), 1, 10);
        assert_eq!(after_first.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3]);
        let Ok(CommandOutcome::Pushed(again)) = push(&mut state, vec![update("refs/heads/dev")]) else { panic!() };
        assert_eq!(again, events, "a push proposed twice is recorded once");
        assert_eq!(push_events(&state.0, RepoId(1), 0, 10).len(), 3);
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
        let mut state = State::default();
        state
            .apply(Command::AddToken {
                token_hash: hash_token("secret"),
                principal: Principal {
                    user: "admin".into(),
                    admin: true,
                },
            })
            .unwrap();
        assert_eq!(authenticate(&state.0, "secret").unwrap().user, "admin");
        assert!(authenticate(&state.0, "guess").is_none());
    }
}
