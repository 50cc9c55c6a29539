//! The CI records of the metadata: pipelines, their jobs, and repositories' CI variables,
//! with the commands that change them and [`apply`], over typed key spaces ([`keys`]) of a
//! [`RecordsMut`] store. `wharf-meta` runs [`apply`] inside its Raft state machine, on sled;
//! the tests here run it on [`wharf_proto::store::MemRecords`].
//!
//! Jobs move through their statuses only here, so every replica agrees on them:
//! - a pipeline is created with its jobs `created`; [`apply`] queues each job once
//!   everything it needs has passed, and skips it once one of those did not pass;
//! - a runner on any node takes a queued job with [`CiCommand::ClaimJob`], which gives it a
//!   lease; it renews the lease while the job runs and reports the end with
//!   [`CiCommand::FinishJob`], naming the attempt it ran, so a late report of a lost attempt
//!   changes nothing and no job is counted twice;
//! - a lease that runs out (its runner died or was cut off) is found by the Raft leader,
//!   which proposes [`CiCommand::ExpireLeases`]: the job goes back to the queue for another
//!   runner, or fails once it has lost [`MAX_LOST_RUNNERS`] runners.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use wharf_proto::store::{Order, Records, RecordsMut, Sequence};
use wharf_proto::{
    ApiError, ArtifactFile, JobRecord, JobStatus, NodeId, PipelineRecord, PipelineStatus, RepoId, TestReport, Variable,
};

use crate::PlannedJob;

/// How many runners a job may lose (a lease that ran out) before it fails instead of being
/// queued again: a job that kills its runner every time must not loop forever.
pub const MAX_LOST_RUNNERS: u32 = 3;

/// A change to pipelines, jobs or variables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CiCommand {
    /// Start a pipeline for a pushed commit with `jobs`, or record the reason its file was
    /// refused (then it fails at once and has no jobs).
    CreatePipeline {
        /// The repository.
        repo: RepoId,
        /// The ref pushed.
        ref_name: String,
        /// The commit.
        sha: String,
        /// Its jobs, in stage order.
        jobs: Vec<PlannedJob>,
        /// Why the file was refused.
        error: Option<String>,
        /// When.
        now_ms: u64,
    },
    /// A runner on `node` takes a queued job until `now_ms + lease_ms`.
    ClaimJob {
        /// The job.
        job: u64,
        /// The runner's node.
        node: NodeId,
        /// When.
        now_ms: u64,
        /// How long the lease lasts unless renewed.
        lease_ms: u64,
    },
    /// The runner of attempt `attempt` still holds the job, until `until_ms`.
    RenewLease {
        /// The job.
        job: u64,
        /// The runner's node.
        node: NodeId,
        /// The attempt it runs.
        attempt: u32,
        /// The new end of the lease.
        until_ms: u64,
    },
    /// The runner of attempt `attempt` reports how the job ended.
    FinishJob {
        /// The job.
        job: u64,
        /// The runner's node.
        node: NodeId,
        /// The attempt it ran.
        attempt: u32,
        /// How it ended.
        result: JobResult,
        /// When.
        now_ms: u64,
    },
    /// Take back every job whose lease ended before `now_ms`.
    ExpireLeases {
        /// The leader's clock.
        now_ms: u64,
    },
    /// Cancel every job of a pipeline that has not finished.
    CancelPipeline {
        /// The pipeline.
        pipeline: u64,
        /// When.
        now_ms: u64,
    },
    /// Run a finished job again, and the jobs after it that did not run because of it.
    RetryJob {
        /// The job.
        job: u64,
        /// When.
        now_ms: u64,
    },
    /// Set (add or replace) a repository's variable.
    SetVariable {
        /// The repository.
        repo: RepoId,
        /// The variable.
        variable: Variable,
    },
    /// Remove a repository's variable.
    DeleteVariable {
        /// The repository.
        repo: RepoId,
        /// Its name.
        name: String,
    },
}

