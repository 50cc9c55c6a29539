//! Pipelines on this node: one for every branch a push moves, and its jobs run here.
//!
//! After a push is recorded, the node that owns the repository reads `.wharf.yml` at the
//! pushed commit, records a pipeline (or, for a broken file, a failed one with the line and
//! the reason) through Raft, and drives it: [`wharf_ci::schedule`] says which jobs start and
//! which are skipped, and each job runs in a fresh workspace holding a checkout of the commit,
//! as its own process group, within its timeout. Every status change is a Raft write that
//! names the status it replaces, so a job is never counted twice.
//!
//! Jobs run on the owning node's runner slots; spreading them over the cluster with leases is
//! the next step.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use wharf_ci::{schedule, Step};
use wharf_git::GitRepo;
use wharf_meta::{Command, CommandOutcome, RefUpdate};
use wharf_proto::{ApiError, JobRecord, JobStatus, PipelineRecord, RepoId, SessionChunk, MAX_CHUNK_BYTES};

use crate::NodeContext;

/// Jobs that run at once on one node unless configured otherwise.
pub const DEFAULT_RUNNER_SLOTS: usize = 2;

/// This node's runner slots.
pub(crate) struct Runner {
    slots: Arc<Semaphore>,
}

impl Runner {
    pub fn new(slots: usize) -> Runner {
        Runner {
            slots: Arc::new(Semaphore::new(slots.max(1))),
        }
    }
}

/// Starts a pipeline for every branch `updates` moved to a commit.
pub(crate) fn on_push(node: Arc<NodeContext>, repo: RepoId, git: Arc<GitRepo>, updates: &[RefUpdate]) {
    for update in updates {
        let (Some(branch), Some(sha)) = (update.ref_name.strip_prefix("refs/heads/"), update.new.clone()) else {
            continue;
        };
        let (node, git, branch, ref_name) = (node.clone(), git.clone(), branch.to_owned(), update.ref_name.clone());
        tokio::spawn(async move {
            if let Err(error) = start_pipeline(node, repo, git, ref_name, branch, sha).await {
                tracing::warn!(%repo, %error, "pipeline not started");
            }
        });
    }
}

async fn start_pipeline(
    node: Arc<NodeContext>,
    repo: RepoId,
    git: Arc<GitRepo>,
    ref_name: String,
    branch: String,
    sha: String,
) -> Result<(), ApiError> {
    let read_sha = sha.clone();
    let read_git = git.clone();
    let file = tokio::task::spawn_blocking(move || read_git.blob(Some(&read_sha), wharf_ci::PIPELINE_FILE))
        .await
        .map_err(|e| ApiError::internal("read pipeline file", e))?;
    let text = match file {
        Ok(blob) => String::from_utf8_lossy(&blob.content).into_owned(),
        // No pipeline file: nothing to run.
        Err(ApiError::PathNotFound { .. }) => return Ok(()),
        Err(error) => return Err(error),
    };
    let (parsed, jobs, error) = match wharf_ci::Pipeline::parse(&text) {
        Ok(pipeline) => {
            let jobs: Vec<(String, String)> =
                pipeline.jobs_for_branch(&branch).iter().map(|j| (j.name.clone(), j.stage.clone())).collect();
            if jobs.is_empty() {
                return Ok(());
            }
            (Some(pipeline), jobs, None)
        }
        Err(error) => (None, Vec::new(), Some(format!("{}: {error}", wharf_ci::PIPELINE_FILE))),
    };
    let command = Command::CreatePipeline {
        repo,
        ref_name,
        sha: sha.clone(),
        jobs,
        error,
        now_ms: crate::now_ms(),
    };
    let record = match node.meta.write(command).await {
        Ok(Ok(CommandOutcome::Pipeline(record))) => record,
        Ok(Ok(other)) => return Err(ApiError::internal("create pipeline", format!("unexpected outcome {other:?}"))),
        Ok(Err(error)) => return Err(error),
        Err(error) => return Err(error.into_api("create pipeline")),
    };
    tracing::info!(pipeline = record.id, %branch, %sha, "pipeline created");
    if let Some(pipeline) = parsed {
        drive(node, git.path().to_owned(), branch, record, pipeline).await;
    }
    Ok(())
}

