//! Git protocol sessions: one `git upload-pack` or `git receive-pack` process per HTTP request,
//! driven by `Session*` messages from a front.
//!
//! # Use
//! A repository actor opens a session ([`start`]) and answers with its id. The front then sends
//! its request body as [`SessionOp::Write`] chunks of at most 1 MiB, each acknowledged before
//! the next (backpressure: a slow git slows the client, nothing piles up in memory), then
//! [`SessionOp::FinishInput`], then [`SessionOp::Read`] until a chunk has `eof` set.
//!
//! # Guarantees
//! - Upload-pack output streams as git produces it, through a small bounded buffer.
//! - Receive-pack output (a small status report) is held back until the push is *recorded*:
//!   the refs are compared with the snapshot taken before git started, and the changes are
//!   committed as push events in the metadata store. Only then does the client read git's
//!   "ok". If the events cannot be committed, the refs are put back and the client gets an
//!   error: an acknowledged push always has its event.
//! - A receive-pack session holds its repository's write turn from before git starts until it
//!   ends, so pushes and API writes to one repository never interleave.
//!
//! # Failure and shutdown
//! [`SessionOp::Abort`], an idle timeout, or node shutdown kills the process group's git. Git
//! keeps pushed objects in quarantine until it updates refs, so a killed push leaves nothing.
//! If git had already updated refs when it was killed, the change is recorded as above.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ractor::RpcReplyPort;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin};
use tokio::sync::{mpsc, oneshot};
use wharf_proto::{
    ApiError, GitService, NodeReply, OpenSession, SessionChunk, SessionId, MAX_CHUNK_BYTES,
};

use crate::activity::{answer, InflightGuard};
use crate::repo_actor::RepoContext;

type Reply = RpcReplyPort<Vec<u8>>;

/// A step of a session, as the router received it.
pub(crate) enum SessionOp {
    Write(Vec<u8>, Reply),
    FinishInput(Reply),
    Read(Reply),
    Abort(Reply),
}

/// The sessions open on this node, by id.
#[derive(Default)]
pub(crate) struct Sessions {
    next_id: AtomicU64,
    open: Mutex<HashMap<SessionId, mpsc::UnboundedSender<SessionOp>>>,
}

impl Sessions {
    /// Routes one step to its session, or answers that the session is gone.
    pub fn deliver(&self, session: SessionId, op: SessionOp) {
        let sender = self.lock().get(&session).cloned();
        match sender {
            Some(sender) => {
                if let Err(mpsc::error::SendError(op)) = sender.send(op) {
                    answer(op.into_reply(), Err(ApiError::SessionNotFound { session: session.0 }));
                }
            }
            None => answer(op.into_reply(), Err(ApiError::SessionNotFound { session: session.0 })),
        }
    }

    /// Number of sessions open now.
    pub fn open_count(&self) -> usize {
        self.lock().len()
    }

    /// Kills every session (node shutdown).
    pub fn abort_all(&self) {
        // Dropping the senders ends each session's loop, which kills its process.
        self.lock().clear();
    }

    fn register(&self) -> (SessionId, mpsc::UnboundedReceiver<SessionOp>) {
        let id = SessionId(self.next_id.fetch_add(1, Ordering::Relaxed) + 1);
        let (sender, receiver) = mpsc::unbounded_channel();
        self.lock().insert(id, sender);
        (id, receiver)
    }

