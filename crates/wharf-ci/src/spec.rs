//! The pipeline file: what it may say, and the checks a file passes before anything runs.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::deploy::{DeploySpec, RawDeploy};

use crate::duration::parse_duration;

/// Longest a job may be given to run.
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// What a job gets when its file says nothing.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);
/// Most times a failed job is tried again.
const MAX_RETRY: u32 = 3;

/// Why a pipeline file was refused: the line (when known) and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", line.map(|l| format!("line {l}: ")).unwrap_or_default())]
pub struct PipelineError {
    /// The 1-based line the problem is on, when it can be told.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

/// A checked pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Pipeline {
    /// Stages in order.
    pub stages: Vec<String>,
    /// Variables every job gets.
    pub variables: BTreeMap<String, String>,
    /// Jobs by name.
    pub jobs: BTreeMap<String, Job>,
    /// How the artifacts of a job are deployed, when the file says.
    pub deploy: Option<DeploySpec>,
}

/// A checked job.
#[derive(Debug, Clone)]
pub struct Job {
    /// Its name.
    pub name: String,
    /// Its stage.
    pub stage: String,
    /// The shell commands it runs, in order; the first that fails fails the job.
    pub script: Vec<String>,
    /// Jobs it waits for, when given; otherwise it waits for every job of earlier stages.
    pub needs: Option<Vec<String>>,
    /// Files it keeps.
    pub artifacts: Option<Artifacts>,
    /// Reports it writes.
    pub reports: Reports,
    /// The pattern whose first capture, on the job's log, is its coverage percentage.
    pub coverage: Option<regex::Regex>,
    /// How long it may run.
    pub timeout: Duration,
    /// How many times it is tried again after failing.
    pub retry: u32,
    /// The branches it runs on (patterns with `*`); `None` for every branch.
    pub branches: Option<Vec<String>>,
    /// Variables of this job, over the pipeline's.
    pub variables: BTreeMap<String, String>,
    /// Whether it may use the network (`network: false` gives it a network namespace of its
    /// own, with only a loopback interface).
    pub network: bool,
    /// The container image it runs in, on the node's Docker engine; `None` for the node's
    /// own sandbox.
    pub image: Option<String>,
}

/// A job as a run records it: what it is called, where it sits, what it waits for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedJob {
    /// Its name.
    pub name: String,
    /// Its stage.
    pub stage: String,
    /// The jobs of this run it waits for.
    pub needs: Vec<String>,
    /// Automatic retries after a failure.
    pub retries: u32,
}

/// Files a job keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifacts {
    /// Paths relative to the workspace (a trailing `/` keeps a directory).
    pub paths: Vec<String>,
    /// How long they are kept.
    pub expire_in: Option<Duration>,
}

/// Reports a job writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reports {
    /// A JUnit XML file.
    pub junit: Option<String>,
    /// A Cobertura coverage file.
    pub cobertura: Option<String>,
}

/// Compiled patterns compare by their text.
impl PartialEq for Job {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.stage == other.stage
            && self.script == other.script
            && self.needs == other.needs
            && self.artifacts == other.artifacts
            && self.reports == other.reports
            && self.coverage.as_ref().map(regex::Regex::as_str) == other.coverage.as_ref().map(regex::Regex::as_str)
            && self.network == other.network
            && self.image == other.image
            && self.timeout == other.timeout
            && self.retry == other.retry
            && self.branches == other.branches
            && self.variables == other.variables
    }
}

// ---- the file as written ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    stages: Vec<String>,
    #[serde(default)]
    variables: BTreeMap<String, Scalar>,
    jobs: BTreeMap<String, RawJob>,
    deploy: Option<RawDeploy>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    stage: String,
    script: OneOrMany,
    needs: Option<Vec<String>>,
    artifacts: Option<ArtifactsRaw>,
    reports: Option<ReportsRaw>,
    coverage: Option<String>,
    timeout: Option<Scalar>,
    #[serde(default)]
    retry: u32,
    branches: Option<Vec<String>>,
    #[serde(default)]
    variables: BTreeMap<String, Scalar>,
    #[serde(default = "network_by_default")]
    network: bool,
    image: Option<String>,
}

