//! One actor per active repository, and the registry that activates and passivates them.
//!
//! # When it is used
//! Every [`wharf_proto::RepoRequest`] that reaches a node goes through
//! [`RepoRegistry::dispatch`], which activates the repository's [`RepoActor`] if it is not
//! running (opening the bare repository) and hands it the request.
//!
//! # What it guarantees
//! - **Reads run in parallel.** The actor answers a read by spawning it on the blocking pool;
//!   reads never queue behind each other or behind a write or a push.
//! - **Writes are ordered.** Branch edits, commits, merges, deletion and receive-pack sessions
//!   go into the actor's write queue in the order the actor received them, and run one at a
//!   time. A push holds the queue from before git starts until its session ends.
//! - **Every ref change is recorded.** A write through the API records the refs it changed as
//!   push events and runs the pipeline rules, exactly as a push does (`ref_changes`).
//! - **Passivation never loses work.** Each request carries an in-flight guard from the moment
//!   the registry hands it over until it is answered. The registry stops an actor only when it
//!   has nothing in flight and has been idle for `actor_idle_timeout`, and it decides that under
//!   the same lock that dispatch uses, so no message can slip in between.
//!
//! # Failure and shutdown
//! If the repository cannot be opened, activation fails and the caller gets an error; nothing
//! is cached. On shutdown every actor is stopped; reads in flight finish on their own, and
//! queued writes are dropped unanswered (their callers see a closed reply port).

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::{mpsc, oneshot, Mutex};
use wharf_git::GitRepo;
use wharf_meta::Command;
use wharf_proto::{ApiError, GitService, NodeId, NodeReply, NodeRequest, RepoId, RepoName, RepoRequest};

use crate::activity::{answer, Activity, InflightGuard};
use crate::traced::Traced;
use crate::NodeContext;

/// What every task working on one repository needs.
pub(crate) struct RepoContext {
    pub id: RepoId,
    pub name: RepoName,
    pub git: Arc<GitRepo>,
    pub node: Arc<NodeContext>,
    /// Set once the repository has moved to another node: from then on everything for it is
    /// forwarded there, and the local copy is deleted when the last user lets go of it.
    pub moved_to: Arc<OnceLock<NodeId>>,
}

impl Drop for RepoContext {
    fn drop(&mut self) {
        if self.moved_to.get().is_none() {
            return;
        }
        // The last reader, session or write of the old copy is done.
        let path = self.git.path().to_owned();
        let trash = path.with_extension("moved");
        if std::fs::rename(&path, &trash).is_ok() {
            std::thread::spawn(move || {
                if let Err(error) = std::fs::remove_dir_all(&trash) {
                    tracing::warn!(path = %trash.display(), %error, "cannot delete a moved repository's old copy");
                }
            });
        }
    }
}

/// A message to a repository actor. Sent only by the [`RepoRegistry`] of the same node.
pub(crate) enum RepoMessage {
    /// Handle a request and answer on the port. The guard marks it in flight until answered;
    /// the work runs in the span and request id of the call it serves.
    Handle(RepoRequest, RpcReplyPort<Vec<u8>>, InflightGuard, Traced),
    /// Delete the repository: its record, then its directory. Answers `Done`.
    Delete(RpcReplyPort<Vec<u8>>, InflightGuard, Traced),
    /// Move the repository to another node (see [`crate::mover`]).
    MoveTo(NodeId, oneshot::Sender<Result<(), ApiError>>, InflightGuard),
}

impl ractor::Message for RepoMessage {}

/// The actor serving one repository.
pub(crate) struct RepoActor;

/// A repository actor's state.
pub(crate) struct RepoState {
    repo: Arc<RepoContext>,
    writes: mpsc::UnboundedSender<WriteJob>,
}

type WriteJob = Pin<Box<dyn Future<Output = ()> + Send>>;