impl CiCommand {
    /// Whether applying the command twice has the effect of applying it once.
    pub fn is_idempotent(&self) -> bool {
        matches!(
            self,
            CiCommand::RenewLease { .. }
                | CiCommand::FinishJob { .. }
                | CiCommand::ExpireLeases { .. }
                | CiCommand::CancelPipeline { .. }
                | CiCommand::SetVariable { .. }
                | CiCommand::DeleteVariable { .. }
        )
    }
}

/// How a job's attempt ended, as its runner saw it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct JobResult {
    /// Passed, failed, timed out or canceled.
    pub status: Option<JobStatus>,
    /// Its script's exit code, when it ran to the end.
    pub exit_code: Option<i32>,
    /// Its coverage.
    pub coverage: Option<f64>,
    /// Its JUnit report.
    pub tests: Option<TestReport>,
    /// The files it kept.
    pub artifacts: Vec<ArtifactFile>,
    /// When they are deleted.
    pub artifacts_expire_ms: Option<u64>,
    /// Why it ended so, when the script did not say.
    pub message: Option<String>,
}

/// Where the CI records live in the metadata store.
pub mod keys {
    use wharf_proto::store::KeySpace;
    use wharf_proto::{JobRecord, PipelineRecord, Variable};

    /// Pipelines by id.
    pub const PIPELINES: KeySpace<u64, PipelineRecord> = KeySpace::new(0x20, "ci.pipelines");
    /// Index: `(repository, pipeline)`, so a repository's pipelines list newest first.
    pub const PIPELINES_BY_REPO: KeySpace<(u64, u64), ()> = KeySpace::new(0x21, "ci.pipelines_by_repo");
    /// Jobs by id.
    pub const JOBS: KeySpace<u64, JobRecord> = KeySpace::new(0x22, "ci.jobs");
    /// Index: `(status, job)`, so runners find queued jobs and the leader running ones
    /// without reading every job.
    pub const JOBS_BY_STATUS: KeySpace<(u8, u64), ()> = KeySpace::new(0x23, "ci.jobs_by_status");
    /// Variables by `(repository, name)`.
    pub const VARIABLES: KeySpace<(u64, String), Variable> = KeySpace::new(0x24, "ci.variables");
    /// The next pipeline and job ids.
    pub const SEQUENCES: KeySpace<String, u64> = KeySpace::new(0x25, "ci.sequences");

    /// Every key space of this crate: prefix and name.
    pub const ALL: &[(u8, &str)] = &[
        (PIPELINES.prefix, PIPELINES.name),
        (PIPELINES_BY_REPO.prefix, PIPELINES_BY_REPO.name),
        (JOBS.prefix, JOBS.name),
        (JOBS_BY_STATUS.prefix, JOBS_BY_STATUS.name),
        (VARIABLES.prefix, VARIABLES.name),
        (SEQUENCES.prefix, SEQUENCES.name),
    ];
}

use keys::{JOBS, JOBS_BY_STATUS, PIPELINES, PIPELINES_BY_REPO, SEQUENCES, VARIABLES};

const PIPELINE_IDS: Sequence = Sequence(SEQUENCES, "pipeline");
const JOB_IDS: Sequence = Sequence(SEQUENCES, "job");

type Outcome = Result<Option<PipelineRecord>, ApiError>;