fn network_by_default() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ArtifactsRaw {
    paths: Vec<String>,
    expire_in: Option<Scalar>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportsRaw {
    junit: Option<String>,
    cobertura: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// A value that may be written as a string, a number or a boolean (`retry: 1`, `timeout: 90`,
/// `DEBUG: true`).
#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    Text(String),
    Integer(i64),
    Float(f64),
    Flag(bool),
}

impl Scalar {
    fn into_text(self) -> String {
        match self {
            Scalar::Text(text) => text,
            Scalar::Integer(n) => n.to_string(),
            Scalar::Float(n) => n.to_string(),
            Scalar::Flag(b) => b.to_string(),
        }
    }
}

impl Pipeline {
    /// Reads and checks a pipeline file.
    pub fn parse(text: &str) -> Result<Pipeline, PipelineError> {
        let raw: RawPipeline = yaml_serde::from_str(text).map_err(|error| PipelineError {
            line: error.location().map(|l| l.line()),
            message: strip_location(&error.to_string()),
        })?;
        let at = |line_of: Option<usize>, message: String| PipelineError { line: line_of, message };
        let stages = raw.stages;
        if stages.is_empty() {
            return Err(at(line_of_key(text, "stages", false), "at least one stage is needed".into()));
        }
        let mut seen = BTreeSet::new();
        for stage in &stages {
            check_name("stage", stage).map_err(|m| at(line_of_key(text, "stages", false), m))?;
            if !seen.insert(stage) {
                return Err(at(line_of_key(text, "stages", false), format!("stage {stage:?} is listed twice")));
            }
        }
        if raw.jobs.is_empty() {
            return Err(at(line_of_key(text, "jobs", false), "at least one job is needed".into()));
        }
        let variables = variables(raw.variables).map_err(|m| at(line_of_key(text, "variables", false), m))?;
        let mut jobs = BTreeMap::new();
        for (name, job) in raw.jobs {
            let line = line_of_key(text, &name, true);
            let job = check_job(&name, job, &stages).map_err(|m| at(line, format!("job {name:?}: {m}")))?;
            jobs.insert(name, job);
        }
        let artifact_jobs: Vec<&str> = jobs.values().filter(|j| j.artifacts.is_some()).map(|j| j.name.as_str()).collect();
        let deploy = raw
            .deploy
            .map(|deploy| deploy.check(&artifact_jobs))
            .transpose()
            .map_err(|m| at(line_of_key(text, "deploy", false), m))?;
        let pipeline = Pipeline {
            stages,
            variables,
            jobs,
            deploy,
        };
        pipeline.check_needs(text)?;
        Ok(pipeline)
    }

    /// The jobs a push to `branch` runs, by stage then name.
    pub fn jobs_for_branch(&self, branch: &str) -> Vec<&Job> {
        let mut jobs: Vec<&Job> = self.jobs.values().filter(|job| job.runs_on(branch)).collect();
        jobs.sort_by_key(|job| (self.stage_index(&job.stage), job.name.clone()));
        jobs
    }

    /// What `job` waits for among `present` (the jobs of this run): its `needs`, or every job
    /// of an earlier stage.
    pub fn dependencies(&self, job: &Job, present: &BTreeSet<String>) -> Vec<String> {
        match &job.needs {
            Some(needs) => needs.iter().filter(|n| present.contains(*n)).cloned().collect(),
            None => {
                let own = self.stage_index(&job.stage);
                present
                    .iter()
                    .filter(|name| self.jobs.get(*name).is_some_and(|other| self.stage_index(&other.stage) < own))
                    .cloned()
                    .collect()
            }
        }
    }

    /// The jobs a run for `branch` records, in stage order, each with what it waits for.
    /// `only` narrows the run to the jobs of one stage or with one name, and the jobs they
    /// need, as the seed's test trigger asks.
    pub fn plan(&self, branch: &str, only: Option<&str>) -> Vec<PlannedJob> {
        let for_branch = self.jobs_for_branch(branch);
        let mut chosen: BTreeSet<String> = for_branch
            .iter()
            .filter(|job| only.is_none_or(|only| job.stage == only || job.name == only))
            .map(|job| job.name.clone())
            .collect();
        // What the chosen jobs need explicitly comes along, transitively.
        let mut frontier: Vec<String> = chosen.iter().cloned().collect();
        while let Some(name) = frontier.pop() {
            for need in self.jobs.get(&name).and_then(|job| job.needs.clone()).unwrap_or_default() {
                if chosen.insert(need.clone()) {
                    frontier.push(need);
                }
            }
        }
        for_branch
            .into_iter()
            .filter(|job| chosen.contains(&job.name))
            .map(|job| PlannedJob {
                name: job.name.clone(),
                stage: job.stage.clone(),
                needs: self.dependencies(job, &chosen),
                retries: job.retry,
            })
            .collect()
    }

    fn stage_index(&self, stage: &str) -> usize {
        self.stages.iter().position(|s| s == stage).unwrap_or(usize::MAX)
    }

    /// `needs` name jobs that exist, in the same or an earlier stage, and form no cycle.
    fn check_needs(&self, text: &str) -> Result<(), PipelineError> {
        for job in self.jobs.values() {
            for need in job.needs.iter().flatten() {
                let Some(needed) = self.jobs.get(need) else {
                    return Err(PipelineError {
                        line: line_of_key(text, &job.name, true),
                        message: format!("job {:?} needs {need:?}, which is not a job of this file", job.name),
                    });
                };
                if self.stage_index(&needed.stage) > self.stage_index(&job.stage) {
                    return Err(PipelineError {
                        line: line_of_key(text, &job.name, true),
                        message: format!(
                            "job {:?} (stage {:?}) needs {need:?}, which runs in the later stage {:?}",
                            job.name, job.stage, needed.stage
                        ),
                    });
                }
            }
        }
        // Depth-first search for a cycle through `needs` (stages alone cannot make one).
        let mut done = BTreeSet::new();
        for start in self.jobs.keys() {
            let mut path = Vec::new();
            if let Some(cycle) = self.find_cycle(start, &mut path, &mut done) {
                return Err(PipelineError {
                    line: line_of_key(text, &cycle[0], true),
                    message: format!("the needs of these jobs form a cycle: {}", cycle.join(" -> ")),
                });
            }
        }
        Ok(())
    }

    fn find_cycle(&self, job: &str, path: &mut Vec<String>, done: &mut BTreeSet<String>) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == job) {
            let mut cycle = path[at..].to_vec();
            cycle.push(job.to_owned());
            return Some(cycle);
        }
        if done.contains(job) {
            return None;
        }
        path.push(job.to_owned());
        for need in self.jobs.get(job).and_then(|j| j.needs.as_ref()).into_iter().flatten() {
            if let Some(cycle) = self.find_cycle(need, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(job.to_owned());
        None
    }
}

impl Job {
    /// Whether the job runs for a push to `branch`.
    pub fn runs_on(&self, branch: &str) -> bool {
        match &self.branches {
            None => true,
            Some(patterns) => patterns.iter().any(|pattern| glob_matches(pattern, branch)),
        }
    }
}

fn check_job(name: &str, raw: RawJob, stages: &[String]) -> Result<Job, String> {
    check_name("job", name)?;
    if !stages.contains(&raw.stage) {
        return Err(format!("stage {:?} is not one of the stages {stages:?}", raw.stage));
    }
    let script = match raw.script {
        OneOrMany::One(line) => vec![line],
        OneOrMany::Many(lines) => lines,
    };
    if script.is_empty() || script.iter().all(|line| line.trim().is_empty()) {
        return Err("script has no commands".into());
    }
    if let Some(image) = &raw.image {
        // It becomes an argument of `docker run`: no option, no space, no shell character.
        let valid = !image.is_empty()
            && !image.starts_with('-')
            && image.chars().all(|c| c.is_ascii_alphanumeric() || "._/:@-".contains(c));
        if !valid {
            return Err(format!("image {image:?} is not an image name (like debian:12 or registry.local/team/build:1.4)"));
        }
    }
    let coverage = raw
        .coverage
        .map(|pattern| {
            let regex = regex::Regex::new(&pattern).map_err(|e| format!("coverage pattern {pattern:?} is not a regex: {e}"))?;
            if regex.captures_len() < 2 {
                return Err(format!("coverage pattern {pattern:?} needs a group, like (\\d+\\.\\d+), around the number"));
            }
            Ok(regex)
        })
        .transpose()?;
    let timeout = match raw.timeout {
        Some(value) => parse_duration(&value.into_text())?,
        None => DEFAULT_TIMEOUT,
    };
    if timeout.is_zero() || timeout > MAX_TIMEOUT {
        return Err(format!("timeout must be more than 0 and at most 24h, not {}s", timeout.as_secs()));
    }
    if raw.retry > MAX_RETRY {
        return Err(format!("retry is at most {MAX_RETRY}, not {}", raw.retry));
    }
    for pattern in raw.branches.iter().flatten() {
        if pattern.is_empty() || pattern.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("branch pattern {pattern:?} is not valid"));
        }
    }
    let artifacts = raw
        .artifacts
        .map(|raw| {
            for path in &raw.paths {
                if path.is_empty() || path.starts_with('/') || path.split('/').any(|part| part == "..") {
                    return Err(format!("artifact path {path:?} must be relative and stay inside the workspace"));
                }
            }
            let expire_in = raw.expire_in.map(|v| parse_duration(&v.into_text())).transpose()?;
            Ok(Artifacts { paths: raw.paths, expire_in })
        })
        .transpose()?;
    let reports = raw
        .reports
        .map(|r| Reports {
            junit: r.junit,
            cobertura: r.cobertura,
        })
        .unwrap_or_default();
    Ok(Job {
        name: name.to_owned(),
        stage: raw.stage,
        script,
        needs: raw.needs,
        artifacts,
        reports,
        coverage,
        timeout,
        retry: raw.retry,
        branches: raw.branches,
        variables: variables(raw.variables)?,
        network: raw.network,
        image: raw.image,
    })
}

