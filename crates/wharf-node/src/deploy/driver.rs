//! The process driver: runs the instances that the records place on this node.
//!
//! Every few hundred milliseconds it compares the instance records naming this node with the
//! processes it runs: a record it does not run yet is started (the release's artifacts are
//! fetched from the node that ran the job, the command runs in them as its own process group
//! with `PORT` set, under the environment's memory limit); a record marked stopped, or gone,
//! has its process stopped (SIGTERM, then SIGKILL) and is removed. While an instance runs, the
//! driver checks its health over HTTP and records each change of health; a process that ends
//! makes its instance unhealthy. Records are the only instruction, so a node that restarts
//! starts again what it should run.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use wharf_meta::DeployCommand;
use wharf_proto::deploy::{DriverSpec, HealthCheck, InstanceHealth, InstanceRecord, Release};
use wharf_proto::{ApiError, NodeRequest};

use crate::background::Wake;
use wharf_sandbox::{Confinement, Limits};
use crate::NodeContext;

/// How often the driver compares records with processes.
const RECONCILE: Duration = Duration::from_millis(250);
/// How long a stopped instance gets to exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The instances this node runs: a stop signal for each.
pub(crate) struct Driver {
    running: Mutex<HashMap<u64, watch::Sender<bool>>>,
    /// Held while a release's artifacts are fetched, so two instances never fetch one twice.
    fetching: tokio::sync::Mutex<()>,
    /// The HTTP client of the health checks.
    checker: reqwest::Client,
    /// Set by [`Driver::stop_all`]: the node is shutting down, so the instances it stops keep
    /// their records (the metadata store stops right after; a write then would fail, and
    /// openraft logs an ERROR for it).
    shutting_down: std::sync::atomic::AtomicBool,
}