/// Applies one command to the CI records in `store`; returns the pipeline it changed, if any.
pub fn apply(store: &mut dyn RecordsMut, command: CiCommand) -> Outcome {
    match command {
        CiCommand::CreatePipeline {
            repo,
            ref_name,
            sha,
            jobs,
            error,
            now_ms,
        } => Ok(Some(create_pipeline(store, repo, ref_name, sha, jobs, error, now_ms))),
        CiCommand::ClaimJob {
            job,
            node,
            now_ms,
            lease_ms,
        } => {
            let mut record = job_of(store, job)?;
            if record.status != JobStatus::Queued {
                return Err(ApiError::Conflict {
                    message: format!("job {job} is {:?}, not queued", record.status),
                });
            }
            record.status = JobStatus::Running;
            record.node = Some(node);
            record.attempt += 1;
            record.started_ms = Some(now_ms);
            record.lease_until_ms = Some(now_ms + lease_ms);
            record.message = None;
            save_job(store, &record);
            Ok(advance(store, record.pipeline, now_ms))
        }
        CiCommand::RenewLease {
            job,
            node,
            attempt,
            until_ms,
        } => {
            let mut record = held_by(store, job, node, attempt)?;
            record.lease_until_ms = Some(until_ms);
            save_job(store, &record);
            Ok(None)
        }
        CiCommand::FinishJob {
            job,
            node,
            attempt,
            result,
            now_ms,
        } => {
            let record = job_of(store, job)?;
            if record.status.is_finished() && record.attempt == attempt && record.node == Some(node) {
                // A report proposed twice: the first one counted.
                return Ok(None);
            }
            let mut record = held_by(store, job, node, attempt)?;
            finish(&mut record, result, now_ms);
            save_job(store, &record);
            Ok(advance(store, record.pipeline, now_ms))
        }
        CiCommand::ExpireLeases { now_ms } => {
            let expired: Vec<JobRecord> = jobs_with(store, JobStatus::Running, usize::MAX)
                .into_iter()
                .filter(|j| j.lease_until_ms.is_some_and(|until| until < now_ms))
                .collect();
            for mut record in expired {
                lose_runner(&mut record, now_ms);
                save_job(store, &record);
                advance(store, record.pipeline, now_ms);
            }
            Ok(None)
        }
        CiCommand::CancelPipeline { pipeline, now_ms } => {
            for mut record in jobs_of(store, &pipeline_of(store, pipeline)?) {
                if !record.status.is_finished() {
                    record.status = JobStatus::Canceled;
                    record.finished_ms = Some(now_ms);
                    record.lease_until_ms = None;
                    record.message = Some("canceled".into());
                    save_job(store, &record);
                }
            }
            Ok(advance(store, pipeline, now_ms))
        }
        CiCommand::RetryJob { job, now_ms } => {
            let mut record = job_of(store, job)?;
            if !record.status.is_finished() {
                return Err(ApiError::Conflict {
                    message: format!("job {job} is {:?}: only a finished job can be retried", record.status),
                });
            }
            reset(&mut record);
            save_job(store, &record);
            // What did not run because of this job may run after it now.
            let pipeline = pipeline_of(store, record.pipeline)?;
            for mut dependent in dependents(&jobs_of(store, &pipeline), &record.name) {
                if matches!(dependent.status, JobStatus::Skipped | JobStatus::Canceled) {
                    reset(&mut dependent);
                    save_job(store, &dependent);
                }
            }
            Ok(advance(store, record.pipeline, now_ms))
        }
        CiCommand::SetVariable { repo, variable } => {
            VARIABLES.put(store, &(repo.0, variable.name.clone()), &variable);
            Ok(None)
        }
        CiCommand::DeleteVariable { repo, name } => {
            let key = (repo.0, name);
            if !VARIABLES.contains(store, &key) {
                return Err(ApiError::NotFound {
                    what: format!("variable {}", key.1),
                });
            }
            VARIABLES.remove(store, &key);
            Ok(None)
        }
    }
}

