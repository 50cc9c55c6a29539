//! This node's runner: it takes queued jobs into free slots, keeps their leases, and stops them
//! when they are canceled or their lease is lost.
//!
//! Taking a job is a Raft write ([`CiCommand::ClaimJob`]) that only one runner can win, so
//! runners on every node may race for the same job. The lease is renewed every third of its
//! length; if a renewal is refused (the job was canceled, or the lease ran out while this node
//! was cut off and another runner took it), the job's processes are killed and its result is
//! never reported. The Raft leader's runner also ends leases that ran out
//! ([`CiCommand::ExpireLeases`]), so a job whose node died is queued again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Semaphore};
use wharf_meta::CiCommand;
use wharf_proto::{JobRecord, JobStatus, NodeState};

use crate::background::Wake;
use crate::NodeContext;

/// The longest an idle runner waits before it looks for queued jobs again; it looks at once
/// whenever the metadata applies an entry (a job queued, a slot's job finished).
const CLAIM_AT_LEAST_EVERY: Duration = Duration::from_secs(5);
/// How often the leader looks for leases that ran out.
const EXPIRY_CHECK: Duration = Duration::from_secs(1);

/// Why a running job must stop before its script ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// A user canceled it.
    Canceled,
    /// Its lease is gone: another runner may run it now.
    LeaseLost,
    /// This node is shutting down.
    Shutdown,
}

/// This node's runner slots and the jobs running in them.
pub(crate) struct Runner {
    slots: Arc<Semaphore>,
    /// How many slots there are.
    total: usize,
    /// A stop signal for each job running here, by job id.
    running: Mutex<HashMap<u64, watch::Sender<Option<Stop>>>>,
    /// One lock per repository mirror, so two jobs never fetch into one at once.
    mirrors: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<()>>>>,
    /// Notified when a job's slot frees, to wake the claimer.
    slot_freed: Arc<tokio::sync::Notify>,
}

impl Runner {
    pub fn new(slots: usize) -> Runner {
        Runner {
            // Zero slots is allowed: a node that stores repositories but runs no jobs.
            slots: Arc::new(Semaphore::new(slots)),
            total: slots,
            running: Mutex::new(HashMap::new()),
            mirrors: Mutex::new(HashMap::new()),
            slot_freed: Arc::default(),
        }
    }

    /// Registers a job that starts here; the receiver says when it must stop.
    pub(super) fn track(&self, job: u64) -> watch::Receiver<Option<Stop>> {
        let (sender, receiver) = watch::channel(None);
        self.lock_running().insert(job, sender);
        receiver
    }

    pub(super) fn untrack(&self, job: u64) {
        self.lock_running().remove(&job);
    }

    fn stop(&self, job: u64, why: Stop) {
        if let Some(sender) = self.lock_running().get(&job) {
            // The first reason wins: a job canceled and then cut off was canceled.
            sender.send_if_modified(|current| {
                let first = current.is_none();
                if first {
                    *current = Some(why);
                }
                first
            });
        }
    }

    /// Slots in all, and slots running a job now.
    pub fn slots(&self) -> (usize, usize) {
        (self.total, self.total.saturating_sub(self.slots.available_permits()))
    }

    /// Stops every job running here (the node is shutting down).
    pub fn stop_all(&self) {
        for sender in self.lock_running().values() {
            let _ = sender.send(Some(Stop::Shutdown));
        }
    }

