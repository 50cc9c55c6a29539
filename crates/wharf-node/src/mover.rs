//! Moving repositories between nodes, and the rebalancer that decides which to move.
//!
//! # The rebalancer
//! Every node runs one. Every couple of seconds it compares each repository it owns with its
//! desired owner (weighted rendezvous hashing of the name over the *active* nodes) and moves
//! the ones that belong elsewhere, one at a time. A node that joins therefore receives exactly
//! the repositories whose desired owner became it, and a draining node (no longer active)
//! gives every repository away, then records itself as drained.
//!
//! # A move, from node A (owner) to node B
//! 1. A bundles every ref (`git bundle --all`) and B pulls the file in 1 MiB pieces and
//!    fetches it into an incoming copy. Writes to the repository go on meanwhile.
//! 2. A takes the repository's write turn, so no write or push runs, bundles again, and B
//!    fetches the difference, runs `git fsck`, compares every ref with A's, and puts the copy
//!    in place.
//! 3. A commits `MoveRepo` (refused unless A still owns it) through Raft and waits until its
//!    own view shows B. From then on A forwards everything for the repository to B: the
//!    writes that queued behind the move, and any request that still arrives at A.
//!
//! At no time do two nodes accept a write: A stops before the switch, B starts after it. The old
//! copy on A is deleted when the last task using it has finished.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use wharf_meta::Command;
use wharf_placement::{key_of, owner, Member};
use wharf_proto::{
    ApiError, ImportRepo, NodeId, NodeReply, NodeRequest, NodeState, RepoRecord, SessionChunk, MAX_CHUNK_BYTES,
};

use crate::repo_actor::{RepoContext, RepoMessage};
use crate::background::Wake;
use crate::NodeContext;

/// How often the rebalancer looks.
const REBALANCE_PERIOD: Duration = Duration::from_secs(2);
/// How long one move may take before it is given up (and tried again later).
const MOVE_TIMEOUT: Duration = Duration::from_secs(600);

/// Bundle files this node offers to others, by transfer id.
#[derive(Default)]
pub(crate) struct Transfers {
    next: AtomicU64,
    files: Mutex<HashMap<u64, PathBuf>>,
    /// Moves finished by this node, for status pages.
    pub moves_done: AtomicU64,
}