impl Default for Driver {
    fn default() -> Self {
        Driver {
            running: Mutex::default(),
            fetching: tokio::sync::Mutex::default(),
            checker: health_client(),
            shutting_down: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

/// The client of the health checks. A 3xx answer passes, so redirects are not followed; and
/// no connection is kept between checks: each check is a new connection, as a load balancer's
/// is, so an instance that stopped answering new connections fails its next check, and a
/// connection to a replaced instance on a reused port is never picked up again.
fn health_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
        .build()
        .expect("an HTTP client without TLS always builds")
}

impl Driver {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, watch::Sender<bool>>> {
        self.running.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Stops every instance (the node is shutting down).
    pub fn stop_all(&self) {
        self.shutting_down.store(true, std::sync::atomic::Ordering::SeqCst);
        for stop in self.lock().values() {
            let _ = stop.send(true);
        }
    }
}

/// Starts the driver of `node` under its [`crate::background::Background`]: it reconciles every
/// [`RECONCILE`] (not on every change, for the reason the controllers' loop gives).
pub(crate) fn spawn_driver(node: &Arc<NodeContext>) {
    node.background.spawn_loop("instance-driver", Arc::downgrade(node), Wake::Every(RECONCILE), |node| async move {
        reconcile(&node).await;
    });
}

async fn reconcile(node: &Arc<NodeContext>) {
    let me = node.config.id;
    let records: HashMap<u64, InstanceRecord> = node
        .meta
        .directory()
        .instances(None)
        .into_iter()
        .filter(|i| i.node == me)
        .map(|i| (i.id, i))
        .collect();
    let mut to_remove = Vec::new();
    {
        let mut running = node.driver.lock();
        for (id, stop) in running.iter() {
            let stopped = records.get(id).is_none_or(|r| r.health == InstanceHealth::Stopped);
            if stopped {
                let _ = stop.send(true);
            }
        }
        for record in records.values() {
            match (record.health, running.contains_key(&record.id)) {
                (InstanceHealth::Stopped, false) => to_remove.push(record.id),
                (InstanceHealth::Stopped, true) => {}
                (_, true) => {}
                (_, false) => {
                    let (sender, receiver) = watch::channel(false);
                    running.insert(record.id, sender);
                    tokio::spawn(run_instance(node.clone(), record.clone(), receiver));
                }
            }
        }
    }
    for instance in to_remove {
        let _ = write(node, DeployCommand::RemoveInstance { instance }).await;
    }
}

async fn write(node: &NodeContext, command: DeployCommand) -> Result<(), ApiError> {
    super::write(node, command).await.map(drop)
}

/// Runs one instance until its record says stop; then removes the record.
async fn run_instance(node: Arc<NodeContext>, record: InstanceRecord, mut stop: watch::Receiver<bool>) {
    let id = record.id;
    match start(&node, &record).await {
        Ok(Started { mut child, port, in_container }) => {
            supervise(&node, &record, port, &mut child, &mut stop).await;
            if in_container {
                // Signals to the `docker run` client do not stop the container: ask the engine.
                stop_container(record.id).await;
            }
            terminate(&mut child).await;
        }
        Err(error) => {
            tracing::warn!(instance = id, %error, "instance did not start");
            let _ = write(&node, health_change(id, InstanceHealth::Unhealthy, Some(format!("did not start: {error}")))).await;
            stopped(&mut stop).await;
        }
    }
    node.driver.lock().remove(&id);
    if node.driver.shutting_down.load(std::sync::atomic::Ordering::SeqCst) {
        // The node stops, not the instance's record: it stays for the controllers to act on.
        return;
    }
    let _ = write(&node, DeployCommand::RemoveInstance { instance: id }).await;
}

fn health_change(instance: u64, health: InstanceHealth, message: Option<String>) -> DeployCommand {
    DeployCommand::SetInstanceHealth {
        instance,
        health,
        message,
        now_ms: crate::now_ms(),
    }
}

/// The release an instance runs: its revision's.
fn release_of(node: &NodeContext, record: &InstanceRecord) -> Result<Release, String> {
    node.meta
        .directory()
        .deployments(Some(record.env))
        .into_iter()
        .find(|d| d.revision == record.revision)
        .and_then(|d| d.release)
        .ok_or_else(|| format!("revision {} has no release", record.revision))
}

/// A started instance.
struct Started {
    /// Its process (for the Docker driver, the `docker run` client).
    child: tokio::process::Child,
    /// The port it serves on.
    port: u16,
    /// Whether it runs in a container (stopping it is then the engine's job).
    in_container: bool,
}

/// Starts the instance's process.
async fn start(node: &Arc<NodeContext>, record: &InstanceRecord) -> Result<Started, String> {
    let release = release_of(node, record)?;
    let directory = node.meta.directory();
    let env = directory.environment(record.env).ok_or("its environment is gone")?;
    let dir = fetch_artifacts(node, release.artifact_job).await?;
    let port = free_port().map_err(|e| format!("no free port: {e}"))?;
    let log = crate::capped_log::CappedLog::create(&instance_log_path(node, record.id), node.config.log_limit_bytes);
    let (output, writer) = std::io::pipe().map_err(|e| format!("pipe: {e}"))?;
    let variables = [
        ("PORT", port.to_string()),
        ("WHARF_ENVIRONMENT", env.name.clone()),
        ("WHARF_REVISION", record.revision.to_string()),
        ("WHARF_INSTANCE_ID", record.id.to_string()),
        ("WHARF_COMMIT_SHA", release.sha.clone()),
    ];
    let mut command = match &release.settings.driver {
        DriverSpec::Process => process_command(node, &dir, &release.command, env.config.memory, &variables)?,
        DriverSpec::Docker { image } => docker_command(&dir, &release.command, image, record.id, &env.config, &variables).await?,
    };
    let child = command
        .stdin(Stdio::null())
        .stdout(writer.try_clone().map_err(|e| format!("pipe: {e}"))?)
        .stderr(writer)
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start the instance: {e}"))?;
    // Our copies of the pipe's write end must go, or the copy never ends.
    drop(command);
    // The copy ends when the instance's last process closes its output.
    drop(log.copy_from(output));
    let pid = child.id().unwrap_or_default();
    write(node, DeployCommand::InstanceStarted { instance: record.id, port, pid })
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(instance = record.id, env = %env.name, revision = record.revision, port, "instance started");
    let in_container = matches!(release.settings.driver, DriverSpec::Docker { .. });
    Ok(Started { child, port, in_container })
}

/// The process driver: `sh` runs the command in the node's sandbox, which shows it its
/// release's files (read-only, as its working directory) and the machine's network, under a
/// data limit for the environment's memory. The data limit counts memory a process can write,
/// not address space it only reserves: an address-space limit starves threaded programs, whose
/// allocator reserves 64 MiB per thread arena.
fn process_command(
    node: &NodeContext,
    dir: &Path,
    command: &str,
    memory_gib: f64,
    variables: &[(&str, String)],
) -> Result<tokio::process::Command, String> {
    let confinement = Confinement {
        workdir: dir.to_owned(),
        readable: vec![dir.to_owned()],
        network: true,
        limits: Limits {
            data_bytes: (memory_gib > 0.0).then(|| (memory_gib * f64::from(1u32 << 30)) as u64),
            processes: None,
        },
        ..Confinement::default()
    };
    let mut process = node.sandbox.command("exec sh -c \"$WHARF_COMMAND\"", &confinement)?;
    // The release's directory is read-only; a program's scratch space is the sandbox's /tmp.
    process
        .env("HOME", "/tmp")
        .env("WHARF_COMMAND", command)
        .envs(variables.iter().map(|(name, value)| (*name, value)));
    Ok(process)
}

/// The name of instance `id`'s container.
fn container_name(id: u64) -> String {
    format!("wharf-instance-{id}")
}

/// The Docker driver: a container of `image` on the host's network (so `PORT` is the host's
/// port), the artifacts mounted read-only at `/app`, `--cpus` and `--memory` from the
/// environment. The `docker run` client is the instance's process: it ends when the container
/// does.
async fn docker_command(
    dir: &Path,
    command: &str,
    image: &str,
    id: u64,
    config: &wharf_proto::deploy::EnvConfig,
    variables: &[(&str, String)],
) -> Result<tokio::process::Command, String> {
    let engine = tokio::process::Command::new("docker").args(["version", "--format", "{{.Server.Version}}"]).output().await;
    if !engine.is_ok_and(|output| output.status.success()) {
        return Err("the docker driver needs a Docker engine, and none answers on this node".into());
    }
    // A container left by an earlier run of this node would hold the name.
    remove_container(id).await;
    let mut docker = tokio::process::Command::new("docker");
    docker.args(["run", "--rm", "--name", &container_name(id), "--network", "host", "--entrypoint", "sh"]);
    docker.arg("--volume").arg(format!("{}:/app:ro", dir.display())).args(["--workdir", "/app"]);
    if config.cpu > 0.0 {
        docker.arg("--cpus").arg(config.cpu.to_string());
    }
    if config.memory > 0.0 {
        docker.arg("--memory").arg(format!("{}m", (config.memory * 1024.0) as u64));
    }
    for (name, value) in variables {
        docker.arg("--env").arg(format!("{name}={value}"));
    }
    docker.arg(image).arg("-c").arg(command);
    Ok(docker)
}

/// Stops instance `id`'s container (SIGTERM, then SIGKILL after the grace period); `--rm`
/// removes it.
async fn stop_container(id: u64) {
    let grace = STOP_GRACE.as_secs().to_string();
    let _ = tokio::process::Command::new("docker")
        .args(["stop", "--time", &grace, &container_name(id)])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
}

async fn remove_container(id: u64) {
    let _ = tokio::process::Command::new("docker")
        .args(["rm", "--force", &container_name(id)])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
}

/// Where instance `id`'s output goes on this node.
fn instance_log_path(node: &NodeContext, id: u64) -> PathBuf {
    node.config.data_dir.join("deploy").join("logs").join(format!("instance-{id}.log"))
}

/// Reads up to [`wharf_proto::MAX_CHUNK_BYTES`] of instance `id`'s output from `offset`; `eof`
/// once everything written so far has been read.
pub(crate) fn read_instance_log(node: &NodeContext, id: u64, offset: u64) -> Result<wharf_proto::SessionChunk, ApiError> {
    let file = std::fs::File::open(instance_log_path(node, id)).map_err(|_| ApiError::NotFound {
        what: format!("the log of instance {id}"),
    })?;
    let data = crate::ci::read_at(file, offset)?;
    let eof = data.len() < wharf_proto::MAX_CHUNK_BYTES;
    Ok(wharf_proto::SessionChunk { data, eof })
}

/// Checks health until the process ends or the record says stop, recording each change.
async fn supervise(
    node: &NodeContext,
    record: &InstanceRecord,
    port: u16,
    child: &mut tokio::process::Child,
    stop: &mut watch::Receiver<bool>,
) {
    // The port comes from the start, not from the records: this node's copy of the records
    // may not show the start yet.
    let health = release_of(node, record).map(|r| r.health).unwrap_or_default();
    let mut checks = Checks::new(&health);
    let interval = Duration::from_millis(health.interval_ms.max(50));
    loop {
        tokio::select! {
            status = child.wait() => {
                let message = format!("its process ended ({})", status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()));
                let _ = write(node, health_change(record.id, InstanceHealth::Unhealthy, Some(message))).await;
                break;
            }
            () = stopped(stop) => return,
            _ = tokio::time::sleep(interval) => {
                let answer = check(&node.driver.checker, port, &health).await;
                if let Some(change) = checks.record(answer) {
                    let message = (change == InstanceHealth::Unhealthy).then(|| format!("{} failed {} times in a row", health.path, health.unhealthy_threshold));
                    let _ = write(node, health_change(record.id, change, message)).await;
                }
            }
        }
    }
    // The process is gone; the record stays (unhealthy) until a controller stops it.
    stopped(stop).await;
}

/// Resolves once the instance's record says stop.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    loop {
        let now = *stop.borrow_and_update();
        if now {
            return;
        }
        if stop.changed().await.is_err() {
            // The driver forgot the instance (the node stops): treat it as stopped.
            return;
        }
    }
}

