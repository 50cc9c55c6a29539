//! Deployments: what the `deploy:` section of `.wharf.yml` asks for, and the records of
//! environments, deployments and the instances they run.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{ApiError, NodeId, RepoId};

/// The checked `deploy:` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeploySpec {
    /// The job whose artifacts are deployed.
    pub from: String,
    /// The shell command that starts one instance, run in the artifact directory with `$PORT`.
    pub command: String,
    /// How an instance's health is checked.
    pub health: HealthCheck,
    /// Settings per environment name; an environment not named here gets
    /// [`EnvironmentSpec::default`].
    pub environments: BTreeMap<String, EnvironmentSpec>,
}

impl DeploySpec {
    /// The settings of environment `name`.
    pub fn environment(&self, name: &str) -> EnvironmentSpec {
        self.environments.get(name).cloned().unwrap_or_default()
    }
}

/// An HTTP health check, as load balancers define one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HealthCheck {
    /// The path asked with GET; any 2xx or 3xx answer is healthy.
    pub path: String,
    /// Time between checks.
    pub interval_ms: u64,
    /// How long one check may take.
    pub timeout_ms: u64,
    /// Consecutive successes that make an instance healthy.
    pub healthy_threshold: u32,
    /// Consecutive failures that make it unhealthy.
    pub unhealthy_threshold: u32,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            path: "/".into(),
            interval_ms: 1000,
            timeout_ms: 1000,
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        }
    }
}

/// How one environment runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EnvironmentSpec {
    /// The branch whose passing pipelines deploy here automatically.
    pub branch: Option<String>,
    /// Instances that run.
    pub instances: u32,
    /// How a release replaces the one before.
    pub strategy: Strategy,
    /// How long a release may take to become healthy before it counts as failed.
    pub progress_deadline_ms: u64,
    /// Whether a failed release is rolled back to the last good one by itself.
    pub auto_revert: bool,
    /// What runs an instance.
    #[serde(default)]
    pub driver: DriverSpec,
}

/// What runs an environment's instances.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub enum DriverSpec {
    /// A process on the node, in its own process group (the default: works on any machine).
    #[default]
    Process,
    /// A container of `image` on the node's Docker engine, with the artifacts mounted at
    /// `/app`, on the host's network, with `--cpus` and `--memory` from the environment.
    Docker {
        /// The image (it must be on the node: there is no registry to pull from).
        image: String,
    },
}

impl Default for EnvironmentSpec {
    fn default() -> Self {
        EnvironmentSpec {
            branch: None,
            instances: 1,
            strategy: Strategy::default(),
            progress_deadline_ms: 300_000,
            auto_revert: true,
            driver: DriverSpec::Process,
        }
    }
}

/// How a new release replaces the running one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum Strategy {
    /// Replace instances a few at a time, as Kubernetes' rolling update.
    Rolling {
        /// Instances above the desired count while it rolls.
        max_surge: u32,
        /// Instances below the desired count that may be unavailable while it rolls.
        max_unavailable: u32,
        /// How long a new instance stays healthy before it counts as available.
        min_ready_ms: u64,
    },
    /// Start the whole new set beside the old, switch traffic at once, keep the old set a while.
    BlueGreen {
        /// Switch as soon as the new set is healthy; otherwise wait for a promote call.
        auto_promote: bool,
        /// How long the old set stays after the switch, for an instant rollback.
        scale_down_delay_ms: u64,
    },
    /// Shift traffic in weighted steps, checking the new set at each.
    Canary {
        /// Percentages of traffic on the new set, ending at 100.
        steps: Vec<u32>,
        /// The pause at each step before its check.
        pause_ms: u64,
        /// The highest error rate (0..1) of the new set that passes a check.
        max_error_rate: f64,
        /// The highest mean latency of the new set's requests that passes a check.
        #[serde(default)]
        max_latency_ms: Option<u64>,
    },
}

impl Default for Strategy {
    fn default() -> Self {
        Strategy::Rolling {
            max_surge: 1,
            max_unavailable: 0,
            min_ready_ms: 0,
        }
    }
}


/// An environment's instance size, as the seed API gives it.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EnvConfig {
    /// CPUs per instance.
    pub cpu: f64,
    /// Memory per instance, GiB.
    pub memory: f64,
    /// Storage per instance, GiB.
    pub storage: f64,
}

