//! The files jobs leave on the node that ran them: logs (`ci/logs/job-{id}.{attempt}.log`,
//! kept while the job's record is), artifacts (`ci/artifacts/job-{id}/`, deleted when they
//! expire) and the mirrors checkouts come from (`ci/mirrors/`, kept while the repository is),
//! and reading them a chunk at a time for the front.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;

use wharf_proto::{ApiError, JobStatus, SessionChunk, MAX_CHUNK_BYTES};

use crate::NodeContext;

/// How often expired artifacts, and files of deleted jobs and repositories, are looked for.
pub(super) const SWEEP_PERIOD: Duration = Duration::from_secs(60);

/// The log of attempt `attempt` of job `id` on this node.
pub(super) fn log_path(node: &NodeContext, id: u64, attempt: u32) -> PathBuf {
    node.config.data_dir.join("ci").join("logs").join(format!("job-{id}.{attempt}.log"))
}

/// Where job `id`'s artifacts are kept on this node.
pub(super) fn artifacts_dir(node: &NodeContext, id: u64) -> PathBuf {
    node.config.data_dir.join("ci").join("artifacts").join(format!("job-{id}"))
}

/// Reads up to [`MAX_CHUNK_BYTES`] of job `id`'s log (its latest attempt) from `offset`.
/// `eof` is set once the attempt is no longer running here and everything has been read: the
/// runner finishes the log before it reports the end, so a finished job's log is whole.
pub(crate) fn read_log(node: &NodeContext, id: u64, offset: u64) -> Result<SessionChunk, ApiError> {
    let job = node.meta.directory().job(id).ok_or_else(|| ApiError::NotFound { what: format!("job {id}") })?;
    let running_here = job.status == JobStatus::Running && job.node == Some(node.config.id);
    let data = match std::fs::File::open(log_path(node, id, job.attempt)) {
        Ok(file) => read_at(file, offset)?,
        Err(_) => Vec::new(),
    };
    let eof = !running_here && data.len() < MAX_CHUNK_BYTES;
    Ok(SessionChunk { data, eof })
}

/// Reads up to [`MAX_CHUNK_BYTES`] of artifact `path` of job `id` from `offset`. Only a path
/// the job's record lists is read, so no request can reach outside the job's directory.
pub(crate) fn read_artifact(node: &NodeContext, id: u64, path: &str, offset: u64) -> Result<SessionChunk, ApiError> {
    let job = node.meta.directory().job(id).ok_or_else(|| ApiError::NotFound { what: format!("job {id}") })?;
    let not_found = || ApiError::NotFound {
        what: format!("artifact {path} of job {id}"),
    };
    let file = job.artifacts.iter().find(|a| a.path == path).ok_or_else(not_found)?;
    let handle = std::fs::File::open(artifacts_dir(node, id).join(&file.path)).map_err(|_| not_found())?;
    let data = read_at(handle, offset)?;
    let eof = offset + data.len() as u64 >= file.size;
    Ok(SessionChunk { data, eof })
}

/// Up to [`MAX_CHUNK_BYTES`] of `file` from `offset`.
pub(crate) fn read_at(mut file: std::fs::File, offset: u64) -> Result<Vec<u8>, ApiError> {
    file.seek(SeekFrom::Start(offset)).map_err(|e| ApiError::internal("seek", e))?;
    let mut data = Vec::new();
    file.take(MAX_CHUNK_BYTES as u64)
        .read_to_end(&mut data)
        .map_err(|e| ApiError::internal("read", e))?;
    Ok(data)
}

/// Deletes what is no longer wanted: expired artifacts, the files of jobs whose records are
/// gone (their repository was deleted), and the mirrors of deleted repositories.
pub(super) async fn sweep(node: &NodeContext) {
    sweep_expired_artifacts(node).await;
    let directory = node.meta.directory();
    let ci = node.config.data_dir.join("ci");
    sweep_dir(&ci.join("logs"), |name| {
        let id = name.strip_prefix("job-")?.split('.').next()?.parse::<u64>().ok()?;
        Some(directory.job(id).is_none())
    })
    .await;
    sweep_dir(&ci.join("mirrors"), |name| {
        let id = u64::from_str_radix(name.strip_suffix(".git")?, 16).ok()?;
        Some(directory.repo_by_id(wharf_proto::RepoId(id)).is_none())
    })
    .await;
}

/// Removes each entry of `dir` for which `unwanted` (given its name) says `Some(true)`;
/// names it does not know are left alone.
async fn sweep_dir(dir: &std::path::Path, unwanted: impl Fn(&str) -> Option<bool>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name.to_str().and_then(&unwanted) != Some(true) {
            continue;
        }
        tracing::info!(path = %entry.path().display(), "deleting the files of a deleted job or repository");
        let path = entry.path();
        let _ = match tokio::fs::symlink_metadata(&path).await {
            Ok(metadata) if metadata.is_dir() => tokio::fs::remove_dir_all(&path).await,
            _ => tokio::fs::remove_file(&path).await,
        };
    }
}

/// Deletes the artifacts of jobs whose artifacts expired, were replaced by a run elsewhere,
/// or whose record is gone.
async fn sweep_expired_artifacts(node: &NodeContext) {
    let root = node.config.data_dir.join("ci").join("artifacts");
    let Ok(entries) = std::fs::read_dir(&root) else { return };
    let directory = node.meta.directory();
    let now_ms = crate::now_ms();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(id) = name.to_str().and_then(|n| n.strip_prefix("job-")).and_then(|n| n.parse::<u64>().ok()) else {
            continue;
        };
        let keep = directory.job(id).is_some_and(|job| {
            !job.status.is_finished()
                || (job.node == Some(node.config.id) && job.artifacts_expire_ms.is_none_or(|expiry| expiry > now_ms))
        });
        if !keep {
            tracing::info!(job = id, "deleting expired artifacts");
            let _ = tokio::fs::remove_dir_all(entry.path()).await;
        }
    }
}