impl Actor for RepoActor {
    type Msg = RepoMessage;
    type State = RepoState;
    type Arguments = (RepoId, RepoName, Arc<NodeContext>, Arc<OnceLock<NodeId>>);

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        (id, name, node, moved_to): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let path = node.config.repo_path(id);
        let open_name = name.clone();
        let git = tokio::task::spawn_blocking(move || {
            let git = GitRepo::open(&path, open_name.to_string())?;
            // No session runs before the actor does: any quarantine left is from a push that
            // a crash interrupted.
            match git.remove_quarantines() {
                Ok(0) => {}
                Ok(n) => tracing::info!(repo = %open_name, n, "removed quarantines of interrupted pushes"),
                Err(error) => tracing::warn!(repo = %open_name, %error, "cannot remove stale quarantines"),
            }
            Ok::<_, wharf_proto::ApiError>(git)
        })
        .await??;
        let (writes, queue) = mpsc::unbounded_channel();
        tokio::spawn(run_write_queue(queue));
        Ok(RepoState {
            repo: Arc::new(RepoContext {
                id,
                name,
                git: Arc::new(git),
                node,
                moved_to,
            }),
            writes,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            RepoMessage::Handle(request, reply, guard, traced) => state.handle(request, reply, guard, traced),
            RepoMessage::Delete(reply, guard, traced) => {
                let repo = state.repo.clone();
                state.enqueue(
                    reply,
                    traced.wrap(async move {
                        let _guard = guard;
                        match repo.moved_to.get() {
                            Some(target) => forward(&repo, *target, NodeRequest::DeleteRepo { id: repo.id, name: repo.name.clone() }).await,
                            None => delete(&repo).await,
                        }
                    }),
                );
            }
            RepoMessage::MoveTo(target, done, guard) => state.start_move(target, done, guard),
        }
        Ok(())
    }
}

impl RepoState {
    fn handle(&self, request: RepoRequest, reply: RpcReplyPort<Vec<u8>>, guard: InflightGuard, traced: Traced) {
        let repo = self.repo.clone();
        if let Some(target) = repo.moved_to.get().copied() {
            traced.spawn(async move {
                let _guard = guard;
                answer(reply, forward_request(&repo, target, request).await);
            });
            return;
        }
        match request {
            RepoRequest::OpenSession(open)
                if open.service == GitService::ReceivePack && !open.advertise_refs =>
            {
                // A push takes the write turn and keeps it until its session ends.
                let job: WriteJob = Box::pin(traced.wrap(async move {
                    if let Some(target) = repo.moved_to.get().copied() {
                        let _guard = guard;
                        answer(reply, forward_request(&repo, target, RepoRequest::OpenSession(open)).await);
                        return;
                    }
                    let (turn, released) = oneshot::channel::<()>();
                    let started = crate::session::start(repo, open, Some(turn), guard).await;
                    let ok = started.is_ok();
                    answer(reply, started.map(NodeReply::Session));
                    if ok {
                        let _ = released.await;
                    }
                }));
                let _ = self.writes.send(job);
            }
            RepoRequest::OpenSession(open) => {
                traced.spawn(async move {
                    let started = crate::session::start(repo, open, None, guard).await;
                    answer(reply, started.map(NodeReply::Session));
                });
            }
            RepoRequest::Bundle => {
                traced.spawn(async move {
                    let _guard = guard;
                    answer(reply, crate::ci::offer_bundle(&repo).await);
                });
            }
            RepoRequest::TriggerPipeline { branch, only } => {
                traced.spawn(async move {
                    let _guard = guard;
                    answer(reply, crate::ci::trigger(&repo, branch, only).await);
                });
            }
            request if is_write(&request) => self.enqueue(
                reply,
                traced.wrap(async move {
                    let _guard = guard;
                    // A write queued behind a move goes to the new owner.
                    match repo.moved_to.get().copied() {
                        Some(target) => forward_request(&repo, target, request).await,
                        None => change_refs(repo, request).await,
                    }
                }),
            ),
            read => {
                traced.spawn(async move {
                    let _guard = guard;
                    answer(reply, blocking(repo, move |git| self::read(git, read)).await);
                });
            }
        }
    }

