//! The CI part of the metadata: pipelines, their jobs, and repositories' CI variables.
//!
//! Jobs move through their statuses only here, so every replica agrees on them:
//! - a pipeline is created with its jobs `created`; [`CiState::advance`] queues each job once
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
use wharf_ci::PlannedJob;
use wharf_proto::{
    ApiError, ArtifactFile, JobRecord, JobStatus, NodeId, PipelineRecord, PipelineStatus, RepoId, TestReport, Variable,
};

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

/// Pipelines, jobs and variables, as applied.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CiState {
    pipelines: BTreeMap<u64, PipelineRecord>,
    jobs: BTreeMap<u64, JobRecord>,
    next_pipeline_id: u64,
    next_job_id: u64,
    /// Variables by repository id, then name.
    variables: BTreeMap<u64, BTreeMap<String, Variable>>,
}

type Outcome = Result<Option<PipelineRecord>, ApiError>;

impl CiState {
    /// Applies one command; returns the pipeline it changed, if any.
    pub fn apply(&mut self, command: CiCommand) -> Outcome {
        match command {
            CiCommand::CreatePipeline {
                repo,
                ref_name,
                sha,
                jobs,
                error,
                now_ms,
            } => Ok(Some(self.create_pipeline(repo, ref_name, sha, jobs, error, now_ms))),
            CiCommand::ClaimJob {
                job,
                node,
                now_ms,
                lease_ms,
            } => {
                let record = self.job_mut(job)?;
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
                let pipeline = record.pipeline;
                Ok(self.advance(pipeline, now_ms))
            }
            CiCommand::RenewLease {
                job,
                node,
                attempt,
                until_ms,
            } => {
                let record = self.held_by(job, node, attempt)?;
                record.lease_until_ms = Some(until_ms);
                Ok(None)
            }
            CiCommand::FinishJob {
                job,
                node,
                attempt,
                result,
                now_ms,
            } => {
                let record = self.job_mut(job)?;
                if record.status.is_finished() && record.attempt == attempt && record.node == Some(node) {
                    // A report proposed twice: the first one counted.
                    return Ok(None);
                }
                let record = self.held_by(job, node, attempt)?;
                finish(record, result, now_ms);
                let pipeline = record.pipeline;
                Ok(self.advance(pipeline, now_ms))
            }
            CiCommand::ExpireLeases { now_ms } => {
                let expired: Vec<u64> = self
                    .jobs
                    .values()
                    .filter(|j| j.status == JobStatus::Running && j.lease_until_ms.is_some_and(|until| until < now_ms))
                    .map(|j| j.id)
                    .collect();
                let mut pipelines = Vec::new();
                for id in expired {
                    let Some(record) = self.jobs.get_mut(&id) else { continue };
                    lose_runner(record, now_ms);
                    pipelines.push(record.pipeline);
                }
                for pipeline in pipelines {
                    self.advance(pipeline, now_ms);
                }
                Ok(None)
            }
            CiCommand::CancelPipeline { pipeline, now_ms } => {
                let ids = self.pipeline(pipeline)?.jobs.clone();
                for id in ids {
                    if let Some(record) = self.jobs.get_mut(&id).filter(|j| !j.status.is_finished()) {
                        record.status = JobStatus::Canceled;
                        record.finished_ms = Some(now_ms);
                        record.lease_until_ms = None;
                        record.message = Some("canceled".into());
                    }
                }
                Ok(self.advance(pipeline, now_ms))
            }
            CiCommand::RetryJob { job, now_ms } => {
                let record = self.job_mut(job)?;
                if !record.status.is_finished() {
                    return Err(ApiError::Conflict {
                        message: format!("job {job} is {:?}: only a finished job can be retried", record.status),
                    });
                }
                let (pipeline, name) = (record.pipeline, record.name.clone());
                reset(record);
                // What did not run because of this job may run after it now.
                for id in self.dependents(pipeline, &name) {
                    if let Some(record) = self.jobs.get_mut(&id) {
                        if matches!(record.status, JobStatus::Skipped | JobStatus::Canceled) {
                            reset(record);
                        }
                    }
                }
                Ok(self.advance(pipeline, now_ms))
            }
            CiCommand::SetVariable { repo, variable } => {
                self.variables.entry(repo.0).or_default().insert(variable.name.clone(), variable);
                Ok(None)
            }
            CiCommand::DeleteVariable { repo, name } => {
                let removed = self.variables.get_mut(&repo.0).and_then(|vars| vars.remove(&name));
                match removed {
                    Some(_) => Ok(None),
                    None => Err(ApiError::NotFound {
                        what: format!("variable {name}"),
                    }),
                }
            }
        }
    }