/// Consecutive results of an instance's checks, and its health as they decide it.
///
/// Until the instance first answers at all, a check it does not answer (nothing listens yet,
/// or it is too slow while it starts) does not count: a slow start is judged by the progress
/// deadline, not by the failure threshold. A wrong answer always counts.
struct Checks {
    health: InstanceHealth,
    answered_once: bool,
    successes: u32,
    failures: u32,
    healthy_threshold: u32,
    unhealthy_threshold: u32,
}

impl Checks {
    fn new(health: &HealthCheck) -> Checks {
        Checks {
            health: InstanceHealth::Starting,
            answered_once: false,
            successes: 0,
            failures: 0,
            healthy_threshold: health.healthy_threshold.max(1),
            unhealthy_threshold: health.unhealthy_threshold.max(1),
        }
    }

    /// Counts one check (`None`: no answer; `Some(passed)`); returns the new health when it
    /// changes.
    fn record(&mut self, answer: Option<bool>) -> Option<InstanceHealth> {
        if answer.is_none() && !self.answered_once {
            return None;
        }
        self.answered_once |= answer.is_some();
        if answer == Some(true) {
            (self.successes, self.failures) = (self.successes + 1, 0);
        } else {
            (self.successes, self.failures) = (0, self.failures + 1);
        }
        let next = if self.successes >= self.healthy_threshold {
            InstanceHealth::Healthy
        } else if self.failures >= self.unhealthy_threshold {
            InstanceHealth::Unhealthy
        } else {
            self.health
        };
        (next != self.health).then(|| {
            self.health = next;
            next
        })
    }
}

