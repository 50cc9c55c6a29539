//! Records the metadata store keeps and hands out through [`crate::Directory`].

use serde::{Deserialize, Serialize};

use crate::{NodeId, RepoId, RepoName};

/// Where a node is in its life in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Known to Raft, not yet given repositories.
    Joining,
    /// Takes part in placement.
    Active,
    /// Being emptied of repositories.
    Draining,
    /// Holds no repositories; may be stopped or removed.
    Drained,
    /// Missed its heartbeats.
    Down,
}

/// A member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeRecord {
    /// Its id (also its Raft id).
    pub id: NodeId,
    /// Its cluster address (`host:port`).
    pub addr: String,
    /// Its state.
    pub state: NodeState,
    /// Its placement weight: relative share of repositories (100 = the usual share).
    pub weight: u32,
    /// Where it serves `/metrics` (`host:port`), if it does: what the front's Prometheus
    /// service discovery (`/api/v1/cluster/metrics-targets`) lists. Absent in records written
    /// before nodes served metrics.
    #[serde(default)]
    pub metrics_addr: Option<String>,
}

/// A repository and where it lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RepoRecord {
    /// Its id; its directory on disk derives from it.
    pub id: RepoId,
    /// Its name.
    pub name: RepoName,
    /// The node that owns it: the only node that accepts writes to it.
    pub node: NodeId,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: u64,
}

/// One ref update of one push, as recorded in the metadata store. CI starts from these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PushEvent {
    /// Position in the repository's event list, from 1.
    pub seq: u64,
    /// The repository.
    pub repo: RepoId,
    /// The full ref name (`refs/heads/main`).
    pub ref_name: String,
    /// The ref's value before the push (`None` when the push created it).
    pub old: Option<String>,
    /// The ref's value after the push (`None` when the push deleted it).
    pub new: Option<String>,
    /// Who pushed.
    pub pusher: String,
    /// When, milliseconds since the Unix epoch.
    pub time_ms: u64,
}

/// Who a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Principal {
    /// The user name.
    pub user: String,
    /// Whether the user may do everything.
    pub admin: bool,
}

/// A process's part in the Raft group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RaftRole {
    /// The voter that leads.
    Leader,
    /// A voter that follows.
    Follower,
    /// A member that replicates the log without a vote (a new node, a front).
    Learner,
    /// Not in the group.
    None,
}

/// Where a CI job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Waiting for the jobs it depends on.
    Created,
    /// Ready, waiting for a runner slot.
    Queued,
    /// On a runner.
    Running,
    /// Its script succeeded.
    Passed,
    /// Its script failed.
    Failed,
    /// Stopped by a user, or never run because its pipeline was canceled.
    Canceled,
    /// Killed at its timeout.
    TimedOut,
    /// Never run because a job it depends on did not pass.
    Skipped,
}

impl JobStatus {
    /// Whether the job will not change any more (unless retried).
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobStatus::Passed | JobStatus::Failed | JobStatus::Canceled | JobStatus::TimedOut | JobStatus::Skipped
        )
    }
}

/// A pipeline's status, from its jobs'.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PipelineStatus {
    /// No job has started yet.
    Queued,
    /// Some job is queued or running, or waiting for others.
    Running,
    /// Every job passed.
    Passed,
    /// Every job finished and one failed or timed out; or the file was refused.
    Failed,
    /// Every job finished and the pipeline was canceled.
    Canceled,
}

/// One run of a repository's pipeline file for one pushed commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PipelineRecord {
    /// Its id, unique in the cluster.
    pub id: u64,
    /// The repository.
    pub repo: RepoId,
    /// The full ref pushed (`refs/heads/main`).
    pub ref_name: String,
    /// The commit it runs.
    pub sha: String,
    /// Its status.
    pub status: PipelineStatus,
    /// Why the file was refused (line and reason), when it was.
    pub error: Option<String>,
    /// When it was created, milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// When it finished.
    pub finished_ms: Option<u64>,
    /// Its jobs' ids, in stage order.
    pub jobs: Vec<u64>,
}

/// One job of a pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobRecord {
    /// Its id, unique in the cluster.
    pub id: u64,
    /// Its pipeline.
    pub pipeline: u64,
    /// Its name in the file.
    pub name: String,
    /// Its stage.
    pub stage: String,
    /// Its status.
    pub status: JobStatus,
    /// The node that runs or ran it.
    pub node: Option<NodeId>,
    /// When it started.
    pub started_ms: Option<u64>,
    /// When it finished.
    pub finished_ms: Option<u64>,
    /// Its exit code, when its script ran to the end.
    pub exit_code: Option<i32>,
    /// Its coverage percentage, from the file's pattern over the log or its Cobertura report.
    pub coverage: Option<f64>,
    /// The jobs of its pipeline it waits for: its `needs`, or every job of earlier stages.
    #[serde(default)]
    pub needs: Vec<String>,
    /// Automatic retries it has left after a failure, a timeout or a lost runner.
    #[serde(default)]
    pub retries_left: u32,
    /// How many times a runner has taken it; names the attempt that runs now.
    #[serde(default)]
    pub attempt: u32,
    /// Until when its runner holds it (ms since the epoch). A runner renews its lease while
    /// the job runs; a lease that runs out means the runner is gone.
    #[serde(default)]
    pub lease_until_ms: Option<u64>,
    /// Why it ended as it did, when the script did not say: canceled, runner lost, and so on.
    #[serde(default)]
    pub message: Option<String>,
    /// Its JUnit report, when the file names one and the job wrote it.
    #[serde(default)]
    pub tests: Option<TestReport>,
    /// The files it kept, relative to its workspace.
    #[serde(default)]
    pub artifacts: Vec<ArtifactFile>,
    /// When its artifacts are deleted (ms since the epoch).
    #[serde(default)]
    pub artifacts_expire_ms: Option<u64>,
}

/// Test counts from a JUnit report.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TestReport {
    /// Cases that passed.
    pub passed: u64,
    /// Cases that failed or erred.
    pub failed: u64,
    /// Cases skipped.
    pub skipped: u64,
    /// The sum of the cases' times.
    pub duration_ms: u64,
    /// The failed cases (the first hundred).
    pub failures: Vec<TestFailure>,
}

/// One failed test case.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TestFailure {
    /// Its test suite's name.
    pub suite: String,
    /// Its class name.
    pub class: String,
    /// Its name.
    pub name: String,
    /// The failure's message (at most 1,000 bytes).
    pub message: String,
}

/// One file a job kept as an artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ArtifactFile {
    /// Its path relative to the job's workspace, with `/` separators.
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
}

/// A CI variable set on a repository through the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Variable {
    /// Its name, as jobs see it in their environment.
    pub name: String,
    /// Its value.
    pub value: String,
    /// Whether its value is masked in logs and hidden from the API.
    pub secret: bool,
}