    fn create_pipeline(
        &mut self,
        repo: RepoId,
        ref_name: String,
        sha: String,
        jobs: Vec<PlannedJob>,
        error: Option<String>,
        now_ms: u64,
    ) -> PipelineRecord {
        let id = self.next_pipeline_id.max(1);
        self.next_pipeline_id = id + 1;
        let mut job_ids = Vec::with_capacity(jobs.len());
        for planned in jobs {
            let job = self.next_job_id.max(1);
            self.next_job_id = job + 1;
            self.jobs.insert(job, new_job(job, id, planned));
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
        self.pipelines.insert(id, record);
        self.advance(id, now_ms).expect("the pipeline was just inserted")
    }

    /// Queues and skips the pipeline's jobs as their needs allow, until nothing changes, and
    /// recomputes its status.
    fn advance(&mut self, pipeline: u64, now_ms: u64) -> Option<PipelineRecord> {
        let ids = self.pipelines.get(&pipeline)?.jobs.clone();
        loop {
            let jobs: Vec<&JobRecord> = ids.iter().filter_map(|id| self.jobs.get(id)).collect();
            let statuses: BTreeMap<String, JobStatus> = jobs.iter().map(|j| (j.name.clone(), j.status)).collect();
            let needs: BTreeMap<String, Vec<String>> = jobs.iter().map(|j| (j.name.clone(), j.needs.clone())).collect();
            let by_name: BTreeMap<String, u64> = jobs.iter().map(|j| (j.name.clone(), j.id)).collect();
            let steps = wharf_ci::schedule(&statuses, &needs);
            if steps.is_empty() {
                break;
            }
            for step in steps {
                let (name, status) = match step {
                    wharf_ci::Step::Start(name) => (name, JobStatus::Queued),
                    wharf_ci::Step::Skip(name) => (name, JobStatus::Skipped),
                };
                let Some(record) = by_name.get(&name).and_then(|id| self.jobs.get_mut(id)) else { continue };
                record.status = status;
                if status == JobStatus::Skipped {
                    record.finished_ms = Some(now_ms);
                }
            }
        }
        let statuses: BTreeMap<String, JobStatus> =
            ids.iter().filter_map(|id| self.jobs.get(id)).map(|j| (j.name.clone(), j.status)).collect();
        let record = self.pipelines.get_mut(&pipeline)?;
        if record.error.is_some() || statuses.is_empty() {
            return Some(record.clone());
        }
        record.status = wharf_ci::pipeline_status(&statuses);
        record.finished_ms = if statuses.values().all(|s| s.is_finished()) {
            Some(record.finished_ms.unwrap_or(now_ms))
        } else {
            None
        };
        Some(record.clone())
    }

    /// The jobs of `pipeline` that wait, directly or not, for the job called `name`.
    fn dependents(&self, pipeline: u64, name: &str) -> Vec<u64> {
        let jobs: Vec<&JobRecord> = self
            .pipelines
            .get(&pipeline)
            .map(|p| p.jobs.iter().filter_map(|id| self.jobs.get(id)).collect())
            .unwrap_or_default();
        let mut waiting: std::collections::BTreeSet<&str> = [name].into();
        let mut found = Vec::new();
        loop {
            let before = found.len();
            for job in &jobs {
                if !found.contains(&job.id) && job.needs.iter().any(|need| waiting.contains(need.as_str())) {
                    waiting.insert(&job.name);
                    found.push(job.id);
                }
            }
            if found.len() == before {
                return found;
            }
        }
    }

    fn job_mut(&mut self, job: u64) -> Result<&mut JobRecord, ApiError> {
        self.jobs.get_mut(&job).ok_or_else(|| ApiError::NotFound { what: format!("job {job}") })
    }

    fn pipeline(&self, pipeline: u64) -> Result<&PipelineRecord, ApiError> {
        self.pipelines.get(&pipeline).ok_or_else(|| ApiError::NotFound {
            what: format!("pipeline {pipeline}"),
        })
    }

    /// The job, if attempt `attempt` on `node` still holds it.
    fn held_by(&mut self, job: u64, node: NodeId, attempt: u32) -> Result<&mut JobRecord, ApiError> {
        let record = self.job_mut(job)?;
        if record.status != JobStatus::Running || record.node != Some(node) || record.attempt != attempt {
            return Err(ApiError::Conflict {
                message: format!("job {job} attempt {attempt} on node {node} no longer holds the job"),
            });
        }
        Ok(record)
    }

    /// Forgets a deleted repository's variables.
    pub fn forget_repo(&mut self, repo: RepoId) {
        self.variables.remove(&repo.0);
    }

    /// All pipelines of `repo`, newest first, at most `limit`.
    pub fn pipelines_of(&self, repo: RepoId, limit: usize) -> Vec<PipelineRecord> {
        self.pipelines.values().rev().filter(|p| p.repo == repo).take(limit).cloned().collect()
    }

    /// One pipeline.
    pub fn pipeline_record(&self, id: u64) -> Option<PipelineRecord> {
        self.pipelines.get(&id).cloned()
    }

    /// One job.
    pub fn job(&self, id: u64) -> Option<JobRecord> {
        self.jobs.get(&id).cloned()
    }

    /// Jobs with `status`, oldest first, at most `limit`.
    pub fn jobs_with(&self, status: JobStatus, limit: usize) -> Vec<JobRecord> {
        self.jobs.values().filter(|j| j.status == status).take(limit).cloned().collect()
    }

    /// A repository's variables.
    pub fn variables(&self, repo: RepoId) -> Vec<Variable> {
        self.variables.get(&repo.0).map(|vars| vars.values().cloned().collect()).unwrap_or_default()
    }
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