    fn remove(&self, id: SessionId) {
        self.lock().remove(&id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, mpsc::UnboundedSender<SessionOp>>> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts
        // and removes), so a poisoned lock is still usable.
        self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl SessionOp {
    fn into_reply(self) -> Reply {
        match self {
            SessionOp::Write(_, reply)
            | SessionOp::FinishInput(reply)
            | SessionOp::Read(reply)
            | SessionOp::Abort(reply) => reply,
        }
    }
}

/// Where a push stands, for a receive-pack session.
struct PushRecord {
    /// Every ref before git started (taken inside the write turn).
    refs_before: BTreeMap<String, String>,
    /// Who pushes.
    user: String,
    /// Unique name of this push in the metadata store, so a retried record is applied once.
    push_id: String,
    /// Dropped when the session ends: releases the repository's write turn.
    _write_turn: oneshot::Sender<()>,
}

/// Starts a session for `open` on `repo`. For a receive-pack RPC the caller must hold the
/// repository's write turn and pass its release handle.
pub(crate) async fn start(
    repo: Arc<RepoContext>,
    open: OpenSession,
    write_turn: Option<oneshot::Sender<()>>,
    guard: InflightGuard,
) -> Result<SessionId, ApiError> {
    let push = match write_turn {
        Some(turn) if open.service == GitService::ReceivePack && !open.advertise_refs => {
            let refs_before = crate::ref_changes::snapshot(&repo).await?;
            Some(PushRecord {
                refs_before,
                user: open.user.clone(),
                push_id: crate::ref_changes::change_id(&repo),
                _write_turn: turn,
            })
        }
        _ => None,
    };
    let child = wharf_git::service::spawn_service(
        repo.git.path(),
        open.service,
        open.advertise_refs,
        open.git_protocol.as_deref(),
    )
    .map_err(|e| ApiError::internal("spawn git", e))?;
    let (id, ops) = repo.node.sessions.register();
    tokio::spawn(run(id, repo, child, ops, push, guard));
    Ok(id)
}

/// The life of one session.
async fn run(
    id: SessionId,
    repo: Arc<RepoContext>,
    mut child: Child,
    mut ops: mpsc::UnboundedReceiver<SessionOp>,
    mut push: Option<PushRecord>,
    _guard: InflightGuard,
) {
    let mut stdin = child.stdin.take();
    let mut output = spawn_stdout_pump(&mut child);
    let stderr = spawn_stderr_collector(&mut child);
    let idle = repo.node.config.session_idle_timeout;
    // For a push, git's whole output, released once the push is recorded.
    let mut held_output: Option<std::collections::VecDeque<Vec<u8>>> = None;

    loop {
        let op = match tokio::time::timeout(idle, ops.recv()).await {
            Ok(Some(op)) => op,
            Ok(None) | Err(_) => {
                tracing::warn!(session = %id, repo = %repo.name, "git session abandoned; killing git");
                break;
            }
        };
        match op {
            SessionOp::Write(data, reply) => {
                let result = write_input(&mut stdin, &data).await;
                answer(reply, result.map(|()| NodeReply::Done));
            }
            SessionOp::FinishInput(reply) => {
                stdin = None;
                answer(reply, Ok(NodeReply::Done));
            }
            SessionOp::Read(reply) => {
                if push.is_none() {
                    match output.recv().await {
                        Some(Ok(data)) => answer(reply, Ok(chunk(data, false))),
                        Some(Err(error)) => {
                            answer(reply, Err(ApiError::internal("read git output", error)));
                            break;
                        }
                        None => {
                            let result = finish_streaming(&mut child, stderr).await;
                            answer(reply, result.map(|()| chunk(Vec::new(), true)));
                            repo.node.sessions.remove(id);
                            return;
                        }
                    }
                    continue;
                }
                if held_output.is_none() {
                    stdin = None;
                    let record = push.take().expect("checked: this is a push session");
                    match finish_push(&repo, &mut child, &mut output, record).await {
                        Ok(all) => held_output = Some(split_chunks(all)),
                        Err(error) => {
                            answer(reply, Err(error));
                            repo.node.sessions.remove(id);
                            return;
                        }
                    }
                }
                let pending = held_output.as_mut().expect("filled just above");
                let data = pending.pop_front().unwrap_or_default();
                let eof = pending.is_empty();
                answer(reply, Ok(chunk(data, eof)));
                if eof {
                    repo.node.sessions.remove(id);
                    return;
                }
            }
            SessionOp::Abort(reply) => {
                answer(reply, Ok(NodeReply::Done));
                break;
            }
        }
    }

    // Abandoned, aborted or failed: kill git, and if a push got as far as changing refs,
    // record (or undo) that change so no ref moves without its event.
    repo.node.sessions.remove(id);
    wharf_git::service::kill_service(&mut child);
    let _ = child.wait().await;
    if let Some(record) = push {
        // The write turn is still held (by `record`), so no other receive-pack is using
        // a quarantine of this repository.
        let git = repo.git.clone();
        match tokio::task::spawn_blocking(move || git.remove_quarantines()).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(session = %id, repo = %repo.name, n, "removed the quarantine of an aborted push"),
            Ok(Err(error)) => tracing::warn!(session = %id, repo = %repo.name, %error, "cannot remove an aborted push's quarantine"),
            Err(error) => tracing::warn!(session = %id, %error, "quarantine cleanup task failed"),
        }
        if let Err(error) = crate::ref_changes::record_or_undo(&repo, &record.refs_before, &record.user, record.push_id.clone()).await {
            tracing::error!(session = %id, repo = %repo.name, %error, "aborted push not recorded");
        }
    }
}

async fn write_input(stdin: &mut Option<ChildStdin>, data: &[u8]) -> Result<(), ApiError> {
    let pipe = stdin
        .as_mut()
        .ok_or_else(|| ApiError::invalid("the request body was already finished"))?;
    pipe.write_all(data).await.map_err(|error| ApiError::GitFailed {
        command: "pack protocol".into(),
        stderr: format!("git stopped reading its input: {error}"),
    })
}

fn chunk(data: Vec<u8>, eof: bool) -> NodeReply {
    NodeReply::Chunk(SessionChunk { data, eof })
}

/// Reads git's stdout into a small bounded channel, so output flows while input is still
/// being written (progress messages) without ever buffering more than a few chunks.
fn spawn_stdout_pump(child: &mut Child) -> mpsc::Receiver<std::io::Result<Vec<u8>>> {
    let (sender, receiver) = mpsc::channel(4);
    if let Some(mut stdout) = child.stdout.take() {
        tokio::spawn(async move {
            loop {
                let mut buffer = vec![0u8; 256 * 1024];
                match stdout.read(&mut buffer).await {
                    Ok(0) => return,
                    Ok(n) => {
                        buffer.truncate(n);
                        if sender.send(Ok(buffer)).await.is_err() {
                            return;
                        }
                    }
                    Err(error) => {
                        let _ = sender.send(Err(error)).await;
                        return;
                    }
                }
            }
        });
    }
    receiver
}

/// Keeps the first 64 KiB of git's stderr, for error messages.
fn spawn_stderr_collector(child: &mut Child) -> tokio::task::JoinHandle<String> {
    let stderr = child.stderr.take();
    tokio::spawn(async move {
        let mut kept = Vec::new();
        if let Some(stderr) = stderr {
            let _ = stderr.take(64 * 1024).read_to_end(&mut kept).await;
        }
        String::from_utf8_lossy(&kept).into_owned()
    })
}

async fn finish_streaming(
    child: &mut Child,
    stderr: tokio::task::JoinHandle<String>,
) -> Result<(), ApiError> {
    let status = child
        .wait()
        .await
        .map_err(|error| ApiError::internal("wait for git", error))?;
    if !status.success() {
        let stderr = stderr.await.unwrap_or_default();
        tracing::warn!(%status, stderr = %stderr.trim(), "git service exited with an error");
    }
    // Git reports protocol errors inside its output; a non-zero exit after a complete
    // response (a client that hung up early, say) is not the reader's error.
    Ok(())
}

/// Waits for receive-pack to finish, gathers its output, and records the push.
async fn finish_push(
    repo: &RepoContext,
    child: &mut Child,
    output: &mut mpsc::Receiver<std::io::Result<Vec<u8>>>,
    record: PushRecord,
) -> Result<Vec<u8>, ApiError> {
    let mut all = Vec::new();
    while let Some(piece) = output.recv().await {
        all.extend(piece.map_err(|e| ApiError::internal("read git output", e))?);
    }
    let status = child
        .wait()
        .await
        .map_err(|error| ApiError::internal("wait for git receive-pack", error))?;
    if !status.success() {
        tracing::warn!(repo = %repo.name, %status, "git receive-pack exited with an error");
    }
    crate::ref_changes::record_or_undo(repo, &record.refs_before, &record.user, record.push_id.clone()).await?;
    Ok(all)
}

/// Splits held output into chunks small enough for one message. Always at least one chunk,
/// so the reader gets its `eof`.
fn split_chunks(all: Vec<u8>) -> std::collections::VecDeque<Vec<u8>> {
    let mut chunks: std::collections::VecDeque<Vec<u8>> =
        all.chunks(MAX_CHUNK_BYTES).map(<[u8]>::to_vec).collect();
    if chunks.is_empty() {
        chunks.push_back(Vec::new());
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_chunks_respects_the_frame_limit_and_never_returns_nothing() {
        assert_eq!(split_chunks(Vec::new()).len(), 1);
        let chunks = split_chunks(vec![7u8; MAX_CHUNK_BYTES * 2 + 1]);
        assert_eq!(chunks.len(), 3);
        assert!(chunks.iter().all(|c| c.len() <= MAX_CHUNK_BYTES));
    }
}