/// Runs a pipeline's jobs in order until every one has finished.
async fn drive(node: Arc<NodeContext>, repo_path: PathBuf, branch: String, record: PipelineRecord, pipeline: wharf_ci::Pipeline) {
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    loop {
        let jobs = jobs_of(&node, &record);
        let statuses: BTreeMap<String, JobStatus> = jobs.values().map(|j| (j.name.clone(), j.status)).collect();
        if statuses.values().all(|s| s.is_finished()) {
            tracing::info!(pipeline = record.id, "pipeline finished");
            return;
        }
        for step in schedule(&pipeline, &statuses) {
            let (name, to) = match &step {
                Step::Start(name) => (name, JobStatus::Queued),
                Step::Skip(name) => (name, JobStatus::Skipped),
            };
            let Some(job) = jobs.get(name) else { continue };
            if update(&node, job.id, JobStatus::Created, to, None, None).await.is_err() {
                continue;
            }
            if let (Step::Start(_), Some(spec)) = (&step, pipeline.jobs.get(name)) {
                let context = JobContext {
                    node: node.clone(),
                    job: job.clone(),
                    spec: spec.clone(),
                    variables: pipeline.variables.clone(),
                    repo_path: repo_path.clone(),
                    sha: record.sha.clone(),
                    branch: branch.clone(),
                };
                let done = done_tx.clone();
                tokio::spawn(async move {
                    run_job(context).await;
                    let _ = done.send(());
                });
            }
        }
        // Wake on a finished job, or look again in a while.
        let _ = tokio::time::timeout(Duration::from_secs(1), done_rx.recv()).await;
    }
}

fn jobs_of(node: &NodeContext, record: &PipelineRecord) -> BTreeMap<String, JobRecord> {
    let directory = node.meta.directory();
    record
        .jobs
        .iter()
        .filter_map(|id| directory.job(*id))
        .map(|job| (job.name.clone(), job))
        .collect()
}

async fn update(
    node: &NodeContext,
    job: u64,
    from: JobStatus,
    to: JobStatus,
    exit_code: Option<i32>,
    coverage: Option<f64>,
) -> Result<(), ApiError> {
    let command = Command::UpdateJob {
        job,
        from,
        to,
        node: Some(node.config.id),
        exit_code,
        coverage,
        now_ms: crate::now_ms(),
    };
    match node.meta.write(command).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(error),
        Err(error) => Err(error.into_api("update job")),
    }
}

struct JobContext {
    node: Arc<NodeContext>,
    job: JobRecord,
    spec: wharf_ci::Job,
    variables: BTreeMap<String, String>,
    repo_path: PathBuf,
    sha: String,
    branch: String,
}

/// The log file of job `id` on this node.
pub(crate) fn log_path(node: &NodeContext, id: u64) -> PathBuf {
    node.config.data_dir.join("ci").join("logs").join(format!("job-{id}.log"))
}

/// Runs one job: a checkout, the script as its own process group, the timeout, the log.
async fn run_job(context: JobContext) {
    let node = context.node.clone();
    let _slot = node.runner.slots.clone().acquire_owned().await;
    let id = context.job.id;
    if update(&node, id, JobStatus::Queued, JobStatus::Running, None, None).await.is_err() {
        return;
    }
    let log = log_path(&node, id);
    let workspace = node.config.data_dir.join("ci").join("work").join(format!("job-{id}"));
    let outcome = execute(&context, &workspace, &log).await;
    let (status, exit_code) = match outcome {
        Ok(Finished::Exited(0)) => (JobStatus::Passed, Some(0)),
        Ok(Finished::Exited(code)) => (JobStatus::Failed, Some(code)),
        Ok(Finished::TimedOut) => (JobStatus::TimedOut, None),
        Err(error) => {
            append_log(&log, &format!("\nwharf: the job could not run: {error}\n"));
            (JobStatus::Failed, None)
        }
    };
    let coverage = context.spec.coverage.as_ref().and_then(|pattern| {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        wharf_ci::extract_coverage(pattern, &text)
    });
    if let Err(error) = update(&node, id, JobStatus::Running, status, exit_code, coverage).await {
        tracing::warn!(job = id, %error, "job result not recorded");
    }
    let _ = tokio::fs::remove_dir_all(&workspace).await;
}