fn create_pipeline(
    store: &mut dyn RecordsMut,
    repo: RepoId,
    ref_name: String,
    sha: String,
    jobs: Vec<PlannedJob>,
    error: Option<String>,
    now_ms: u64,
) -> PipelineRecord {
    let id = PIPELINE_IDS.next(store);
    let mut job_ids = Vec::with_capacity(jobs.len());
    for planned in jobs {
        let job = JOB_IDS.next(store);
        save_job(store, &new_job(job, id, planned));
        job_ids.push(job);
    }
    let failed = error.is_some() || job_ids.is_empty();
    let record = PipelineRecord {
        id,
        repo,
        ref_name,
        sha,
        status: if failed { PipelineStatus::Failed } else { PipelineStatus::Queued },
        error,
        created_ms: now_ms,
        finished_ms: failed.then_some(now_ms),
        jobs: job_ids,
    };
    PIPELINES.put(store, &id, &record);
    PIPELINES_BY_REPO.put(store, &(repo.0, id), &());
    advance(store, id, now_ms).unwrap_or(record)
}

/// Queues and skips the pipeline's jobs as their needs allow, until nothing changes, and
/// recomputes its status.
fn advance(store: &mut dyn RecordsMut, pipeline: u64, now_ms: u64) -> Option<PipelineRecord> {
    let mut record = PIPELINES.get(store, &pipeline)?;
    let mut jobs = jobs_of(store, &record);
    loop {
        let statuses: BTreeMap<String, JobStatus> = jobs.iter().map(|j| (j.name.clone(), j.status)).collect();
        let needs: BTreeMap<String, Vec<String>> = jobs.iter().map(|j| (j.name.clone(), j.needs.clone())).collect();
        let steps = crate::schedule(&statuses, &needs);
        if steps.is_empty() {
            break;
        }
        for step in steps {
            let (name, status) = match step {
                crate::Step::Start(name) => (name, JobStatus::Queued),
                crate::Step::Skip(name) => (name, JobStatus::Skipped),
            };
            let Some(job) = jobs.iter_mut().find(|j| j.name == name) else { continue };
            job.status = status;
            if status == JobStatus::Skipped {
                job.finished_ms = Some(now_ms);
            }
            save_job(store, job);
        }
    }
    if record.error.is_some() || jobs.is_empty() {
        return Some(record);
    }
    let statuses: BTreeMap<String, JobStatus> = jobs.iter().map(|j| (j.name.clone(), j.status)).collect();
    record.status = crate::pipeline_status(&statuses);
    record.finished_ms = if statuses.values().all(|s| s.is_finished()) {
        Some(record.finished_ms.unwrap_or(now_ms))
    } else {
        None
    };
    PIPELINES.put(store, &pipeline, &record);
    Some(record)
}

/// The jobs of `jobs` that wait, directly or not, for the job called `name`.
fn dependents(jobs: &[JobRecord], name: &str) -> Vec<JobRecord> {
    let mut waiting: std::collections::BTreeSet<&str> = [name].into();
    let mut found: Vec<&JobRecord> = Vec::new();
    loop {
        let before = found.len();
        for job in jobs {
            if !found.iter().any(|f| f.id == job.id) && job.needs.iter().any(|need| waiting.contains(need.as_str())) {
                waiting.insert(&job.name);
                found.push(job);
            }
        }
        if found.len() == before {
            return found.into_iter().cloned().collect();
        }
    }
}

/// Writes a job and keeps the status index in step.
fn save_job(store: &mut dyn RecordsMut, job: &JobRecord) {
    if let Some(old) = JOBS.get(store, &job.id).filter(|old| old.status != job.status) {
        JOBS_BY_STATUS.remove(store, &(status_key(old.status), job.id));
    }
    JOBS_BY_STATUS.put(store, &(status_key(job.status), job.id), &());
    JOBS.put(store, &job.id, job);
}

/// The byte a status sorts under in [`keys::JOBS_BY_STATUS`]. Stored: never renumber.
fn status_key(status: JobStatus) -> u8 {
    match status {
        JobStatus::Created => 1,
        JobStatus::Queued => 2,
        JobStatus::Running => 3,
        JobStatus::Passed => 4,
        JobStatus::Failed => 5,
        JobStatus::Canceled => 6,
        JobStatus::TimedOut => 7,
        JobStatus::Skipped => 8,
    }
}

