//! Which jobs of a running pipeline start next, which can no longer run, and what the
//! pipeline's status is: decided from the jobs' statuses alone, so every node decides alike.

use std::collections::BTreeMap;

pub use wharf_proto::{JobStatus, PipelineStatus};


/// What to do with one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Everything it depends on passed: queue it.
    Start(String),
    /// Something it depends on did not pass: it will not run.
    Skip(String),
}

/// The next steps for the jobs in `statuses` (the jobs of this run, by name), each waiting for
/// the jobs `needs` names (see [`crate::Pipeline::plan`]).
pub fn schedule(statuses: &BTreeMap<String, JobStatus>, needs: &BTreeMap<String, Vec<String>>) -> Vec<Step> {
    let mut steps = Vec::new();
    for (name, status) in statuses {
        if *status != JobStatus::Created {
            continue;
        }
        let dependencies = needs.get(name).map(Vec::as_slice).unwrap_or_default();
        let status_of = |dependency: &String| statuses.get(dependency).copied().unwrap_or(JobStatus::Created);
        if dependencies.iter().all(|d| status_of(d) == JobStatus::Passed) {
            steps.push(Step::Start(name.clone()));
        } else if dependencies.iter().any(|d| status_of(d).is_finished() && status_of(d) != JobStatus::Passed) {
            steps.push(Step::Skip(name.clone()));
        }
    }
    steps
}

/// The status of a pipeline whose jobs have `statuses`.
pub fn pipeline_status(statuses: &BTreeMap<String, JobStatus>) -> PipelineStatus {
    let all = || statuses.values().copied();
    if !all().all(JobStatus::is_finished) {
        let started = all().any(|s| s != JobStatus::Created && s != JobStatus::Queued);
        return if started { PipelineStatus::Running } else { PipelineStatus::Queued };
    }
    if all().any(|s| matches!(s, JobStatus::Failed | JobStatus::TimedOut)) {
        PipelineStatus::Failed
    } else if all().any(|s| s == JobStatus::Canceled) {
        PipelineStatus::Canceled
    } else if all().all(|s| s == JobStatus::Passed) {
        PipelineStatus::Passed
    } else {
        // Only skipped jobs besides passed ones: something upstream did not pass.
        PipelineStatus::Failed
    }
}
