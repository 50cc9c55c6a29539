//! One attempt of one job on this node: a checkout of the exact commit in a fresh workspace,
//! the script in the node's sandbox (seeing only its workspace and, read-only, the mirror its
//! checkout borrows objects from) as its own process group with the job's variables, its log
//! (masked and capped, see [`crate::capped_log`]), its reports and artifacts (read beneath the
//! workspace without following links: a path that leaves it fails the job), and the report
//! of how it ended.
//!
//! The checkout comes from a mirror of the repository kept on this node
//! (`ci/mirrors/{repo}.git`); when the commit is not there yet, the mirror fetches a bundle of
//! the repository from the node that owns it. The job's spec is read from `.wharf.yml` in the
//! checkout itself, so a runner needs nothing but the job record to run it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use wharf_ci::SecretMasker;
use wharf_meta::{CiCommand, JobResult};
use wharf_proto::{ApiError, ArtifactFile, JobRecord, JobStatus, NodeReply, NodeRequest, PipelineRecord, RepoRecord, RepoRequest};

use super::files::{artifacts_dir, log_path};
use crate::capped_log::CappedLog;
use super::runner::Stop;
use wharf_sandbox::beneath::{Beneath, BeneathError};
use wharf_sandbox::container;
use wharf_sandbox::{Confinement, Limits};
use crate::NodeContext;

/// How long artifacts are kept when the file does not say.
const DEFAULT_ARTIFACT_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);
/// At most this many files of one job are kept as artifacts.
const MAX_ARTIFACT_FILES: usize = 10_000;
/// The largest JUnit or Cobertura report read.
const MAX_REPORT_BYTES: u64 = 16 << 20;
/// Processes the sandbox user may have at once (a fork bomb stops there).
const MAX_JOB_PROCESSES: u64 = 4096;

/// Runs the claimed attempt `job` and reports how it ended, unless it was stopped because its
/// lease is gone (then another runner owns the job and this attempt must not count).
pub(super) async fn run(node: &Arc<NodeContext>, job: &JobRecord, mut stop: watch::Receiver<Option<Stop>>) {
    let log = CappedLog::create(&log_path(node, job.id, job.attempt), node.config.log_limit_bytes);
    let workspace = node.config.data_dir.join("ci").join("work").join(format!("job-{}", job.id));
    let result = match Attempt::prepare(node, job, &workspace, &log).await {
        Ok(attempt) => attempt.execute(&mut stop).await,
        Err(error) => {
            log.line(&format!("wharf: the job could not start: {error}"));
            JobResult {
                status: Some(JobStatus::Failed),
                message: Some(format!("could not start: {error}")),
                ..JobResult::default()
            }
        }
    };
    let _ = tokio::fs::remove_dir_all(&workspace).await;
    let stopped = *stop.borrow();
    if matches!(stopped, Some(Stop::LeaseLost | Stop::Shutdown)) {
        tracing::warn!(job = job.id, attempt = job.attempt, ?stopped, "job stopped; its result is not reported");
        return;
    }
    report(node, job, result).await;
}

/// Tells Raft how the attempt ended, trying again (ten attempts, a second apart) while there
/// is no leader.
async fn report(node: &NodeContext, job: &JobRecord, result: JobResult) {
    use backon::Retryable;
    let status = result.status;
    let attempt = || async {
        let command = CiCommand::FinishJob {
            job: job.id,
            node: node.config.id,
            attempt: job.attempt,
            result: result.clone(),
            now_ms: crate::now_ms(),
        };
        super::write(node, command, "finish job").await
    };
    let outcome = attempt
        .retry(backon::ConstantBuilder::new().with_delay(Duration::from_secs(1)).with_max_times(9))
        // The lease was lost meanwhile: the job is someone else's now, and asking again
        // cannot change that.
        .when(|error| !matches!(error, ApiError::Conflict { .. }))
        .notify(|error, _| tracing::warn!(job = job.id, %error, "job result not recorded yet"))
        .await;
    match outcome {
        Ok(outcome) => {
            tracing::info!(job = job.id, attempt = job.attempt, ?status, "job finished");
            if let wharf_meta::CommandOutcome::Pipeline(pipeline) = outcome {
                crate::deploy::on_pipeline_passed(node, &pipeline).await;
            }
        }
        Err(ApiError::Conflict { message }) => tracing::warn!(job = job.id, %message, "job result refused"),
        Err(error) => tracing::warn!(job = job.id, %error, "job result not recorded; the lease decides"),
    }
}