/// One HTTP health check: GET the path; a 2xx or 3xx answer within the timeout passes.
/// `None` when there is no answer in time.
async fn check(client: &reqwest::Client, port: u16, health: &HealthCheck) -> Option<bool> {
    let url = format!("http://127.0.0.1:{port}{}", health.path);
    let request = client
        .get(&url)
        .header(reqwest::header::HOST, "localhost")
        // The timeout covers the whole exchange, the body included.
        .timeout(Duration::from_millis(health.timeout_ms.max(10)));
    let answer = match request.send().await {
        Ok(answer) => answer,
        // A path that makes no URL is a wrong answer, not silence: it counts as a failure.
        Err(error) if error.is_builder() => return Some(false),
        Err(_) => return None,
    };
    let passed = answer.status().is_success() || answer.status().is_redirection();
    // Read the whole answer, so that the instance never writes to a connection its checker
    // has already dropped; an answer cut off or too slow counts as none.
    answer.bytes().await.ok()?;
    Some(passed)
}

/// Stops a process group: SIGTERM, then SIGKILL after the grace period.
async fn terminate(child: &mut tokio::process::Child) {
    let Some(pid) = child.id() else { return };
    signal_group(pid, rustix::process::Signal::TERM);
    if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_err() {
        signal_group(pid, rustix::process::Signal::KILL);
        let _ = child.wait().await;
    }
}