    /// Queues a write; its result answers `reply` when its turn has run.
    fn enqueue(
        &self,
        reply: RpcReplyPort<Vec<u8>>,
        work: impl Future<Output = Result<NodeReply, ApiError>> + Send + 'static,
    ) {
        let job: WriteJob = Box::pin(async move { answer(reply, work.await) });
        // The queue task lives as long as the actor's state; a send fails only during
        // shutdown, when the dropped reply port tells the caller.
        let _ = self.writes.send(job);
    }

    /// Moves the repository to `target`: a bulk copy while writes go on, then the final copy
    /// and the ownership switch in the write turn (see [`crate::mover`]).
    fn start_move(&self, target: NodeId, done: oneshot::Sender<Result<(), ApiError>>, guard: InflightGuard) {
        let repo = self.repo.clone();
        let writes = self.writes.clone();
        tokio::spawn(async move {
            let _guard = guard;
            if let Err(error) = crate::mover::copy_to(&repo, target, false).await {
                let _ = done.send(Err(error));
                return;
            }
            let (finished, result) = oneshot::channel();
            let final_step: WriteJob = Box::pin(async move {
                let outcome = match crate::mover::copy_to(&repo, target, true).await {
                    Ok(()) => crate::mover::switch_owner(&repo, target).await,
                    Err(error) => Err(error),
                };
                let _ = finished.send(outcome);
            });
            if writes.send(final_step).is_err() {
                let _ = done.send(Err(ApiError::internal("move", "the repository actor stopped")));
                return;
            }
            let _ = done.send(result.await.unwrap_or_else(|_| Err(ApiError::internal("move", "the write queue stopped"))));
        });
    }
}

/// Sends a request for a repository that moved to its new owner.
async fn forward_request(repo: &RepoContext, target: NodeId, request: RepoRequest) -> Result<NodeReply, ApiError> {
    let request = NodeRequest::Repo {
        id: repo.id,
        name: repo.name.clone(),
        request,
    };
    forward(repo, target, request).await
}

async fn forward(repo: &RepoContext, target: NodeId, request: NodeRequest) -> Result<NodeReply, ApiError> {
    crate::router::forward(&repo.node, target, request).await
}

/// Runs queued writes one at a time, in order.
async fn run_write_queue(mut queue: mpsc::UnboundedReceiver<WriteJob>) {
    while let Some(job) = queue.recv().await {
        job.await;
    }
}

fn is_write(request: &RepoRequest) -> bool {
    match request {
        RepoRequest::CreateBranch { .. }
        | RepoRequest::DeleteBranch { .. }
        | RepoRequest::CommitFiles(_)
        | RepoRequest::Merge(_) => true,
        RepoRequest::AsUser { request, .. } => is_write(request),
        _ => false,
    }
}

/// Runs a write in the write turn and records the refs it changed as events, which run the
/// pipeline rules, as a push does (see [`crate::ref_changes`]).
async fn change_refs(repo: Arc<RepoContext>, request: RepoRequest) -> Result<NodeReply, ApiError> {
    let (user, request) = match request {
        RepoRequest::AsUser { user, request } => (user, *request),
        // From a front older than `AsUser`: the change is recorded without its author.
        request => ("unknown".to_owned(), request),
    };
    let before = crate::ref_changes::snapshot(&repo).await?;
    let reply = blocking(repo.clone(), move |git| write(git, request)).await?;
    crate::ref_changes::record_or_undo(&repo, &before, &user, crate::ref_changes::change_id(&repo)).await?;
    Ok(reply)
}

/// Runs git work on the blocking pool.
async fn blocking(
    repo: Arc<RepoContext>,
    work: impl FnOnce(&GitRepo) -> Result<NodeReply, ApiError> + Send + 'static,
) -> Result<NodeReply, ApiError> {
    tokio::task::spawn_blocking(move || work(&repo.git))
        .await
        .map_err(|error| ApiError::internal("repository task", error))?
}