fn variables(raw: BTreeMap<String, Scalar>) -> Result<BTreeMap<String, String>, String> {
    raw.into_iter()
        .map(|(name, value)| {
            let valid = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!("{name:?} is not a variable name: use letters, digits and _"));
            }
            Ok((name, value.into_text()))
        })
        .collect()
}

fn check_name(what: &str, name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 100
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'));
    if valid {
        Ok(())
    } else {
        Err(format!("{name:?} is not a valid {what} name: use 1 to 100 letters, digits, '_', '-', '.', ':'"))
    }
}

/// Whether `branch` matches `pattern`: `*` stands for any characters but `/`, `**` for any.
fn glob_matches(pattern: &str, branch: &str) -> bool {
    let mut regex = String::from("^");
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '*' {
            if chars.peek() == Some(&'*') {
                chars.next();
                regex.push_str(".*");
            } else {
                regex.push_str("[^/]*");
            }
        } else {
            regex.push_str(&regex::escape(&c.to_string()));
        }
    }
    regex.push('$');
    regex::Regex::new(&regex).is_ok_and(|r| r.is_match(branch))
}

/// The 1-based line where `key:` is written; for a job, the first such line after `jobs:`.
fn line_of_key(text: &str, key: &str, in_jobs: bool) -> Option<usize> {
    let start = if in_jobs {
        text.lines().position(|line| line.trim_end().starts_with("jobs:"))?
    } else {
        0
    };
    let forms = [format!("{key}:"), format!("\"{key}\":"), format!("'{key}':")];
    text.lines()
        .enumerate()
        .skip(start)
        .find(|(_, line)| {
            let trimmed = line.trim_start();
            forms.iter().any(|form| trimmed.starts_with(form.as_str()))
        })
        .map(|(index, _)| index + 1)
}

/// The YAML library puts "at line L column C" in its messages; the line is reported apart.
fn strip_location(message: &str) -> String {
    match message.find(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
    }
}