/// Everything an attempt needs once its workspace is ready.
struct Attempt<'a> {
    node: &'a Arc<NodeContext>,
    job: &'a JobRecord,
    spec: wharf_ci::Job,
    env: BTreeMap<String, String>,
    masker: SecretMasker,
    workspace: &'a Path,
    /// The mirror whose objects the checkout borrows: the job reads it, read-only.
    mirror: PathBuf,
    log: &'a CappedLog,
}

impl<'a> Attempt<'a> {
    /// Checks out the commit and reads the job's spec and variables.
    async fn prepare(node: &'a Arc<NodeContext>, job: &'a JobRecord, workspace: &'a Path, log: &'a CappedLog) -> Result<Attempt<'a>, String> {
        let directory = node.meta.directory();
        let pipeline = directory.pipeline(job.pipeline).ok_or("its pipeline is gone")?;
        let repo = directory.repo_by_id(pipeline.repo).ok_or("its repository is gone")?;
        log.line(&format!(
            "Running job {} (attempt {}) of pipeline {} on node {}",
            job.name, job.attempt, pipeline.id, node.config.id
        ));
        log.line(&format!("Checking out {} of {}", pipeline.sha, repo.name));
        let mirror = update_mirror(node, &repo, &pipeline.sha).await.map_err(|e| e.to_string())?;
        checkout(&mirror, &pipeline.sha, workspace).await?;
        node.sandbox.hand_over(workspace).map_err(|e| format!("cannot hand the workspace to the sandbox user: {e}"))?;
        // Read beneath the workspace: a committed link named .wharf.yml leads nowhere.
        let text = Beneath::open(workspace)
            .map_err(|e| e.to_string())?
            .read_to_string(wharf_ci::PIPELINE_FILE, MAX_REPORT_BYTES)
            .map_err(|e| format!("read {}: {e}", wharf_ci::PIPELINE_FILE))?;
        let mut file = wharf_ci::Pipeline::parse(&text).map_err(|e| e.to_string())?;
        let spec = file.jobs.remove(&job.name).ok_or_else(|| format!("{} has no job {}", wharf_ci::PIPELINE_FILE, job.name))?;
        let secrets = directory.variables(repo.id);
        let masker = SecretMasker::new(secrets.iter().filter(|v| v.secret).map(|v| v.value.clone()));
        log.mask_with(masker.clone());
        // Later sources win, as in GitLab: the file's variables, the job's, the repository's
        // (set through the API), and the ones Wharf defines.
        let mut env = file.variables;
        env.extend(spec.variables.clone());
        env.extend(secrets.into_iter().map(|v| (v.name, v.value)));
        env.extend(predefined(node, job, &pipeline, &repo, workspace));
        Ok(Attempt {
            node,
            job,
            spec,
            env,
            masker,
            workspace,
            mirror,
            log,
        })
    }

    /// Runs the script until it ends, times out or is stopped; then collects what it left.
    async fn execute(self, stop: &mut watch::Receiver<Option<Stop>>) -> JobResult {
        let (status, exit_code, message) = match self.run_script(stop).await {
            Ok(Ended::Exited(0)) => (JobStatus::Passed, Some(0), None),
            Ok(Ended::Exited(code)) => {
                self.log.line(&format!("wharf: the job failed: exit code {code}"));
                (JobStatus::Failed, Some(code), None)
            }
            Ok(Ended::TimedOut) => {
                let message = format!("killed at its timeout of {}s", self.spec.timeout.as_secs_f64());
                self.log.line(&format!("wharf: the job was {message}"));
                (JobStatus::TimedOut, None, Some(message))
            }
            Ok(Ended::Stopped(why)) => {
                self.log.line(&format!("wharf: the job was stopped: {why:?}"));
                (JobStatus::Canceled, None, Some("canceled".to_owned()))
            }
            Err(error) => {
                self.log.line(&format!("wharf: the job could not run: {error}"));
                (JobStatus::Failed, None, Some(error))
            }
        };
        let mut escapes = Vec::new();
        let beneath = Beneath::open(self.workspace);
        let (tests, coverage, (artifacts, artifacts_expire_ms)) = match &beneath {
            Ok(beneath) => (
                self.junit_report(beneath, &mut escapes),
                self.coverage(beneath, &mut escapes),
                self.keep_artifacts(beneath, &mut escapes),
            ),
            Err(error) => {
                self.log.line(&format!("wharf: the workspace cannot be read: {error}"));
                (None, None, (Vec::new(), None))
            }
        };
        // A path that leaves the workspace is an attack or a mistake; either way the job did
        // not produce what it said it would.
        let (status, message) = match escapes.is_empty() {
            true => (status, message),
            false => (JobStatus::Failed, Some(escapes.join("; "))),
        };
        JobResult {
            status: Some(status),
            exit_code,
            coverage,
            tests: tests.map(|report| self.masked_report(report)),
            artifacts,
            artifacts_expire_ms,
            message: message.map(|text| self.masker.mask(&text)),
        }
    }

    async fn run_script(&self, stop: &mut watch::Receiver<Option<Stop>>) -> Result<Ended, String> {
        let (reader, writer) = std::io::pipe().map_err(|e| format!("pipe: {e}"))?;
        let confinement = Confinement {
            workdir: self.workspace.to_owned(),
            writable: std::iter::once(self.workspace.to_owned()).chain(self.node.config.sandbox_volumes.iter().cloned()).collect(),
            readable: vec![self.mirror.clone()],
            network: self.spec.network,
            limits: Limits {
                data_bytes: None,
                processes: Some(MAX_JOB_PROCESSES),
            },
        };
        let script = script_text(&self.spec.script);
        let container = self.spec.image.as_ref().map(|_| container::name(self.job.id, self.job.attempt));
        let mut command = match (&self.spec.image, &container) {
            (Some(image), Some(name)) => {
                if !container::engine_answers().await {
                    return Err(format!("the job runs in image {image}, and no Docker engine answers on this node"));
                }
                self.log.line(&format!("wharf: running in a container of {image}"));
                let owner = self.node.sandbox.file_owner();
                container::command(name, image, &confinement, owner, self.env.keys(), &script)
            }
            _ => self.node.sandbox.command(&script, &confinement)?,
        };
        command
            .envs(&self.env)
            .stdin(Stdio::null())
            .stdout(writer.try_clone().map_err(|e| format!("pipe: {e}"))?)
            .stderr(writer)
            .process_group(0)
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(|e| format!("cannot start the job's shell: {e}"))?;
        // Our copies of the pipe's write end must go, or the log never sees its end.
        drop(command);
        let group = child.id();
        let copier = self.log.copy_from(reader);
        let ended = tokio::select! {
            status = child.wait() => Ended::Exited(status.map_err(|e| e.to_string())?.code().unwrap_or(-1)),
            _ = tokio::time::sleep(self.spec.timeout) => Ended::TimedOut,
            why = stopped(stop) => Ended::Stopped(why),
        };
        // Whatever the script left running in the background goes with it.
        if let Some(group) = group {
            kill_group(group);
        }
        if let Some(name) = &container {
            // Killing the `docker run` client does not stop the container.
            container::remove(name).await;
        }
        let _ = child.wait().await;
        let _ = copier.await;
        Ok(ended)
    }

    /// Reads the report file at `path` beneath the workspace; a path that leaves it is added
    /// to `escapes`, any other failure is logged.
    fn report_text(&self, beneath: &Beneath, kind: &str, path: &str, escapes: &mut Vec<String>) -> Option<String> {
        match beneath.read_to_string(path, MAX_REPORT_BYTES) {
            Ok(text) => Some(text),
            Err(error) => {
                if matches!(error, BeneathError::Escapes { .. }) {
                    escapes.push(format!("{kind} report {error}"));
                }
                self.log.line(&format!("wharf: no {kind} report: {error}"));
                None
            }
        }
    }

    fn junit_report(&self, beneath: &Beneath, escapes: &mut Vec<String>) -> Option<wharf_proto::TestReport> {
        let path = self.spec.reports.junit.as_ref()?;
        let xml = self.report_text(beneath, "JUnit", path, escapes)?;
        match wharf_ci::parse_junit(&xml) {
            Ok(report) => Some(report),
            Err(error) => {
                self.log.line(&format!("wharf: no JUnit report from {path}: {error}"));
                None
            }
        }
    }

    /// The report with the secrets masked in every text it carries.
    fn masked_report(&self, mut report: wharf_proto::TestReport) -> wharf_proto::TestReport {
        for failure in &mut report.failures {
            for text in [&mut failure.suite, &mut failure.class, &mut failure.name, &mut failure.message] {
                *text = self.masker.mask(text);
            }
        }
        report
    }

    fn coverage(&self, beneath: &Beneath, escapes: &mut Vec<String>) -> Option<f64> {
        if let Some(path) = &self.spec.reports.cobertura {
            if let Some(xml) = self.report_text(beneath, "Cobertura", path, escapes) {
                match wharf_ci::parse_cobertura(&xml) {
                    Ok(coverage) => return Some(coverage),
                    Err(error) => self.log.line(&format!("wharf: no Cobertura report from {path}: {error}")),
                }
            }
        }
        let pattern = self.spec.coverage.as_ref()?;
        // The log is capped, so reading it whole is bounded.
        let text = std::fs::read_to_string(log_path(self.node, self.job.id, self.job.attempt)).unwrap_or_default();
        wharf_ci::extract_coverage(pattern, &text)
    }

    /// Copies the artifact paths out of the workspace before it is deleted. Kept whether the
    /// job passed or not: a failed build's output is what its author needs to look at.
    fn keep_artifacts(&self, beneath: &Beneath, escapes: &mut Vec<String>) -> (Vec<ArtifactFile>, Option<u64>) {
        let Some(spec) = &self.spec.artifacts else { return (Vec::new(), None) };
        let target = artifacts_dir(self.node, self.job.id);
        let _ = std::fs::remove_dir_all(&target);
        let mut kept = Vec::new();
        for path in &spec.paths {
            let mut copy = |relative: &str, file: std::fs::File| copy_artifact(relative, file, &target, &mut kept);
            match beneath.walk_files(path, &mut copy) {
                Ok(()) => {}
                Err(error @ BeneathError::Escapes { .. }) => {
                    self.log.line(&format!("wharf: artifact path {error}"));
                    escapes.push(format!("artifact path {error}"));
                }
                Err(BeneathError::Missing { .. }) => self.log.line(&format!("wharf: artifact path {path} does not exist")),
                Err(error) => self.log.line(&format!("wharf: artifact path {path} not kept: {error}")),
            }
        }
        let lifetime = spec.expire_in.unwrap_or(DEFAULT_ARTIFACT_LIFETIME);
        self.log.line(&format!("wharf: kept {} artifact files", kept.len()));
        (kept, Some(crate::now_ms() + lifetime.as_millis() as u64))
    }
}