fn read(git: &GitRepo, request: RepoRequest) -> Result<NodeReply, ApiError> {
    Ok(match request {
        RepoRequest::Summary => NodeReply::Summary(git.summary()?),
        RepoRequest::ListBranches => NodeReply::Branches(git.branches()?),
        RepoRequest::ListTags => NodeReply::Tags(git.tags()?),
        RepoRequest::Tree {
            rev,
            path,
            offset,
            limit,
        } => NodeReply::Tree(git.tree(rev.as_deref(), &path, offset, limit)?),
        RepoRequest::Blob { rev, path } => NodeReply::Blob(git.blob(rev.as_deref(), &path)?),
        RepoRequest::Log {
            rev,
            path,
            limit,
            cursor,
        } => NodeReply::Log(git.log(rev.as_deref(), path.as_deref(), limit, cursor.as_deref())?),
        RepoRequest::Commit { rev } => NodeReply::Commit(git.commit_detail(&rev)?),
        RepoRequest::Compare { base, head } => NodeReply::Compare(git.compare(&base, &head)?),
        other => {
            return Err(ApiError::internal(
                "repository read",
                format!("{other:?} is not a read"),
            ))
        }
    })
}

fn write(git: &GitRepo, request: RepoRequest) -> Result<NodeReply, ApiError> {
    Ok(match request {
        RepoRequest::CreateBranch { name, from } => {
            NodeReply::Branch(git.create_branch(&name, from.as_deref())?)
        }
        RepoRequest::DeleteBranch { name } => {
            git.delete_branch(&name)?;
            NodeReply::Done
        }
        RepoRequest::CommitFiles(request) => NodeReply::Commit(git.commit_files(&request)?),
        RepoRequest::Merge(request) => NodeReply::Merged(git.merge(&request)?),
        other => {
            return Err(ApiError::internal(
                "repository write",
                format!("{other:?} is not a write"),
            ))
        }
    })
}

/// Removes the record first (so nothing routes here any more), then the directory. The
/// directory is renamed aside before removal so a crash never leaves a half-deleted repository
/// at a live path.
async fn delete(repo: &RepoContext) -> Result<NodeReply, ApiError> {
    let command = Command::DeleteRepo {
        name: repo.name.clone(),
    };
    if let Err(error) = repo.node.meta.write(command).await {
        return Err(error.into_api("delete repository record"));
    }
    let path = repo.git.path().to_owned();
    let trash: PathBuf = path.with_extension("deleted");
    tokio::task::spawn_blocking(move || {
        std::fs::rename(&path, &trash)?;
        std::fs::remove_dir_all(&trash)
    })
    .await
    .map_err(|error| ApiError::internal("delete repository directory", error))?
    .map_err(|error| ApiError::internal("delete repository directory", error))?;
    Ok(NodeReply::Done)
}

/// An active repository actor and its activity counter.
#[derive(Clone)]
struct ActiveRepo {
    actor: ActorRef<RepoMessage>,
    activity: Arc<Activity>,
    moved_to: Arc<OnceLock<NodeId>>,
}

/// One repository's place in the registry: empty while its actor is being activated.
type Slot = Arc<tokio::sync::OnceCell<ActiveRepo>>;

/// The repository actors active on this node.
///
/// The map's lock is held only to find or add a repository's slot, never while a repository
/// opens: activating one (opening it on disk, which a slow disk can stretch to seconds) makes
/// only the callers of that repository wait, on its slot, while every other repository is
/// served.
#[derive(Default)]
pub(crate) struct RepoRegistry {
    active: Mutex<HashMap<RepoId, Slot>>,
    /// Active actors as of the last change (not counting those being activated).
    active_count: std::sync::atomic::AtomicUsize,
}