fn job_of(store: &dyn Records, job: u64) -> Result<JobRecord, ApiError> {
    JOBS.get(store, &job).ok_or_else(|| ApiError::NotFound { what: format!("job {job}") })
}

fn pipeline_of(store: &dyn Records, pipeline: u64) -> Result<PipelineRecord, ApiError> {
    PIPELINES.get(store, &pipeline).ok_or_else(|| ApiError::NotFound {
        what: format!("pipeline {pipeline}"),
    })
}

fn jobs_of(store: &dyn Records, pipeline: &PipelineRecord) -> Vec<JobRecord> {
    pipeline.jobs.iter().filter_map(|id| JOBS.get(store, id)).collect()
}

/// The job, if attempt `attempt` on `node` still holds it.
fn held_by(store: &dyn Records, job: u64, node: NodeId, attempt: u32) -> Result<JobRecord, ApiError> {
    let record = job_of(store, job)?;
    if record.status != JobStatus::Running || record.node != Some(node) || record.attempt != attempt {
        return Err(ApiError::Conflict {
            message: format!("job {job} attempt {attempt} on node {node} no longer holds the job"),
        });
    }
    Ok(record)
}

/// Forgets a deleted repository's variables, pipelines and jobs. A job still running loses
/// its lease with its record, so its runner stops it; the nodes delete the logs and artifacts
/// of jobs whose records are gone.
pub fn forget_repo(store: &mut dyn RecordsMut, repo: RepoId) {
    for key in VARIABLES.keys(store, &repo.0) {
        VARIABLES.remove(store, &key);
    }
    for (repo_and_pipeline, ()) in PIPELINES_BY_REPO.scan(store, &repo.0, Order::Ascending, usize::MAX) {
        let (_, pipeline) = repo_and_pipeline;
        if let Some(record) = PIPELINES.get(store, &pipeline) {
            for job in jobs_of(store, &record) {
                JOBS_BY_STATUS.remove(store, &(status_key(job.status), job.id));
                JOBS.remove(store, &job.id);
            }
        }
        PIPELINES.remove(store, &pipeline);
        PIPELINES_BY_REPO.remove(store, &repo_and_pipeline);
    }
}

/// The pipelines of `repo`, newest first, at most `limit`.
pub fn pipelines_of(store: &dyn Records, repo: RepoId, limit: usize) -> Vec<PipelineRecord> {
    PIPELINES_BY_REPO
        .scan(store, &repo.0, Order::Descending, limit)
        .into_iter()
        .filter_map(|((_, id), ())| PIPELINES.get(store, &id))
        .collect()
}

/// One pipeline.
pub fn pipeline(store: &dyn Records, id: u64) -> Option<PipelineRecord> {
    PIPELINES.get(store, &id)
}

/// One job.
pub fn job(store: &dyn Records, id: u64) -> Option<JobRecord> {
    JOBS.get(store, &id)
}

/// Jobs with `status`, oldest first, at most `limit`.
pub fn jobs_with(store: &dyn Records, status: JobStatus, limit: usize) -> Vec<JobRecord> {
    JOBS_BY_STATUS
        .scan(store, &status_key(status), Order::Ascending, limit)
        .into_iter()
        .filter_map(|((_, id), ())| JOBS.get(store, &id))
        .collect()
}

/// A repository's variables, by name.
pub fn variables(store: &dyn Records, repo: RepoId) -> Vec<Variable> {
    VARIABLES.scan(store, &repo.0, Order::Ascending, usize::MAX).into_iter().map(|(_, v)| v).collect()
}