/// How a script ended.
enum Ended {
    Exited(i32),
    TimedOut,
    Stopped(Stop),
}

/// Resolves once the job is told to stop.
async fn stopped(stop: &mut watch::Receiver<Option<Stop>>) -> Stop {
    loop {
        if let Some(why) = *stop.borrow_and_update() {
            return why;
        }
        if stop.changed().await.is_err() {
            // The runner forgot the job: nobody can stop it any more.
            std::future::pending::<()>().await;
        }
    }
}

/// The script: each step echoed as `$ step` before it runs, the first failure ending it.
/// Files it makes get the usual modes (umask 022), not Wharf's own 077.
fn script_text(steps: &[String]) -> String {
    let mut text = String::from("set -e\numask 022\n");
    for step in steps {
        let quoted = format!("$ {step}").replace('\'', r"'\''");
        text.push_str(&format!("printf '%s\\n' '{quoted}'\n{step}\n"));
    }
    text
}

/// The variables Wharf defines for every job.
fn predefined(node: &NodeContext, job: &JobRecord, pipeline: &PipelineRecord, repo: &RepoRecord, workspace: &Path) -> Vec<(String, String)> {
    let branch = pipeline.ref_name.strip_prefix("refs/heads/").unwrap_or(&pipeline.ref_name);
    [
        ("HOME", workspace.display().to_string()),
        ("CI", "true".into()),
        ("WHARF_COMMIT_SHA", pipeline.sha.clone()),
        ("WHARF_BRANCH", branch.to_owned()),
        ("WHARF_REF", pipeline.ref_name.clone()),
        ("WHARF_REPO", repo.name.to_string()),
        ("WHARF_PIPELINE_ID", pipeline.id.to_string()),
        ("WHARF_JOB_ID", job.id.to_string()),
        ("WHARF_JOB_NAME", job.name.clone()),
        ("WHARF_JOB_STAGE", job.stage.clone()),
        ("WHARF_JOB_ATTEMPT", job.attempt.to_string()),
        ("WHARF_NODE_ID", node.config.id.to_string()),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value))
    .collect()
}

