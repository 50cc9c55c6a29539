//! Pipelines: created where a push lands, run by runners on every node.
//!
//! After a push is recorded, the node that owns the repository reads `.wharf.yml` at each
//! pushed branch tip, plans the jobs that run for the branch ([`wharf_ci::Pipeline::plan`]) and
//! records the pipeline through Raft (a broken file gives a failed pipeline with the line and
//! the reason). From then on the pipeline lives in the state machine, which queues each job
//! once what it needs has passed (see `wharf_meta::CiCommand`).
//!
//! Every node runs a [`runner`]: it takes queued jobs into its free slots with a lease, runs
//! each in a fresh workspace, confined by the node's [`wharf_sandbox::Sandbox`] ([`job`]), and reports how
//! it ended. Logs and artifacts stay on the
//! node that ran the job and are read from there ([`files`]).

mod files;
mod job;
mod runner;

use std::sync::Arc;

use wharf_git::GitRepo;
use wharf_meta::{CiCommand, Command, CommandOutcome, RefUpdate};
use wharf_proto::{ApiError, CiAction, NodeReply, PipelineRecord, RepoId};

pub(crate) use files::{read_artifact, read_at, read_log};
pub(crate) use runner::{spawn_runner, Runner};

use crate::repo_actor::RepoContext;
use crate::NodeContext;

/// Jobs that run at once on one node unless configured otherwise.
pub const DEFAULT_RUNNER_SLOTS: usize = 2;

/// Starts a pipeline for every branch `updates` moved to a commit.
pub(crate) fn on_push(node: Arc<NodeContext>, repo: RepoId, git: Arc<GitRepo>, updates: &[RefUpdate]) {
    for update in updates {
        let (Some(branch), Some(sha)) = (update.ref_name.strip_prefix("refs/heads/"), update.new.clone()) else {
            continue;
        };
        let trigger = Trigger {
            repo,
            branch: branch.to_owned(),
            sha,
            only: None,
        };
        let (node, git) = (node.clone(), git.clone());
        tokio::spawn(async move {
            if let Err(error) = start_pipeline(&node, &git, trigger).await {
                tracing::warn!(%repo, %error, "pipeline not started");
            }
        });
    }
}

/// Starts a pipeline for a branch's tip on request (the seed's test trigger). Answers
/// [`NodeReply::PipelineStarted`].
pub(crate) async fn trigger(repo: &RepoContext, branch: String, only: Option<String>) -> Result<NodeReply, ApiError> {
    let git = repo.git.clone();
    let wanted = branch.clone();
    let tip = tokio::task::spawn_blocking(move || git.branches())
        .await
        .map_err(|e| ApiError::internal("list branches", e))??
        .into_iter()
        .find(|b| b.name == wanted)
        .ok_or_else(|| ApiError::RevisionNotFound {
            repo: repo.name.to_string(),
            rev: branch.clone(),
        })?;
    let trigger = Trigger {
        repo: repo.id,
        branch: branch.clone(),
        sha: tip.commit,
        only: only.clone(),
    };
    match start_pipeline(&repo.node, &repo.git, trigger).await? {
        Some(pipeline) => Ok(NodeReply::PipelineStarted(pipeline.id)),
        None => Err(ApiError::invalid(match only {
            Some(only) => format!("no job of {} runs on branch {branch} with stage or name {only:?}", wharf_ci::PIPELINE_FILE),
            None => format!("no job of {} runs on branch {branch}", wharf_ci::PIPELINE_FILE),
        })),
    }
}

/// What a pipeline runs for.
struct Trigger {
    repo: RepoId,
    branch: String,
    sha: String,
    /// Only the jobs of this stage or with this name (and the jobs they need); `None` for all.
    only: Option<String>,
}

/// Reads the pipeline file at the trigger's commit and records the pipeline. `None` when there
/// is nothing to run (no file, or no job for the branch).
async fn start_pipeline(node: &NodeContext, git: &Arc<GitRepo>, trigger: Trigger) -> Result<Option<PipelineRecord>, ApiError> {
    let (read_git, read_sha) = (git.clone(), trigger.sha.clone());
    let file = tokio::task::spawn_blocking(move || read_git.blob(Some(&read_sha), wharf_ci::PIPELINE_FILE))
        .await
        .map_err(|e| ApiError::internal("read pipeline file", e))?;
    let text = match file {
        Ok(blob) => String::from_utf8_lossy(&blob.content).into_owned(),
        Err(ApiError::PathNotFound { .. }) => return Ok(None),
        Err(error) => return Err(error),
    };
    let (jobs, error) = match wharf_ci::Pipeline::parse(&text) {
        Ok(pipeline) => match pipeline.plan(&trigger.branch, trigger.only.as_deref()) {
            jobs if jobs.is_empty() => return Ok(None),
            jobs => (jobs, None),
        },
        Err(error) => (Vec::new(), Some(format!("{}: {error}", wharf_ci::PIPELINE_FILE))),
    };
    let command = CiCommand::CreatePipeline {
        repo: trigger.repo,
        ref_name: format!("refs/heads/{}", trigger.branch),
        sha: trigger.sha.clone(),
        jobs,
        error,
        now_ms: crate::now_ms(),
    };
    let CommandOutcome::Pipeline(record) = write(node, command, "create pipeline").await? else {
        return Err(ApiError::internal("create pipeline", "no pipeline in the outcome"));
    };
    tracing::info!(pipeline = record.id, branch = %trigger.branch, sha = %trigger.sha, "pipeline created");
    Ok(Some(record))
}

/// Proposes a CI command and returns the state machine's answer.
pub(crate) async fn write(node: &NodeContext, command: CiCommand, what: &str) -> Result<CommandOutcome, ApiError> {
    node.meta.write(Command::Ci(command)).await.map_err(|error| error.into_api(what))
}

/// Carries out a user's change to CI state.
pub(crate) async fn act(node: &NodeContext, action: CiAction) -> Result<NodeReply, ApiError> {
    let now_ms = crate::now_ms();
    let command = match action {
        CiAction::CancelPipeline { pipeline } => CiCommand::CancelPipeline { pipeline, now_ms },
        CiAction::RetryJob { job } => CiCommand::RetryJob { job, now_ms },
        CiAction::SetVariable { repo, variable } => CiCommand::SetVariable { repo, variable },
        CiAction::DeleteVariable { repo, name } => CiCommand::DeleteVariable { repo, name },
    };
    match write(node, command, "change CI state").await? {
        CommandOutcome::Pipeline(pipeline) => Ok(NodeReply::Pipeline(pipeline)),
        _ => Ok(NodeReply::Done),
    }
}

/// Bundles every ref of the repository for a runner elsewhere (see
/// [`wharf_proto::RepoRequest::Bundle`]). The runner ends the transfer, which deletes the file.
pub(crate) async fn offer_bundle(repo: &RepoContext) -> Result<NodeReply, ApiError> {
    let node = &repo.node;
    let dir = node.config.data_dir.join("transfers");
    let file = dir.join(format!("ci-{}-{}.bundle", repo.id, crate::now_ms()));
    let (path, bundle) = (repo.git.path().to_owned(), file.clone());
    let created = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir).map_err(|e| ApiError::internal("transfer directory", e))?;
        wharf_git::transfer::create_bundle(&path, &bundle)
    })
    .await
    .map_err(|e| ApiError::internal("bundle", e))??;
    if !created {
        return Err(ApiError::invalid(format!("{} has no refs to check out", repo.name)));
    }
    Ok(NodeReply::Offered {
        node: node.config.id,
        transfer: node.transfers.offer(file),
    })
}