impl Transfers {
    pub fn offer(&self, file: PathBuf) -> u64 {
        let id = self.next.fetch_add(1, Ordering::SeqCst) + 1;
        self.lock().insert(id, file);
        id
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, PathBuf>> {
        self.files.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reads up to [`MAX_CHUNK_BYTES`] of transfer `id` from `offset`.
    pub fn read(&self, id: u64, offset: u64) -> Result<SessionChunk, ApiError> {
        use std::io::{Read, Seek, SeekFrom};
        let path = self.lock().get(&id).cloned().ok_or(ApiError::SessionNotFound { session: id })?;
        let mut file = std::fs::File::open(&path).map_err(|e| ApiError::internal("open transfer", e))?;
        let size = file.metadata().map_err(|e| ApiError::internal("stat transfer", e))?.len();
        file.seek(SeekFrom::Start(offset)).map_err(|e| ApiError::internal("seek transfer", e))?;
        let mut data = Vec::with_capacity(MAX_CHUNK_BYTES.min(size.saturating_sub(offset) as usize));
        file.take(MAX_CHUNK_BYTES as u64)
            .read_to_end(&mut data)
            .map_err(|e| ApiError::internal("read transfer", e))?;
        let eof = offset + data.len() as u64 >= size;
        Ok(SessionChunk { data, eof })
    }

    /// Forgets transfer `id` and deletes its file.
    pub fn end(&self, id: u64) {
        if let Some(path) = self.lock().remove(&id) {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Starts the rebalancer of `node` under its [`crate::background::Background`].
pub(crate) fn spawn_rebalancer(node: &Arc<NodeContext>) {
    node.background.spawn_loop("rebalancer", Arc::downgrade(node), Wake::Every(REBALANCE_PERIOD), |node| async move {
        rebalance_once(&node).await;
    });
}

/// One pass: move away every repository that belongs elsewhere, then, if draining and empty,
/// record the node as drained.
async fn rebalance_once(node: &Arc<NodeContext>) {
    let me = node.config.id;
    let directory = node.meta.directory();
    let nodes = directory.nodes();
    let active: Vec<Member> = nodes
        .iter()
        .filter(|n| n.state == NodeState::Active)
        .map(|n| Member { id: n.id.0, weight: n.weight })
        .collect();
    let mine: Vec<RepoRecord> = directory.repos().into_iter().filter(|r| r.node == me).collect();
    let my_state = nodes.iter().find(|n| n.id == me).map(|n| n.state);
    if my_state == Some(NodeState::Draining) && mine.is_empty() {
        let command = Command::SetNodeState { node: me, state: NodeState::Drained };
        if let Err(error) = node.meta.write(command).await {
            tracing::warn!(%error, "cannot record this node as drained");
        } else {
            tracing::info!("node drained");
        }
        return;
    }
    for record in mine {
        let Some(target) = owner(&active, key_of(&record.name.to_string())).map(NodeId) else {
            continue;
        };
        if target == me || !is_reachable(target) {
            continue;
        }
        tracing::info!(repo = %record.name, from = %me, to = %target, "moving repository");
        match move_repo(node, &record, target).await {
            Ok(()) => {
                node.transfers.moves_done.fetch_add(1, Ordering::SeqCst);
                tracing::info!(repo = %record.name, to = %target, "repository moved");
            }
            Err(error) => tracing::warn!(repo = %record.name, to = %target, %error, "move failed; will retry"),
        }
    }
}

/// Whether node `node`'s router is in reach (its process runs and its session is up).
pub(crate) fn is_reachable(node: NodeId) -> bool {
    !ractor::pg::get_members(&wharf_proto::node_group(node)).is_empty()
}

/// Has the repository's actor carry out the move, and waits for it.
async fn move_repo(node: &Arc<NodeContext>, record: &RepoRecord, target: NodeId) -> Result<(), ApiError> {
    let (done, result) = oneshot::channel();
    let mut done = Some(done);
    node.registry
        .dispatch(node, record.id, record.name.clone(), |guard| {
            RepoMessage::MoveTo(target, done.take().expect("built once"), guard)
        })
        .await?;
    match tokio::time::timeout(MOVE_TIMEOUT, result).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(ApiError::internal("move", "the repository actor stopped")),
        Err(_) => Err(ApiError::internal("move", format!("not done within {MOVE_TIMEOUT:?}"))),
    }
}

/// Step 1 or 2 of a move at the source: bundle the repository and have `target` import it.
pub(crate) async fn copy_to(repo: &Arc<RepoContext>, target: NodeId, finalize: bool) -> Result<(), ApiError> {
    let node = &repo.node;
    let dir = node.config.data_dir.join("transfers");
    let file = dir.join(format!("{}-{}.bundle", repo.id, crate::now_ms()));
    let path = repo.git.path().to_owned();
    let bundle = file.clone();
    let (created, refs, head) = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir).map_err(|e| ApiError::internal("transfer directory", e))?;
        let created = wharf_git::transfer::create_bundle(&path, &bundle)?;
        let refs = wharf_git::transfer::list_refs(&path)?;
        let head = wharf_git::transfer::head_ref(&path)?;
        Ok::<_, ApiError>((created, refs, head))
    })
    .await
    .map_err(|e| ApiError::internal("bundle", e))??;
    let size = if created { std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0) } else { 0 };
    let transfer = created.then(|| node.transfers.offer(file));
    let request = NodeRequest::ImportRepo(ImportRepo {
        id: repo.id,
        name: repo.name.clone(),
        from: node.config.id,
        transfer,
        size,
        head,
        refs,
        finalize,
    });
    let result = node.peers.call_with_timeout(target, &request, MOVE_TIMEOUT).await;
    if let Some(transfer) = transfer {
        node.transfers.end(transfer);
    }
    result.map(drop)
}

