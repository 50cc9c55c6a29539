//! The gauges a storage node sets at scrape time: what its records and slots look like now.
//!
//! Events are counted where they happen (repository activations in [`crate::repo_actor`], job
//! queue wait and run time in the runner, calls in [`wharf_proto::NodeClient`]). State is read
//! here, when Prometheus asks ([`collect`], registered by the binary through
//! [`crate::StorageNode::metrics_collector`]), so no loop polls for it.
//!
//! Figures read from the records (jobs queued and running, deployments by state) describe the
//! whole cluster: every storage node reports the same values from its copy of the records, so
//! queries and alerts aggregate them with `max`, not `sum`.

use std::collections::HashMap;

use wharf_proto::deploy::DeploymentStatus;
use wharf_proto::{Directory, JobRecord, JobStatus};

use crate::NodeContext;

/// Enough to count every queued job of a busy cluster; the records hold no more than this
/// many in practice, and a scrape must stay cheap if they ever do.
const QUEUED_SCAN_LIMIT: usize = 100_000;

/// Sets every state gauge of `node`.
pub(crate) fn collect(node: &NodeContext) {
    let directory = node.meta.directory();

    let active = node.registry.active_now();
    let owned = directory.repos().iter().filter(|r| r.node == node.config.id).count();
    metrics::gauge!("wharf_repositories", "state" => "active").set(active as f64);
    metrics::gauge!("wharf_repositories", "state" => "passivated").set(owned.saturating_sub(active) as f64);

    let (slots, busy) = node.runner.slots();
    metrics::gauge!("wharf_runner_slots").set(slots as f64);
    metrics::gauge!("wharf_runner_slots_busy").set(busy as f64);

    let queued = directory.queued_jobs(QUEUED_SCAN_LIMIT);
    let now = crate::now_ms();
    let oldest = queued
        .iter()
        .filter_map(|job| queued_since(directory.as_ref(), job))
        .map(|since| now.saturating_sub(since))
        .max()
        .unwrap_or(0);
    metrics::gauge!("wharf_ci_jobs", "status" => "queued").set(queued.len() as f64);
    metrics::gauge!("wharf_ci_jobs", "status" => "running").set(directory.running_jobs().len() as f64);
    metrics::gauge!("wharf_ci_oldest_queued_job_age_seconds").set(oldest as f64 / 1000.0);

    let deployments = directory.deployments(None);
    let mut by_status: HashMap<&'static str, u64> = ALL_STATUSES.iter().map(|s| (status_label(*s), 0)).collect();
    // The latest deployment of each environment: whether the environment is healthy now.
    let mut latest: HashMap<u64, (u64, DeploymentStatus)> = HashMap::new();
    for deployment in &deployments {
        *by_status.entry(status_label(deployment.status)).or_default() += 1;
        let newest = latest.entry(deployment.env).or_insert((deployment.id, deployment.status));
        if deployment.id >= newest.0 {
            *newest = (deployment.id, deployment.status);
        }
    }
    for (status, count) in by_status {
        metrics::gauge!("wharf_deployments", "status" => status).set(count as f64);
    }
    let mut environments: HashMap<&'static str, u64> = ALL_STATUSES.iter().map(|s| (status_label(*s), 0)).collect();
    for (_, status) in latest.values() {
        *environments.entry(status_label(*status)).or_default() += 1;
    }
    for (status, count) in environments {
        metrics::gauge!("wharf_environments_by_latest_deployment", "status" => status).set(count as f64);
    }
}

const ALL_STATUSES: [DeploymentStatus; 6] = [
    DeploymentStatus::Pending,
    DeploymentStatus::InProgress,
    DeploymentStatus::Paused,
    DeploymentStatus::Completed,
    DeploymentStatus::Failed,
    DeploymentStatus::RolledBack,
];

/// The label value of a deployment status, as the API spells it.
fn status_label(status: DeploymentStatus) -> &'static str {
    match status {
        DeploymentStatus::Pending => "pending",
        DeploymentStatus::InProgress => "in-progress",
        DeploymentStatus::Paused => "paused",
        DeploymentStatus::Completed => "completed",
        DeploymentStatus::Failed => "failed",
        DeploymentStatus::RolledBack => "rolled-back",
    }
}

/// When `job` became runnable, as far as the records tell (milliseconds since the epoch): the
/// latest of its pipeline's creation, the end of each job it needs, and the end of its own
/// previous attempt or lease. The records keep no "queued at" time, so this is the closest
/// figure: it overstates the wait of a job a user retried long after it ended.
pub(crate) fn queued_since(directory: &dyn Directory, job: &JobRecord) -> Option<u64> {
    let pipeline = directory.pipeline(job.pipeline)?;
    let needed = pipeline
        .jobs
        .iter()
        .filter_map(|id| directory.job(*id))
        .filter(|other| other.id != job.id && job.needs.contains(&other.name))
        .filter_map(|other| other.finished_ms);
    let previous = [job.finished_ms, job.lease_until_ms.filter(|_| job.status == JobStatus::Queued)];
    needed.chain(previous.into_iter().flatten()).chain([pipeline.created_ms]).max()
}