/// This node's mirror of `repo`, holding `sha`: fetched from the owner when it does not yet.
async fn update_mirror(node: &Arc<NodeContext>, repo: &RepoRecord, sha: &str) -> Result<PathBuf, ApiError> {
    let mirror = node.config.data_dir.join("ci").join("mirrors").join(repo.id.dir_name());
    let lock = node.runner.mirror_lock(repo.id.0);
    let _held = lock.lock().await;
    let (path, name, wanted) = (mirror.clone(), repo.name.to_string(), sha.to_owned());
    let present = tokio::task::spawn_blocking(move || {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| ApiError::internal("mirror directory", e))?;
        }
        wharf_git::transfer::prepare_incoming(&path, &name)?;
        Ok::<_, ApiError>(wharf_git::transfer::has_commit(&path, &wanted))
    })
    .await
    .map_err(|e| ApiError::internal("mirror", e))??;
    if present {
        return Ok(mirror);
    }
    let request = NodeRequest::Repo {
        id: repo.id,
        name: repo.name.clone(),
        request: RepoRequest::Bundle,
    };
    let (from, transfer) = match node.peers.call(repo.node, &request).await? {
        NodeReply::Offered { node, transfer } => (node, transfer),
        other => return Err(ApiError::internal("bundle for CI", format!("unexpected reply {other:?}"))),
    };
    let file = node.config.data_dir.join("transfers").join(format!("ci-in-{}-{transfer}.bundle", repo.id));
    let pulled = crate::mover::pull(node, from, transfer, &file).await;
    let _ = node.peers.call(from, &NodeRequest::EndTransfer { transfer }).await;
    pulled?;
    let (path, bundle) = (mirror.clone(), file.clone());
    let fetched = tokio::task::spawn_blocking(move || wharf_git::transfer::fetch_bundle(&path, &bundle))
        .await
        .map_err(|e| ApiError::internal("fetch bundle", e))?;
    let _ = std::fs::remove_file(&file);
    fetched?;
    // Once per fetch, not per job: what is already there was shared when it was fetched.
    node.sandbox
        .share_read_only(&mirror)
        .map_err(|e| ApiError::internal("share the mirror with the sandbox", e))?;
    Ok(mirror)
}