/// Imports records written by an older Wharf (a data directory being migrated): pipelines,
/// jobs and variables as they were, with the id sequences set past them.
pub fn import(
    store: &mut dyn RecordsMut,
    pipelines: impl IntoIterator<Item = PipelineRecord>,
    jobs: impl IntoIterator<Item = JobRecord>,
    variables: impl IntoIterator<Item = (RepoId, Variable)>,
    next_pipeline_id: u64,
    next_job_id: u64,
) {
    for record in pipelines {
        PIPELINES_BY_REPO.put(store, &(record.repo.0, record.id), &());
        PIPELINES.put(store, &record.id, &record);
    }
    for record in jobs {
        save_job(store, &record);
    }
    for (repo, variable) in variables {
        VARIABLES.put(store, &(repo.0, variable.name.clone()), &variable);
    }
    PIPELINE_IDS.raise_to(store, next_pipeline_id);
    JOB_IDS.raise_to(store, next_job_id);
}

fn new_job(id: u64, pipeline: u64, planned: PlannedJob) -> JobRecord {
    JobRecord {
        id,
        pipeline,
        name: planned.name,
        stage: planned.stage,
        status: JobStatus::Created,
        node: None,
        started_ms: None,
        finished_ms: None,
        exit_code: None,
        coverage: None,
        needs: planned.needs,
        retries_left: planned.retries,
        attempt: 0,
        lease_until_ms: None,
        message: None,
        tests: None,
        artifacts: Vec::new(),
        artifacts_expire_ms: None,
    }
}

/// Records the end of the running attempt; a failure with retries left queues it again.
fn finish(record: &mut JobRecord, result: JobResult, now_ms: u64) {
    let status = result.status.unwrap_or(JobStatus::Failed);
    record.lease_until_ms = None;
    record.exit_code = result.exit_code;
    record.coverage = result.coverage;
    record.tests = result.tests;
    record.artifacts = result.artifacts;
    record.artifacts_expire_ms = result.artifacts_expire_ms;
    record.message = result.message;
    if matches!(status, JobStatus::Failed | JobStatus::TimedOut) && record.retries_left > 0 {
        record.retries_left -= 1;
        record.status = JobStatus::Queued;
        record.message = Some(format!("attempt {} {status:?}; retrying", record.attempt).to_lowercase());
        return;
    }
    record.status = status;
    record.finished_ms = Some(now_ms);
}

/// The job's runner is gone: queue it for another, unless it has lost too many.
fn lose_runner(record: &mut JobRecord, now_ms: u64) {
    let node = record.node.map(|n| n.to_string()).unwrap_or_default();
    record.lease_until_ms = None;
    if record.attempt >= MAX_LOST_RUNNERS {
        record.status = JobStatus::Failed;
        record.finished_ms = Some(now_ms);
        record.message = Some(format!("the runner on node {node} was lost, {} runners in all", record.attempt));
    } else {
        record.status = JobStatus::Queued;
        record.message = Some(format!("the runner on node {node} was lost; queued again"));
    }
}

/// Makes a finished job wait to run again.
fn reset(record: &mut JobRecord) {
    record.status = JobStatus::Created;
    record.finished_ms = None;
    record.exit_code = None;
    record.coverage = None;
    record.tests = None;
    record.message = None;
    record.lease_until_ms = None;
}

#[cfg(test)]
mod tests {
    use super::*;
    use wharf_proto::store::MemRecords;

    /// The CI records of a store, as the tests read them.
    #[derive(Default)]
    struct CiState(MemRecords);

    impl CiState {
        fn apply(&mut self, command: CiCommand) -> Outcome {
            super::apply(&mut self.0, command)
        }

        fn job(&self, id: u64) -> Option<JobRecord> {
            super::job(&self.0, id)
        }

        fn pipeline_record(&self, id: u64) -> Option<PipelineRecord> {
            super::pipeline(&self.0, id)
        }

        fn variables(&self, repo: RepoId) -> Vec<Variable> {
            super::variables(&self.0, repo)
        }
    }