impl RepoRegistry {
    /// Hands `build(guard)` to the actor of repository `id`, activating it if needed.
    pub async fn dispatch(
        &self,
        node: &Arc<NodeContext>,
        id: RepoId,
        name: RepoName,
        build: impl FnOnce(InflightGuard) -> RepoMessage,
    ) -> Result<(), ApiError> {
        let slot = self.active.lock().await.entry(id).or_default().clone();
        let was_active = slot.initialized();
        let activated = slot.get_or_try_init(|| activate(node, id, name.clone())).await;
        let entry = match activated {
            Ok(entry) => entry.clone(),
            Err(error) => {
                self.forget(id, &slot).await;
                return Err(error);
            }
        };
        if !was_active {
            self.count_active(&*self.active.lock().await);
        }
        let message = build(InflightGuard::new(entry.activity.clone()));
        if entry.actor.send_message(message).is_err() {
            self.forget(id, &slot).await;
            return Err(ApiError::Unavailable {
                what: format!("repository {name}"),
                reason: "its actor stopped; retry".into(),
                retry_after_secs: 1,
            });
        }
        Ok(())
    }

    /// Whether repository `id`'s actor is up (not absent, not being activated).
    pub async fn is_active(&self, id: RepoId) -> bool {
        self.active.lock().await.get(&id).is_some_and(|slot| slot.initialized())
    }

    /// Removes `slot` from the map, unless another has taken its place.
    async fn forget(&self, id: RepoId, slot: &Slot) {
        let mut active = self.active.lock().await;
        if active.get(&id).is_some_and(|current| Arc::ptr_eq(current, slot)) {
            active.remove(&id);
        }
        self.count_active(&active);
    }

    /// Stops the actors that have had nothing in flight for `idle`.
    pub async fn passivate_idle(&self, idle: std::time::Duration) -> usize {
        let mut active = self.active.lock().await;
        let idle_ids: Vec<RepoId> = active
            .iter()
            // A repository being activated is not idle; one that moved away goes as soon as
            // nothing uses it.
            .filter(|(_, slot)| {
                slot.get().is_some_and(|entry| {
                    let idle_for = if entry.moved_to.get().is_some() { std::time::Duration::ZERO } else { idle };
                    entry.activity.is_idle(idle_for)
                })
            })
            .map(|(id, _)| *id)
            .collect();
        for id in &idle_ids {
            if let Some(entry) = active.remove(id).as_ref().and_then(|slot| slot.get()) {
                entry.actor.stop(Some("idle".into()));
            }
        }
        metrics::counter!("wharf_repository_passivations_total").increment(idle_ids.len() as u64);
        self.count_active(&active);
        idle_ids.len()
    }

    /// Number of active actors (not counting those being activated).
    pub async fn active(&self) -> usize {
        self.active.lock().await.values().filter(|slot| slot.initialized()).count()
    }

    /// Stops every actor.
    pub async fn stop_all(&self) {
        let mut active = self.active.lock().await;
        for (_, slot) in active.drain() {
            if let Some(entry) = slot.get() {
                entry.actor.stop(Some("node shutdown".into()));
            }
        }
        self.count_active(&active);
    }

    /// Repository actors active now, as last counted: readable without the registry's lock,
    /// for a metrics scrape.
    pub fn active_now(&self) -> usize {
        self.active_count.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Keeps [`RepoRegistry::active_now`] current; called with the lock held after a change.
    fn count_active(&self, active: &HashMap<RepoId, Slot>) {
        let count = active.values().filter(|slot| slot.initialized()).count();
        self.active_count.store(count, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Starts the actor of repository `id`, which opens it on disk.
async fn activate(node: &Arc<NodeContext>, id: RepoId, name: RepoName) -> Result<ActiveRepo, ApiError> {
    let moved_to = Arc::new(OnceLock::new());
    let (actor, _) = Actor::spawn(None, RepoActor, (id, name.clone(), node.clone(), moved_to.clone()))
        .await
        .map_err(|error| ApiError::Unavailable {
            what: format!("repository {name}"),
            reason: format!("cannot open it on node {}: {error}", node.config.id),
            retry_after_secs: 5,
        })?;
    tracing::debug!(repo = %name, "repository actor activated");
    metrics::counter!("wharf_repository_activations_total").increment(1);
    Ok(ActiveRepo {
        actor,
        activity: Arc::new(Activity::default()),
        moved_to,
    })
}