/// A checkout of `sha` in a fresh `workspace`, sharing the mirror's objects.
async fn checkout(mirror: &Path, sha: &str, workspace: &Path) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(workspace);
    if let Some(parent) = workspace.parent() {
        std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
    }
    let git = |args: Vec<String>| async move {
        let output = tokio::process::Command::new("git")
            .args(&args)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .output()
            .await
            .map_err(|e| e.to_string())?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!("git {}: {}", args[0], String::from_utf8_lossy(&output.stderr).trim()))
        }
    };
    let workspace = workspace.display().to_string();
    let mirror = mirror.display().to_string();
    git(vec!["clone".into(), "--quiet".into(), "--shared".into(), "--no-checkout".into(), mirror, workspace.clone()]).await?;
    git(vec!["-C".into(), workspace, "checkout".into(), "--quiet".into(), "--detach".into(), sha.to_owned()]).await
}

/// Kills every process of a job's group. A group already gone has nothing left to kill.
fn kill_group(group: u32) {
    if let Some(group) = i32::try_from(group).ok().and_then(rustix::process::Pid::from_raw) {
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
    }
}

/// Copies one artifact file, opened beneath the workspace, to `target/relative`, listing it;
/// returns whether more may be kept.
fn copy_artifact(relative: &str, mut file: std::fs::File, target: &Path, kept: &mut Vec<ArtifactFile>) -> std::io::Result<bool> {
    if kept.len() >= MAX_ARTIFACT_FILES {
        return Ok(false);
    }
    let destination = target.join(relative);
    if let Some(parent) = destination.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let size = std::io::copy(&mut file, &mut std::fs::File::create(&destination)?)?;
    kept.push(ArtifactFile {
        path: relative.trim_start_matches("./").to_owned(),
        size,
    });
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_echo_each_step_before_running_it() {
        let text = script_text(&["echo 'hi'".to_owned(), "false".to_owned(), "echo never".to_owned()]);
        let output = std::process::Command::new("sh").arg("-c").arg(&text).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&output.stdout), "$ echo 'hi'\nhi\n$ false\n");
        assert!(!output.status.success(), "the first failing step ends the script");
    }
}