enum Finished {
    Exited(i32),
    TimedOut,
}

async fn execute(context: &JobContext, workspace: &Path, log: &Path) -> Result<Finished, String> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    let _ = std::fs::remove_dir_all(workspace);
    std::fs::create_dir_all(workspace.parent().unwrap_or(workspace)).map_err(|e| e.to_string())?;
    checkout(&context.repo_path, &context.sha, workspace).await?;
    let log_file = std::fs::File::create(log).map_err(|e| e.to_string())?;
    let script = format!("set -e\n{}\n", context.spec.script.join("\n"));
    let mut command = tokio::process::Command::new("sh");
    command
        .arg("-c")
        .arg(script)
        .current_dir(workspace)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", workspace)
        .envs(&context.variables)
        .envs(&context.spec.variables)
        .env("CI", "true")
        .env("WHARF_COMMIT_SHA", &context.sha)
        .env("WHARF_BRANCH", &context.branch)
        .env("WHARF_PIPELINE_ID", context.job.pipeline.to_string())
        .env("WHARF_JOB_ID", context.job.id.to_string())
        .env("WHARF_JOB_NAME", &context.job.name)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().map_err(|e| e.to_string())?)
        .stderr(log_file)
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|e| format!("cannot start sh: {e}"))?;
    match tokio::time::timeout(context.spec.timeout, child.wait()).await {
        Ok(status) => {
            let status = status.map_err(|e| e.to_string())?;
            Ok(Finished::Exited(status.code().unwrap_or(-1)))
        }
        Err(_) => {
            wharf_git::service::kill_service(&mut child);
            let _ = child.wait().await;
            append_log(log, &format!("\nwharf: the job was killed at its timeout of {}s\n", context.spec.timeout.as_secs()));
            Ok(Finished::TimedOut)
        }
    }
}

/// A checkout of `sha` in `workspace`, sharing the repository's objects.
async fn checkout(repo: &Path, sha: &str, workspace: &Path) -> Result<(), String> {
    let run = |args: Vec<String>| async move {
        let output = tokio::process::Command::new("git")
            .args(&args)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .output()
            .await
            .map_err(|e| e.to_string())?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!("git {}: {}", args[0], String::from_utf8_lossy(&output.stderr).trim()))
        }
    };
    let workspace_arg = workspace.display().to_string();
    run(vec!["clone".into(), "--quiet".into(), "--shared".into(), "--no-checkout".into(), repo.display().to_string(), workspace_arg.clone()]).await?;
    run(vec!["-C".into(), workspace_arg, "checkout".into(), "--quiet".into(), "--detach".into(), sha.to_owned()]).await
}

fn append_log(log: &Path, text: &str) {
    use std::io::Write;
    if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
        let _ = file.write_all(text.as_bytes());
    }
}

/// Reads up to [`MAX_CHUNK_BYTES`] of job `id`'s log from `offset`. `eof` is set once the job
/// has finished and everything has been read.
pub(crate) fn read_log(node: &NodeContext, id: u64, offset: u64) -> Result<SessionChunk, ApiError> {
    use std::io::{Read, Seek, SeekFrom};
    let finished = node.meta.directory().job(id).is_some_and(|job| job.status.is_finished());
    let path = log_path(node, id);
    let mut data = Vec::new();
    if let Ok(mut file) = std::fs::File::open(&path) {
        file.seek(SeekFrom::Start(offset)).map_err(|e| ApiError::internal("seek log", e))?;
        file.take(MAX_CHUNK_BYTES as u64)
            .read_to_end(&mut data)
            .map_err(|e| ApiError::internal("read log", e))?;
    }
    let eof = finished && data.len() < MAX_CHUNK_BYTES;
    Ok(SessionChunk { data, eof })
}