    fn planned(name: &str, stage: &str, needs: &[&str], retries: u32) -> PlannedJob {
        PlannedJob {
            name: name.into(),
            stage: stage.into(),
            needs: needs.iter().map(|s| s.to_string()).collect(),
            retries,
        }
    }

    fn pipeline(state: &mut CiState, jobs: Vec<PlannedJob>) -> PipelineRecord {
        state
            .apply(CiCommand::CreatePipeline {
                repo: RepoId(1),
                ref_name: "refs/heads/main".into(),
                sha: "abc".into(),
                jobs,
                error: None,
                now_ms: 1,
            })
            .unwrap()
            .unwrap()
    }

    fn status(state: &CiState, job: u64) -> JobStatus {
        state.job(job).unwrap().status
    }

    fn claim(state: &mut CiState, job: u64, node: u64, now_ms: u64) -> Outcome {
        state.apply(CiCommand::ClaimJob {
            job,
            node: NodeId(node),
            now_ms,
            lease_ms: 100,
        })
    }

    fn finish_with(state: &mut CiState, job: u64, node: u64, attempt: u32, status: JobStatus) -> Outcome {
        state.apply(CiCommand::FinishJob {
            job,
            node: NodeId(node),
            attempt,
            result: JobResult {
                status: Some(status),
                ..JobResult::default()
            },
            now_ms: 50,
        })
    }

    #[test]
    fn jobs_are_queued_when_their_needs_pass_and_skipped_when_one_fails() {
        let mut state = CiState::default();
        let record = pipeline(
            &mut state,
            vec![planned("build", "build", &[], 0), planned("unit", "test", &["build"], 0), planned("ship", "deploy", &["unit"], 0)],
        );
        let [build, unit, ship] = [record.jobs[0], record.jobs[1], record.jobs[2]];
        assert_eq!(status(&state, build), JobStatus::Queued);
        assert_eq!(status(&state, unit), JobStatus::Created);
        claim(&mut state, build, 1, 2).unwrap();
        assert!(claim(&mut state, build, 2, 3).is_err(), "a running job cannot be claimed twice");
        let done = finish_with(&mut state, build, 1, 1, JobStatus::Passed).unwrap().unwrap();
        assert_eq!(done.status, PipelineStatus::Running);
        assert_eq!(status(&state, unit), JobStatus::Queued);
        claim(&mut state, unit, 2, 4).unwrap();
        let done = finish_with(&mut state, unit, 2, 1, JobStatus::Failed).unwrap().unwrap();
        assert_eq!(status(&state, ship), JobStatus::Skipped);
        assert_eq!(done.status, PipelineStatus::Failed);
        assert!(done.finished_ms.is_some());
    }

    #[test]
    fn a_lost_runner_requeues_the_job_and_its_late_report_counts_for_nothing() {
        let mut state = CiState::default();
        let record = pipeline(&mut state, vec![planned("build", "build", &[], 0)]);
        let job = record.jobs[0];
        claim(&mut state, job, 1, 10).unwrap();
        state.apply(CiCommand::ExpireLeases { now_ms: 50 }).unwrap();
        assert_eq!(status(&state, job), JobStatus::Running, "the lease still runs");
        state.apply(CiCommand::ExpireLeases { now_ms: 200 }).unwrap();
        assert_eq!(status(&state, job), JobStatus::Queued);
        claim(&mut state, job, 2, 210).unwrap();
        assert!(finish_with(&mut state, job, 1, 1, JobStatus::Passed).is_err(), "the lost runner's report is refused");
        assert_eq!(status(&state, job), JobStatus::Running);
        finish_with(&mut state, job, 2, 2, JobStatus::Passed).unwrap();
        assert!(finish_with(&mut state, job, 2, 2, JobStatus::Passed).unwrap().is_none(), "a repeated report is a no-op");
        assert_eq!(state.job(job).unwrap().node, Some(NodeId(2)));
        assert_eq!(state.pipeline_record(record.id).unwrap().status, PipelineStatus::Passed);
    }