/// A place a repository deploys to: development, testing, staging, production.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EnvironmentRecord {
    /// Its id, unique in the cluster.
    pub id: u64,
    /// The repository (the seed's project).
    pub repo: RepoId,
    /// Its name, unique within the repository.
    pub name: String,
    /// Its instance size.
    pub config: EnvConfig,
    /// Deploys only on an explicit call, never from a branch.
    pub protected: bool,
    /// The revision that serves now.
    pub current_revision: Option<u64>,
    /// The last revision that completed, which an automatic rollback returns to.
    pub last_good_revision: Option<u64>,
    /// When it was created.
    pub created_ms: u64,
}

/// What a deployment runs: a commit's artifacts and how to start and check them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Release {
    /// The commit.
    pub sha: String,
    /// The job whose artifacts are run.
    pub artifact_job: u64,
    /// The command that starts one instance.
    pub command: String,
    /// The health check.
    pub health: HealthCheck,
    /// Instances, strategy, deadline, auto revert.
    pub settings: EnvironmentSpec,
}

/// How far a deployment is, in the seed's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DeploymentStatus {
    /// Waiting for its turn (deployments to one environment run one at a time, in order).
    Pending,
    /// Replacing instances.
    InProgress,
    /// Waiting for a manual promotion.
    Paused,
    /// Every instance runs the new revision.
    Completed,
    /// It failed and nothing could be rolled back to.
    Failed,
    /// It failed and the environment went back to its last good revision.
    RolledBack,
}

impl DeploymentStatus {
    /// Whether it will not change any more.
    pub fn is_finished(self) -> bool {
        matches!(self, DeploymentStatus::Completed | DeploymentStatus::Failed | DeploymentStatus::RolledBack)
    }
}

/// Why a deployment exists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentKind {
    /// A branch's commit, asked for through the API or after its pipeline passed.
    Deploy,
    /// A return to an earlier revision, asked for through the API.
    Rollback {
        /// The revision returned to.
        to_revision: u64,
    },
}

/// One line of a deployment's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeployEvent {
    /// When.
    pub time_ms: u64,
    /// What happened.
    pub message: String,
}

/// One numbered revision of an environment, and how its rollout went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeploymentRecord {
    /// Its id, unique in the cluster.
    pub id: u64,
    /// The environment.
    pub env: u64,
    /// Its revision number within the environment, from 1.
    pub revision: u64,
    /// Why it exists.
    pub kind: DeploymentKind,
    /// The branch it was asked for, if any.
    pub branch: Option<String>,
    /// The commit.
    pub sha: String,
    /// What it runs, once its controller has read the pipeline file.
    pub release: Option<Release>,
    /// Where it is.
    pub status: DeploymentStatus,
    /// How far it is, in words ("2 of 4 instances updated").
    pub details: String,
    /// The revision it is rolling back to after a failure, if it is.
    pub reverting_to: Option<u64>,
    /// Whether a promotion was asked for (a blue-green set waiting for one).
    pub promoted: bool,
    /// The node driving it, and until when (a lease, as for CI jobs).
    pub controller: Option<NodeId>,
    /// The end of the controller's lease.
    pub lease_until_ms: Option<u64>,
    /// When it was asked for.
    pub created_ms: u64,
    /// When it started.
    pub started_ms: Option<u64>,
    /// When it finished.
    pub finished_ms: Option<u64>,
    /// What happened, oldest first (the last 200 events).
    pub events: Vec<DeployEvent>,
}

/// An instance's health, as its node's checks see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InstanceHealth {
    /// Started, not yet healthy.
    Starting,
    /// Passing its checks: it gets traffic (by its weight).
    Healthy,
    /// Failing its checks, or its process ended.
    Unhealthy,
    /// Taken out of traffic and stopped (or being stopped).
    Stopped,
}

/// One running copy of a release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstanceRecord {
    /// Its id, unique in the cluster.
    pub id: u64,
    /// The environment.
    pub env: u64,
    /// The revision it runs.
    pub revision: u64,
    /// The node it runs on.
    pub node: NodeId,
    /// The host its node serves instances on.
    pub host: String,
    /// Its port, once started.
    pub port: Option<u16>,
    /// Its process id, once started.
    pub pid: Option<u32>,
    /// Its health.
    pub health: InstanceHealth,
    /// Its share of traffic relative to the environment's other instances (0: none).
    pub weight: u32,
    /// Since when it has been healthy.
    pub healthy_since_ms: Option<u64>,
    /// Since when it has been out of traffic on its way out (in-flight requests finish).
    pub retiring_since_ms: Option<u64>,
    /// Why it is unhealthy or stopped.
    pub message: Option<String>,
    /// When it was created.
    pub created_ms: u64,
}

