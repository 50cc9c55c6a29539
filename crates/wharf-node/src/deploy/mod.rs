//! Deployments: environments of a repository run the artifacts of a pipeline's job as
//! instances on the cluster's nodes, replaced release by release without downtime.
//!
//! - [`controller`]: any node takes the next deployment of an environment and drives it with
//!   the environment's [`strategy`], rolling back by itself when the release cannot become
//!   healthy;
//! - [`driver`]: every node runs the instance processes the records place on it, checks their
//!   health and reports it;
//! - the front routes traffic to healthy instances by the weights in the records.

mod controller;
mod driver;
mod strategy;

use wharf_meta::{CommandOutcome, DeployCommand};
use wharf_proto::deploy::DeploymentKind;
use wharf_proto::{ApiError, DeployAction, NodeReply, PipelineRecord, PipelineStatus, RepoRequest};

pub(crate) use controller::{spawn_controllers, Controllers};
pub(crate) use driver::{read_instance_log, spawn_driver, Driver};

use crate::NodeContext;

/// Proposes a deploy command and returns the state machine's answer.
pub(crate) async fn write(node: &NodeContext, command: DeployCommand) -> Result<CommandOutcome, ApiError> {
    node.meta
        .write(wharf_meta::Command::Deploy(command))
        .await
        .map_err(|error| error.into_api("change deployments"))
}

/// Carries out a user's change to environments or deployments.
pub(crate) async fn act(node: &NodeContext, action: DeployAction) -> Result<NodeReply, ApiError> {
    let now_ms = crate::now_ms();
    let command = match action {
        DeployAction::CreateEnvironment {
            repo,
            name,
            config,
            protected,
        } => DeployCommand::CreateEnvironment {
            repo,
            name,
            config,
            protected,
            now_ms,
        },
        DeployAction::UpdateEnvironment { env, config, protected } => DeployCommand::UpdateEnvironment { env, config, protected },
        DeployAction::DeleteEnvironment { env } => DeployCommand::DeleteEnvironment { env, now_ms },
        DeployAction::PromoteDeployment { deployment } => DeployCommand::PromoteDeployment { deployment },
        DeployAction::CreateDeployment { env, kind, branch, sha } => DeployCommand::CreateDeployment {
            env,
            kind,
            branch,
            sha,
            now_ms,
        },
    };
    match write(node, command).await? {
        CommandOutcome::Created(id) => Ok(NodeReply::Id(id)),
        _ => Ok(NodeReply::Done),
    }
}

/// After a pipeline passed: deploys its commit to every unprotected environment of the
/// repository whose settings in the pipeline file name the pipeline's branch.
pub(crate) async fn on_pipeline_passed(node: &NodeContext, pipeline: &PipelineRecord) {
    if pipeline.status != PipelineStatus::Passed {
        return;
    }
    let Some(branch) = pipeline.ref_name.strip_prefix("refs/heads/") else { return };
    let directory = node.meta.directory();
    let environments: Vec<_> = directory.environments(Some(pipeline.repo)).into_iter().filter(|e| !e.protected).collect();
    if environments.is_empty() {
        return;
    }
    let Some(repo) = directory.repo_by_id(pipeline.repo) else { return };
    let request = wharf_proto::NodeRequest::Repo {
        id: repo.id,
        name: repo.name.clone(),
        request: RepoRequest::Blob {
            rev: Some(pipeline.sha.clone()),
            path: wharf_ci::PIPELINE_FILE.into(),
        },
    };
    let Ok(NodeReply::Blob(blob)) = node.peers.call(repo.node, &request).await else { return };
    let Ok(file) = wharf_ci::Pipeline::parse(&String::from_utf8_lossy(&blob.content)) else { return };
    let Some(deploy) = file.deploy else { return };
    for env in environments {
        if deploy.environment(&env.name).branch.as_deref() != Some(branch) {
            continue;
        }
        let command = DeployCommand::CreateDeployment {
            env: env.id,
            kind: DeploymentKind::Deploy,
            branch: Some(branch.to_owned()),
            sha: pipeline.sha.clone(),
            now_ms: crate::now_ms(),
        };
        match write(node, command).await {
            Ok(_) => tracing::info!(env = %env.name, sha = %pipeline.sha, "deploying after a passed pipeline"),
            Err(error) => tracing::warn!(env = %env.name, %error, "automatic deployment not created"),
        }
    }
}