    #[test]
    fn a_job_that_keeps_losing_its_runner_fails() {
        let mut state = CiState::default();
        let job = pipeline(&mut state, vec![planned("build", "build", &[], 0)]).jobs[0];
        for round in 0..MAX_LOST_RUNNERS as u64 {
            claim(&mut state, job, 1, round * 1000).unwrap();
            state.apply(CiCommand::ExpireLeases { now_ms: round * 1000 + 500 }).unwrap();
        }
        let record = state.job(job).unwrap();
        assert_eq!(record.status, JobStatus::Failed);
        assert!(record.message.unwrap().contains("lost"));
    }

    #[test]
    fn failures_use_retries_then_fail() {
        let mut state = CiState::default();
        let job = pipeline(&mut state, vec![planned("flaky", "test", &[], 1)]).jobs[0];
        claim(&mut state, job, 1, 1).unwrap();
        finish_with(&mut state, job, 1, 1, JobStatus::Failed).unwrap();
        assert_eq!(status(&state, job), JobStatus::Queued, "one retry left");
        claim(&mut state, job, 1, 2).unwrap();
        finish_with(&mut state, job, 1, 2, JobStatus::TimedOut).unwrap();
        assert_eq!(status(&state, job), JobStatus::TimedOut);
    }

    #[test]
    fn cancel_stops_everything_unfinished_and_retry_brings_back_what_followed() {
        let mut state = CiState::default();
        let record = pipeline(
            &mut state,
            vec![planned("build", "build", &[], 0), planned("lint", "build", &[], 0), planned("unit", "test", &["build"], 0)],
        );
        let [build, lint, unit] = [record.jobs[0], record.jobs[1], record.jobs[2]];
        claim(&mut state, build, 1, 1).unwrap();
        let canceled = state
            .apply(CiCommand::CancelPipeline {
                pipeline: record.id,
                now_ms: 5,
            })
            .unwrap()
            .unwrap();
        assert_eq!(canceled.status, PipelineStatus::Canceled);
        assert_eq!(status(&state, unit), JobStatus::Canceled);
        finish_with(&mut state, build, 1, 1, JobStatus::Passed).unwrap();
        assert_eq!(status(&state, build), JobStatus::Canceled, "the runner's late report changes nothing");
        let retried = state.apply(CiCommand::RetryJob { job: build, now_ms: 6 }).unwrap().unwrap();
        assert_eq!(retried.status, PipelineStatus::Running);
        assert!(retried.finished_ms.is_none());
        assert_eq!(status(&state, build), JobStatus::Queued);
        assert_eq!(status(&state, unit), JobStatus::Created, "what waits for the retried job runs again");
        assert_eq!(status(&state, lint), JobStatus::Canceled, "what does not wait for it stays as it was");
        claim(&mut state, build, 2, 7).unwrap();
        assert_eq!(state.job(build).unwrap().attempt, 2);
        assert!(state.apply(CiCommand::RetryJob { job: build, now_ms: 8 }).is_err(), "a running job is not retried");
    }

    #[test]
    fn variables_are_set_replaced_and_deleted() {
        let mut state = CiState::default();
        let variable = |value: &str| Variable {
            name: "TOKEN".into(),
            value: value.into(),
            secret: true,
        };
        state.apply(CiCommand::SetVariable { repo: RepoId(1), variable: variable("a") }).unwrap();
        state.apply(CiCommand::SetVariable { repo: RepoId(1), variable: variable("b") }).unwrap();
        assert_eq!(state.variables(RepoId(1)), [variable("b")]);
        assert!(state.variables(RepoId(2)).is_empty());
        state.apply(CiCommand::DeleteVariable { repo: RepoId(1), name: "TOKEN".into() }).unwrap();
        assert!(state.apply(CiCommand::DeleteVariable { repo: RepoId(1), name: "TOKEN".into() }).is_err());
    }
}
