//! Wharf pipelines: the `.wharf.yml` file and the rules that order its jobs.
//!
//! [`Pipeline::parse`] reads the file and checks it whole — stages, jobs, `needs`, cycles,
//! durations, patterns — so that a broken file fails its pipeline at once with the line and
//! the reason, and nothing runs. [`Pipeline::plan`] picks the jobs a push to a branch runs
//! and what each waits for, and [`schedule`] decides, from the jobs' statuses, which start next and which
//! can no longer run. [`parse_junit`] and [`parse_cobertura`] read the test and coverage reports
//! a job writes, and [`SecretMasker`] hides the repository's secrets in its output stream, reports
//! and messages.
//!
//! [`state`] holds the CI records (pipelines, jobs with their leases, variables): the
//! [`CiCommand`]s that change them and their `apply`, over the typed key spaces that
//! `wharf-meta` keeps in sled.
//!
//! This crate is pure: it reads no files, runs nothing and knows nothing of Raft or actors.
//! The node that runs jobs and the metadata that records them build on it.

mod deploy;
mod duration;
mod masking;
mod reports;
mod schedule;
mod spec;
pub mod state;

pub use deploy::{DeploySpec, DriverSpec, EnvironmentSpec, HealthCheck, Strategy};
pub use duration::parse_duration;
pub use masking::{MaskedStream, SecretMasker};
pub use reports::{parse_cobertura, parse_junit};
pub use schedule::{pipeline_status, schedule, JobStatus, PipelineStatus, Step};
pub use spec::{Artifacts, Job, Pipeline, PipelineError, PlannedJob, Reports};
pub use state::{CiCommand, JobResult, MAX_LOST_RUNNERS};

/// The file a repository's pipeline is read from, at its root.
pub const PIPELINE_FILE: &str = ".wharf.yml";

/// The coverage figure in `log`: the first capture of the last match of `pattern`, as a
/// percentage.
pub fn extract_coverage(pattern: &regex::Regex, log: &str) -> Option<f64> {
    pattern
        .captures_iter(log)
        .last()
        .and_then(|captures| captures.get(1))
        .and_then(|value| value.as_str().parse().ok())
}

#[cfg(test)]
mod tests;