/// Signals the process group led by `pid` (the instance was started as its own group). A
/// group already gone is not an error worth reporting: stopping it is what was wanted.
fn signal_group(pid: u32, signal: rustix::process::Signal) {
    if let Some(group) = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw) {
        let _ = rustix::process::kill_process_group(group, signal);
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("0.0.0.0:0")?.local_addr()?.port())
}

/// The artifacts of job `job` in this node's release cache, fetched from the node that ran it
/// the first time.
async fn fetch_artifacts(node: &Arc<NodeContext>, job: u64) -> Result<PathBuf, String> {
    let dir = node.config.data_dir.join("deploy").join("releases").join(format!("job-{job}"));
    let complete = dir.join(".complete");
    if complete.exists() {
        return Ok(dir);
    }
    let _held = node.driver.fetching.lock().await;
    if complete.exists() {
        return Ok(dir);
    }
    let record = node.meta.directory().job(job).ok_or_else(|| format!("job {job} is gone"))?;
    let from = record.node.ok_or_else(|| format!("job {job} never ran"))?;
    let partial = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    for file in &record.artifacts {
        fetch_file(node, from, job, &file.path, &partial.join(&file.path)).await.map_err(|e| e.to_string())?;
    }
    std::fs::create_dir_all(&partial).map_err(|e| e.to_string())?;
    std::fs::write(partial.join(".complete"), b"").map_err(|e| e.to_string())?;
    // Once per release, not per instance: the sandbox user reads it (read-only).
    node.sandbox.share_read_only(&partial).map_err(|e| format!("cannot share the release with the sandbox: {e}"))?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&partial, &dir).map_err(|e| e.to_string())?;
    Ok(dir)
}

async fn fetch_file(node: &NodeContext, from: wharf_proto::NodeId, job: u64, path: &str, target: &Path) -> Result<(), ApiError> {
    let path = path.to_owned();
    crate::mover::pull_chunks(node, from, target, |offset| NodeRequest::ReadArtifact { job, path: path.clone(), offset }).await?;
    // Artifacts keep no modes; a release's scripts must be runnable.
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(target, std::fs::Permissions::from_mode(0o755));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_changes_after_the_thresholds_only() {
        let mut checks = Checks::new(&HealthCheck {
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            ..HealthCheck::default()
        });
        for _ in 0..5 {
            assert_eq!(checks.record(None), None, "no answer while starting does not count");
        }
        assert_eq!(checks.record(Some(true)), None);
        assert_eq!(checks.record(Some(true)), Some(InstanceHealth::Healthy));
        assert_eq!(checks.record(Some(false)), None);
        assert_eq!(checks.record(None), None);
        assert_eq!(checks.record(Some(true)), None, "a success resets the failures");
        let failing = [checks.record(Some(false)), checks.record(None), checks.record(Some(false))];
        assert_eq!(failing, [None, None, Some(InstanceHealth::Unhealthy)], "once it has answered, silence counts");
    }
}