/// Step 3 at the source, inside the write turn: switch ownership in Raft and wait until this
/// node sees it.
pub(crate) async fn switch_owner(repo: &Arc<RepoContext>, target: NodeId) -> Result<(), ApiError> {
    let node = &repo.node;
    let command = Command::MoveRepo {
        name: repo.name.clone(),
        from: node.config.id,
        to: target,
    };
    let written = node.meta.write(command).await;
    // Whatever the answer said, the record decides: a write whose answer was lost may still
    // have been applied, and then this node must stop serving the repository.
    let name = repo.name.clone();
    let switched = node
        .meta
        .wait_for_state(Duration::from_secs(10), "the ownership switch", |d| {
            d.repo(&name).is_some_and(|r| r.node == target)
        })
        .await
        .is_ok();
    if switched {
        let _ = repo.moved_to.set(target);
        return Ok(());
    }
    match written {
        Ok(_) => Err(ApiError::internal("move", "the switch was committed but is not visible here")),
        Err(error) => Err(error.into_api("switch the repository's owner")),
    }
}

/// Imports a repository moving here (see [`NodeRequest::ImportRepo`]).
pub(crate) async fn import(node: &Arc<NodeContext>, request: ImportRepo) -> Result<NodeReply, ApiError> {
    let final_path = node.config.repo_path(request.id);
    let incoming = final_path.with_extension("incoming");
    let name = request.name.to_string();
    let prepared = incoming.clone();
    tokio::task::spawn_blocking(move || wharf_git::transfer::prepare_incoming(&prepared, &name))
        .await
        .map_err(|e| ApiError::internal("prepare import", e))??;
    if let Some(transfer) = request.transfer {
        let file = node
            .config
            .data_dir
            .join("transfers")
            .join(format!("in-{}-{transfer}.bundle", request.id));
        pull(node, request.from, transfer, &file).await?;
        let (target, bundle) = (incoming.clone(), file.clone());
        let fetched = tokio::task::spawn_blocking(move || wharf_git::transfer::fetch_bundle(&target, &bundle))
            .await
            .map_err(|e| ApiError::internal("fetch bundle", e))?;
        let _ = std::fs::remove_file(&file);
        fetched?;
    }
    if request.finalize {
        tokio::task::spawn_blocking(move || {
            wharf_git::transfer::verify(&incoming, &request.refs, request.head.as_deref())?;
            if final_path.exists() {
                // A copy from an earlier, unfinished move: Raft never made this node its owner.
                std::fs::remove_dir_all(&final_path).map_err(|e| ApiError::internal("remove stale copy", e))?;
            }
            std::fs::rename(&incoming, &final_path).map_err(|e| ApiError::internal("put copy in place", e))
        })
        .await
        .map_err(|e| ApiError::internal("finish import", e))??;
    }
    Ok(NodeReply::Done)
}

/// Copies transfer `transfer` from node `from` into `file`, a piece at a time.
pub(crate) async fn pull(node: &NodeContext, from: NodeId, transfer: u64, file: &std::path::Path) -> Result<(), ApiError> {
    pull_chunks(node, from, file, |offset| NodeRequest::ReadTransfer { transfer, offset }).await
}

/// Copies a file that node `from` serves in chunks (`request(offset)` asks for the chunk at
/// `offset`; the reply is a [`NodeReply::Chunk`]) into `file`, and syncs it.
pub(crate) async fn pull_chunks(
    node: &NodeContext,
    from: NodeId,
    file: &std::path::Path,
    request: impl Fn(u64) -> NodeRequest,
) -> Result<(), ApiError> {
    use tokio::io::AsyncWriteExt;
    if let Some(dir) = file.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(|e| ApiError::internal("create directory", e))?;
    }
    let mut out = tokio::fs::File::create(file).await.map_err(|e| ApiError::internal("create file", e))?;
    let mut offset = 0u64;
    loop {
        let chunk = match node.peers.call(from, &request(offset)).await? {
            NodeReply::Chunk(chunk) => chunk,
            other => return Err(ApiError::internal("pull", format!("unexpected reply {other:?}"))),
        };
        out.write_all(&chunk.data).await.map_err(|e| ApiError::internal("write file", e))?;
        offset += chunk.data.len() as u64;
        if chunk.eof {
            break;
        }
    }
    out.sync_all().await.map_err(|e| ApiError::internal("sync file", e))
}