    fn running_ids(&self) -> Vec<u64> {
        self.lock_running().keys().copied().collect()
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, HashMap<u64, watch::Sender<Option<Stop>>>> {
        self.running.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The lock of repository `repo`'s mirror.
    pub(super) fn mirror_lock(&self, repo: u64) -> Arc<tokio::sync::Mutex<()>> {
        let mut mirrors = self.mirrors.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        mirrors.entry(repo).or_default().clone()
    }
}

/// Starts the runner loops of `node` under its [`crate::background::Background`].
pub(crate) fn spawn_runner(node: &Arc<NodeContext>) {
    let weak = Arc::downgrade(node);
    // A job's end is applied before its slot frees (the slot is held until its result is
    // recorded), so the claimer is also woken when a slot frees: otherwise the next queued
    // job waited for some other change, or CLAIM_AT_LEAST_EVERY.
    let wake = Wake::OnChangeOr(CLAIM_AT_LEAST_EVERY, node.runner.slot_freed.clone());
    node.background.spawn_loop("runner-claim", weak.clone(), wake, |node| async move {
        claim_queued(&node).await;
        watch_running(&node);
    });
    node.background.spawn_loop("runner-lease-expiry", weak.clone(), Wake::Every(EXPIRY_CHECK), |node| async move {
        expire_leases(&node).await;
    });
    node.background.spawn_loop("file-sweeper", weak, Wake::Every(super::files::SWEEP_PERIOD), |node| async move {
        super::files::sweep(&node).await;
    });
}

/// Takes as many queued jobs as there are free slots, unless this node is being drained.
async fn claim_queued(node: &Arc<NodeContext>) {
    let directory = node.meta.directory();
    let me = node.config.id;
    let accepting = directory.nodes().iter().any(|n| n.id == me && n.state == NodeState::Active);
    let free = node.runner.slots.available_permits();
    // A node that cannot confine jobs runs none; its start said so, and so does
    // `/api/v1/cluster`.
    if !accepting || free == 0 || node.sandbox.ready().is_err() {
        return;
    }
    // Look at a few more than there are slots: other runners may win some of them.
    for job in directory.queued_jobs(free * 4) {
        let Ok(permit) = node.runner.slots.clone().try_acquire_owned() else { return };
        let command = CiCommand::ClaimJob {
            job: job.id,
            node: me,
            now_ms: crate::now_ms(),
            lease_ms: node.config.job_lease.as_millis() as u64,
        };
        // Read before the claim is applied: afterwards the record holds this attempt's lease.
        let queued_since = crate::telemetry::queued_since(directory.as_ref(), &job);
        if super::write(node, command, "claim job").await.is_err() {
            // Another runner took it, or it was canceled meanwhile.
            continue;
        }
        let claimed = JobRecord {
            status: JobStatus::Running,
            node: Some(me),
            attempt: job.attempt + 1,
            ..job
        };
        tracing::info!(job = claimed.id, name = %claimed.name, attempt = claimed.attempt, "job claimed");
        if let Some(since) = queued_since {
            let waited = crate::now_ms().saturating_sub(since);
            metrics::histogram!("wharf_ci_job_queue_wait_seconds").record(waited as f64 / 1000.0);
        }
        let stop = node.runner.track(claimed.id);
        let lease = tokio::spawn(keep_lease(node.clone(), claimed.clone()));
        let node = node.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            super::job::run(&node, &claimed, stop).await;
            metrics::histogram!("wharf_ci_job_run_seconds").record(started.elapsed().as_secs_f64());
            lease.abort();
            node.runner.untrack(claimed.id);
            drop(permit);
            node.runner.slot_freed.notify_one();
        });
    }
}

/// Stops jobs running here that a user canceled.
fn watch_running(node: &NodeContext) {
    let directory = node.meta.directory();
    for id in node.runner.running_ids() {
        if directory.job(id).is_some_and(|job| job.status == JobStatus::Canceled) {
            node.runner.stop(id, Stop::Canceled);
        }
    }
}

/// Renews the job's lease until the task is aborted; a refused renewal stops the job.
async fn keep_lease(node: Arc<NodeContext>, job: JobRecord) {
    let lease = node.config.job_lease;
    loop {
        tokio::time::sleep(lease / 3).await;
        let command = CiCommand::RenewLease {
            job: job.id,
            node: node.config.id,
            attempt: job.attempt,
            until_ms: crate::now_ms() + lease.as_millis() as u64,
        };
        match super::write(&node, command, "renew lease").await {
            Ok(_) => {}
            Err(wharf_proto::ApiError::Conflict { .. }) => {
                let canceled = node.meta.directory().job(job.id).is_some_and(|j| j.status == JobStatus::Canceled);
                node.runner.stop(job.id, if canceled { Stop::Canceled } else { Stop::LeaseLost });
                return;
            }
            // No leader for now: try again; the lease still runs.
            Err(error) => tracing::warn!(job = job.id, %error, "lease not renewed"),
        }
    }
}

/// At the Raft leader: ends leases that ran out, so their jobs run elsewhere.
async fn expire_leases(node: &NodeContext) {
    if node.meta.status().leader != Some(node.config.id.0) {
        return;
    }
    let now_ms = crate::now_ms();
    let expired = node
        .meta
        .directory()
        .running_jobs()
        .iter()
        .any(|job| job.lease_until_ms.is_some_and(|until| until < now_ms));
    if expired {
        tracing::warn!("a runner's lease ran out; its job goes back to the queue");
        if let Err(error) = super::write(node, CiCommand::ExpireLeases { now_ms }, "expire leases").await {
            tracing::warn!(%error, "leases not expired");
        }
    }
}