/// What an application router has counted for one instance since it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstanceTraffic {
    /// The instance.
    pub instance: u64,
    /// Requests passed to it.
    pub requests: u64,
    /// Of those, the ones it answered with a 5xx or did not answer.
    pub errors: u64,
    /// The sum of their durations, in milliseconds.
    pub latency_ms: u64,
}

impl InstanceTraffic {
    /// The counts from `earlier` to `self` (both of the same instance).
    pub fn since(&self, earlier: &InstanceTraffic) -> InstanceTraffic {
        InstanceTraffic {
            instance: self.instance,
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
            latency_ms: self.latency_ms.saturating_sub(earlier.latency_ms),
        }
    }
}

/// The kinds of deployment records that users name by id. Each kind has its own sequence, and
/// the API and the CLI show its ids with a prefix (`env-3`, `deploy-7`, `inst-12`) so that one
/// kind is never taken for another (issue 13, point 3). Records store the bare number; the
/// prefix exists only at the API and CLI boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    /// An environment: `env-N`.
    Environment,
    /// A deployment: `deploy-N`.
    Deployment,
    /// An instance: `inst-N`.
    Instance,
}

impl IdKind {
    const ALL: [IdKind; 3] = [IdKind::Environment, IdKind::Deployment, IdKind::Instance];

    /// The prefix of its ids, without the dash.
    pub fn prefix(self) -> &'static str {
        match self {
            IdKind::Environment => "env",
            IdKind::Deployment => "deploy",
            IdKind::Instance => "inst",
        }
    }

    /// What it is called in messages.
    pub fn noun(self) -> &'static str {
        match self {
            IdKind::Environment => "environment",
            IdKind::Deployment => "deployment",
            IdKind::Instance => "instance",
        }
    }

    /// The noun with its article: "an environment", "a deployment".
    fn a_noun(self) -> &'static str {
        match self {
            IdKind::Environment => "an environment",
            IdKind::Deployment => "a deployment",
            IdKind::Instance => "an instance",
        }
    }

    /// The id as users see it: `deploy-7`.
    pub fn format(self, id: u64) -> String {
        format!("{}-{id}", self.prefix())
    }

    /// An id as users write it: `deploy-7`, or the bare number `7` (the kind is known from
    /// where it is written). Another kind's id is refused with what it is.
    pub fn parse(self, text: &str) -> Result<u64, ApiError> {
        let text = text.trim();
        if let Ok(id) = text.parse::<u64>() {
            return Ok(id);
        }
        for kind in IdKind::ALL {
            let number = text.strip_prefix(kind.prefix()).and_then(|rest| rest.strip_prefix('-')).and_then(|n| n.parse::<u64>().ok());
            match number {
                Some(id) if kind == self => return Ok(id),
                Some(_) => return Err(ApiError::invalid(format!("{text} is {} id, not {} id", kind.a_noun(), self.a_noun()))),
                None => {}
            }
        }
        Err(ApiError::invalid(format!("{text:?} is not {} id: write {} or a number", self.a_noun(), self.format(7))))
    }
}

#[cfg(test)]
mod id_tests {
    use super::IdKind;

    #[test]
    fn ids_are_written_with_their_kind_and_read_with_or_without_it() {
        assert_eq!(IdKind::Deployment.format(7), "deploy-7");
        assert_eq!(IdKind::Deployment.parse("deploy-7").unwrap(), 7);
        assert_eq!(IdKind::Deployment.parse("7").unwrap(), 7);
        assert_eq!(IdKind::Environment.parse(" env-12 ").unwrap(), 12);
        let wrong = IdKind::Deployment.parse("inst-3").unwrap_err().to_string();
        assert!(wrong.contains("inst-3 is an instance id, not a deployment id"), "{wrong}");
        let garbage = IdKind::Instance.parse("deploy-x").unwrap_err().to_string();
        assert!(garbage.contains("write inst-7 or a number"), "{garbage}");
    }
}
