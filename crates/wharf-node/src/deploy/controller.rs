//! Deployment controllers: any node takes the next deployment of an environment (one at a
//! time, in order) with a lease, and drives it step by step ([`super::strategy`]) until it
//! completes, fails, or rolls back.
//!
//! Everything a controller knows is in the records, so when its node dies another node takes
//! the deployment over once the lease has run out and carries on. A release that cannot
//! become healthy (an unhealthy new instance, or the progress deadline) is rolled back to the
//! environment's last good revision with the same strategy, once: a failed rollback fails.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wharf_meta::DeployCommand;
use wharf_proto::deploy::{
    DeploymentKind, DeploymentRecord, DeploymentStatus, InstanceHealth, InstanceRecord, InstanceTraffic, Release, Strategy,
};
use wharf_proto::{ApiError, Directory, NodeReply, NodeRequest, NodeState, RepoRequest, ROUTERS_GROUP};

use super::strategy::{next_step, Situation, Step};
use crate::background::Wake;
use crate::NodeContext;

/// How often a controller looks at its deployment.
const TICK: Duration = Duration::from_millis(200);
/// How long a controller holds a deployment without renewing.
const LEASE: Duration = Duration::from_secs(10);

/// The deployments this node controls now.
#[derive(Default)]
pub(crate) struct Controllers {
    active: Mutex<HashSet<u64>>,
}

impl Controllers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<u64>> {
        self.active.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Starts the loop that takes deployments under the node's
/// [`crate::background::Background`], every [`TICK`]. Not on every change: it reads every
/// environment and deployment, and a burst of CI writes would run it hundreds of times a
/// second for nothing (measured: one-node job throughput halved).
pub(crate) fn spawn_controllers(node: &Arc<NodeContext>) {
    node.background.spawn_loop("deployment-controllers", Arc::downgrade(node), Wake::Every(TICK), |node| async move {
        take_deployments(&node).await;
        if node.meta.status().leader == Some(node.config.id.0) {
            repair_environments(&node).await;
        }
    });
}

async fn take_deployments(node: &Arc<NodeContext>) {
    let directory = node.meta.directory();
    let me = node.config.id;
    if !directory.nodes().iter().any(|n| n.id == me && n.state == NodeState::Active) {
        return;
    }
    let now_ms = crate::now_ms();
    let unfinished: Vec<DeploymentRecord> = directory.deployments(None).into_iter().filter(|d| !d.status.is_finished()).collect();
    for deployment in &unfinished {
        let first_in_line = unfinished.iter().filter(|d| d.env == deployment.env).map(|d| d.id).min() == Some(deployment.id);
        let free = match deployment.status {
            DeploymentStatus::Pending => first_in_line,
            _ => deployment.lease_until_ms.is_none_or(|until| until < now_ms),
        };
        if !free || node.controllers.lock().contains(&deployment.id) {
            continue;
        }
        let claim = DeployCommand::ClaimDeployment {
            deployment: deployment.id,
            node: me,
            now_ms,
            lease_ms: LEASE.as_millis() as u64,
        };
        if super::write(node, claim).await.is_err() {
            continue;
        }
        node.controllers.lock().insert(deployment.id);
        let (node, id) = (node.clone(), deployment.id);
        tokio::spawn(async move {
            if let Err(error) = drive(&node, id).await {
                tracing::warn!(deployment = id, %error, "deployment controller stopped");
            }
            node.controllers.lock().remove(&id);
        });
    }
}

/// Marks stopped the instances whose node is out of reach, so that the strategy starts their
/// replacements elsewhere (and the router stops trying them). Whether it stopped any.
async fn stop_lost_instances(node: &NodeContext, instances: &[InstanceRecord]) -> Result<bool, ApiError> {
    let mut stopped = false;
    for instance in instances.iter().filter(|i| !crate::mover::is_reachable(i.node)) {
        let message = format!("its node {} is out of reach", instance.node);
        super::write(node, DeployCommand::StopInstance { instance: instance.id, message }).await?;
        stopped = true;
    }
    Ok(stopped)
}

/// Between deployments, at the Raft leader: an environment whose instance died or went
/// unhealthy gets a new one, so it runs as many instances of its revision as it should.
async fn repair_environments(node: &NodeContext) {
    let directory = node.meta.directory();
    let busy: HashSet<u64> = directory.deployments(None).iter().filter(|d| !d.status.is_finished()).map(|d| d.env).collect();
    for env in directory.environments(None) {
        let Some(revision) = env.current_revision.filter(|_| !busy.contains(&env.id)) else { continue };
        let Some(release) = release_of(&directory.deployments(Some(env.id)), revision) else { continue };
        let instances: Vec<InstanceRecord> =
            directory.instances(Some(env.id)).into_iter().filter(|i| i.health != InstanceHealth::Stopped).collect();
        if stop_lost_instances(node, &instances).await.unwrap_or(false) {
            continue;
        }
        let (live, dead): (Vec<&InstanceRecord>, Vec<&InstanceRecord>) =
            instances.iter().partition(|i| i.revision == revision && i.health != InstanceHealth::Unhealthy);
        for instance in dead {
            let message = format!("replaced: {}", instance.message.as_deref().unwrap_or("not of the serving revision"));
            let _ = super::write(node, DeployCommand::StopInstance { instance: instance.id, message }).await;
        }
        let desired = release.settings.instances as usize;
        if live.len() < desired {
            tracing::info!(env = %env.name, live = live.len(), desired, "starting a replacement instance");
            let _ = start_instance(node, env.id, revision, 1, &instances).await;
        }
        for extra in live.iter().rev().take(live.len().saturating_sub(desired)) {
            let message = "more instances than the environment runs".to_owned();
            let _ = super::write(node, DeployCommand::StopInstance { instance: extra.id, message }).await;
        }
    }
}

/// A controller's handle on its deployment.
struct Control<'a> {
    node: &'a Arc<NodeContext>,
    id: u64,
    /// When the current phase (the rollout, or the rollback) started, for its deadline.
    phase_started_ms: u64,
    last_details: String,
    /// The canary step being watched: its index, when its pause began, and the router's
    /// counts for the new set then.
    canary: Option<(usize, u64, BTreeMap<u64, InstanceTraffic>)>,
}

impl Control<'_> {
    /// Reports progress; renews the lease in passing. A refusal means this node lost the
    /// deployment.
    async fn update(&mut self, change: Update) -> Result<(), ApiError> {
        if change.details.as_ref() == Some(&self.last_details) && change.is_only_details() {
            // Nothing new to say; the drive loop renews the lease on its own schedule.
            return Ok(());
        }
        if let Some(details) = &change.details {
            self.last_details = details.clone();
        }
        let command = DeployCommand::UpdateDeployment {
            deployment: self.id,
            node: self.node.config.id,
            lease_until_ms: crate::now_ms() + LEASE.as_millis() as u64,
            release: change.release,
            status: change.status,
            details: change.details,
            reverting_to: change.reverting_to,
            event: change.event,
            now_ms: crate::now_ms(),
        };
        super::write(self.node, command).await.map(drop)
    }

    async fn renew(&mut self) -> Result<(), ApiError> {
        self.update(Update::default()).await
    }

    fn record(&self) -> Option<DeploymentRecord> {
        self.node.meta.directory().deployment(self.id)
    }
}

/// One progress report.
#[derive(Default)]
struct Update {
    release: Option<Release>,
    status: Option<DeploymentStatus>,
    details: Option<String>,
    reverting_to: Option<u64>,
    event: Option<String>,
}

impl Update {
    fn is_only_details(&self) -> bool {
        self.release.is_none() && self.status.is_none() && self.reverting_to.is_none() && self.event.is_none()
    }

    fn failed(reason: String) -> Update {
        Update {
            status: Some(DeploymentStatus::Failed),
            details: Some(reason.clone()),
            event: Some(reason),
            ..Update::default()
        }
    }

    fn details(details: String) -> Update {
        Update {
            details: Some(details),
            ..Update::default()
        }
    }
}

/// Drives deployment `id` until it has finished or this node has lost it.
async fn drive(node: &Arc<NodeContext>, id: u64) -> Result<(), ApiError> {
    let mut control = Control {
        node,
        id,
        phase_started_ms: crate::now_ms(),
        last_details: String::new(),
        canary: None,
    };
    let mut last_renewal = crate::now_ms();
    loop {
        let Some(record) = control.record() else { return Ok(()) };
        if record.status.is_finished() || record.controller != Some(node.config.id) {
            return Ok(());
        }
        if record.release.is_none() {
            match plan(node, &record).await {
                Ok(release) => {
                    control
                        .update(Update {
                            event: Some(format!("deploying {} ({} instances)", short(&release.sha), release.settings.instances)),
                            release: Some(release),
                            ..Update::default()
                        })
                        .await?;
                }
                Err(reason) => {
                    control.update(Update::failed(reason)).await?;
                    return Ok(());
                }
            }
            continue;
        }
        step(&mut control, &record).await?;
        if crate::now_ms() - last_renewal > LEASE.as_millis() as u64 / 3 {
            control.renew().await?;
            last_renewal = crate::now_ms();
        }
        tokio::time::sleep(TICK).await;
    }
}

/// Takes one step of the rollout (or of the rollback, once it rolls back).
async fn step(control: &mut Control<'_>, record: &DeploymentRecord) -> Result<(), ApiError> {
    let node = control.node;
    let directory = node.meta.directory();
    let target = record.reverting_to.unwrap_or(record.revision);
    let Some(release) = release_of(&directory.deployments(Some(record.env)), target) else {
        return fail(control, record, format!("revision {target} has no release to run")).await;
    };
    let instances: Vec<InstanceRecord> =
        directory.instances(Some(record.env)).into_iter().filter(|i| i.health != InstanceHealth::Stopped).collect();
    if stop_lost_instances(node, &instances).await? {
        return Ok(());
    }
    let now_ms = crate::now_ms();
    let deadline = release.settings.progress_deadline_ms;
    // A failed canary goes back at once: the stable set still runs and takes all traffic again.
    let strategy = match (&release.settings.strategy, record.reverting_to) {
        (Strategy::Canary { .. }, Some(_)) => Strategy::BlueGreen {
            auto_promote: true,
            scale_down_delay_ms: 0,
        },
        (strategy, _) => strategy.clone(),
    };
    let situation = Situation {
        target,
        desired: release.settings.instances,
        strategy: &strategy,
        instances: &instances,
        promoted: record.promoted,
        now_ms,
    };
    let step = next_step(&situation);
    if record.status == DeploymentStatus::Paused && step != Step::AwaitPromotion {
        control
            .update(Update {
                status: Some(DeploymentStatus::InProgress),
                event: Some("promoted".into()),
                ..Update::default()
            })
            .await?;
    }
    match step {
        Step::Start { count, weight } => {
            for _ in 0..count {
                start_instance(node, record.env, target, weight, &instances).await?;
            }
            Ok(())
        }
        Step::Weights(weights) => super::write(node, DeployCommand::SetWeights { weights, now_ms }).await.map(drop),
        Step::Stop(ids) => {
            for instance in ids {
                let message = "replaced by a newer revision".to_owned();
                super::write(node, DeployCommand::StopInstance { instance, message }).await?;
            }
            Ok(())
        }
        Step::Failed(reason) => fail(control, record, reason).await,
        Step::Analyze { index, share } => analyze(control, record, &strategy, &instances, target, index, share).await,
        Step::AwaitPromotion if record.status == DeploymentStatus::Paused => Ok(()),
        Step::AwaitPromotion => {
            control
                .update(Update {
                    status: Some(DeploymentStatus::Paused),
                    details: Some("the new set is ready at the preview route; waiting for promotion".into()),
                    event: Some("paused for promotion".into()),
                    ..Update::default()
                })
                .await
        }
        Step::Done => {
            let (status, event) = match record.reverting_to {
                Some(good) => (DeploymentStatus::RolledBack, format!("rolled back to revision {good}")),
                None => (DeploymentStatus::Completed, format!("revision {} serves", record.revision)),
            };
            let details = format!("{} of {} instances on revision {target}", release.settings.instances, release.settings.instances);
            control
                .update(Update {
                    status: Some(status),
                    details: Some(details),
                    event: Some(event),
                    ..Update::default()
                })
                .await
        }
        Step::Wait(details) if now_ms.saturating_sub(control.phase_started_ms) > deadline => {
            let reason = format!("not healthy within the progress deadline of {} s ({details})", deadline / 1000);
            fail(control, record, reason).await
        }
        Step::Wait(details) => {
            let details = match record.reverting_to {
                Some(good) => format!("rolling back to revision {good}: {details}"),
                None => details,
            };
            control.update(Update::details(details)).await
        }
    }
}

/// One canary step: after its pause, the new set's error rate as the fronts' routers saw it
/// decides between the next step and an abort.
async fn analyze(
    control: &mut Control<'_>,
    record: &DeploymentRecord,
    strategy: &Strategy,
    instances: &[InstanceRecord],
    target: u64,
    index: usize,
    share: u32,
) -> Result<(), ApiError> {
    let Strategy::Canary {
        steps,
        pause_ms,
        max_error_rate,
        max_latency_ms,
    } = strategy
    else {
        return Ok(());
    };
    let new_ids: Vec<u64> = instances.iter().filter(|i| i.revision == target).map(|i| i.id).collect();
    let now_ms = crate::now_ms();
    if control.canary.as_ref().is_none_or(|(watched, _, _)| *watched != index) {
        let baseline = router_traffic(control.node, &new_ids).await;
        control.canary = Some((index, now_ms, baseline));
        return control
            .update(Update {
                details: Some(format!("canary at {share}%")),
                event: Some(format!("canary at {share}%; checking for {} s", pause_ms / 1000)),
                ..Update::default()
            })
            .await;
    }
    let Some((_, started_ms, baseline)) = &control.canary else { return Ok(()) };
    if now_ms.saturating_sub(*started_ms) < *pause_ms {
        return Ok(());
    }
    let current = router_traffic(control.node, &new_ids).await;
    let (requests, errors, latency_ms) = current.values().fold((0, 0, 0), |(requests, errors, latency), now| {
        let seen = now.since(baseline.get(&now.instance).unwrap_or(&InstanceTraffic::default()));
        (requests + seen.requests, errors + seen.errors, latency + seen.latency_ms)
    });
    let rate = if requests == 0 { 0.0 } else { errors as f64 / requests as f64 };
    let mean_latency_ms = latency_ms.checked_div(requests).unwrap_or(0);
    if let Some(max) = max_latency_ms.filter(|max| mean_latency_ms > *max) {
        let reason = format!("canary at {share}%: its requests took {mean_latency_ms} ms on average, the most allowed is {max} ms");
        return fail(control, record, reason).await;
    }
    if rate > *max_error_rate {
        let reason = format!(
            "canary at {share}%: {errors} of {requests} requests failed ({:.1}%, the most allowed is {:.1}%)",
            rate * 100.0,
            max_error_rate * 100.0
        );
        return fail(control, record, reason).await;
    }
    let next = steps.get(index + 1).copied().unwrap_or(100);
    control
        .update(Update {
            event: Some(format!(
                "canary at {share}%: {errors} of {requests} requests failed, {mean_latency_ms} ms on average; on to {next}%"
            )),
            ..Update::default()
        })
        .await?;
    let new: Vec<&InstanceRecord> = instances.iter().filter(|i| i.revision == target).collect();
    let old: Vec<&InstanceRecord> = instances.iter().filter(|i| i.revision != target).collect();
    let weights = super::strategy::switch_weights(&new, &old, next);
    super::write(control.node, DeployCommand::SetWeights { weights, now_ms }).await.map(drop)
}

/// What every front's router has counted for `instances`, added up.
async fn router_traffic(node: &NodeContext, instances: &[u64]) -> BTreeMap<u64, InstanceTraffic> {
    let request = NodeRequest::RouterStats {
        instances: instances.to_vec(),
    };
    let mut total: BTreeMap<u64, InstanceTraffic> = BTreeMap::new();
    let replies = node.peers.call_group(ROUTERS_GROUP, &request, Duration::from_secs(2)).await;
    if replies.is_empty() {
        tracing::warn!("no front's router answered: the canary check sees no traffic");
    }
    for reply in replies {
        let NodeReply::RouterStats(counts) = reply else { continue };
        for count in counts {
            let sum = total.entry(count.instance).or_insert(InstanceTraffic {
                instance: count.instance,
                ..InstanceTraffic::default()
            });
            sum.requests += count.requests;
            sum.errors += count.errors;
            sum.latency_ms += count.latency_ms;
        }
    }
    total
}

/// A release that cannot become healthy: roll back to the last good revision once, or fail.
async fn fail(control: &mut Control<'_>, record: &DeploymentRecord, reason: String) -> Result<(), ApiError> {
    let directory = control.node.meta.directory();
    let last_good = directory.environment(record.env).and_then(|e| e.last_good_revision);
    let auto_revert = record.release.as_ref().is_none_or(|r| r.settings.auto_revert);
    if let (None, Some(good), true) = (record.reverting_to, last_good, auto_revert) {
        if good != record.revision {
            control.phase_started_ms = crate::now_ms();
            return control
                .update(Update {
                    reverting_to: Some(good),
                    details: Some(format!("rolling back to revision {good}: {reason}")),
                    event: Some(format!("{reason}; rolling back to revision {good}")),
                    ..Update::default()
                })
                .await;
        }
    }
    // Nothing to return to (or the rollback itself failed): stop what does not serve.
    let failing = record.reverting_to.unwrap_or(record.revision);
    for instance in directory.instances(Some(record.env)) {
        if instance.revision == failing && instance.health != InstanceHealth::Healthy && instance.health != InstanceHealth::Stopped {
            super::write(control.node, DeployCommand::StopInstance { instance: instance.id, message: reason.clone() }).await?;
        }
    }
    control.update(Update::failed(reason)).await
}

fn release_of(deployments: &[DeploymentRecord], revision: u64) -> Option<Release> {
    deployments.iter().find(|d| d.revision == revision).and_then(|d| d.release.clone())
}

/// Adds an instance on the active node that runs the fewest of this environment's instances
/// (then the fewest in all), so that instances spread over the cluster.
async fn start_instance(node: &NodeContext, env: u64, revision: u64, weight: u32, instances: &[InstanceRecord]) -> Result<(), ApiError> {
    let directory = node.meta.directory();
    let all = directory.instances(None);
    let target = directory
        .nodes()
        .into_iter()
        .filter(|n| n.state == NodeState::Active && crate::mover::is_reachable(n.id))
        .min_by_key(|n| {
            let here = instances.iter().filter(|i| i.node == n.id).count();
            let total = all.iter().filter(|i| i.node == n.id && i.health != InstanceHealth::Stopped).count();
            (here, total, n.id.0)
        })
        .ok_or_else(|| ApiError::Unavailable {
            what: "deployment".into(),
            reason: "no active node to run an instance".into(),
            retry_after_secs: 5,
        })?;
    let host = target.addr.rsplit_once(':').map(|(host, _)| host.to_owned()).unwrap_or_else(|| "127.0.0.1".into());
    let command = DeployCommand::AddInstance {
        env,
        revision,
        node: target.id,
        host,
        weight,
        now_ms: crate::now_ms(),
    };
    super::write(node, command).await.map(drop)
}

/// What a deployment of a commit runs: the `deploy:` section of its pipeline file, and the
/// artifacts of the `from` job of a pipeline that passed it at that commit.
async fn plan(node: &NodeContext, record: &DeploymentRecord) -> Result<Release, String> {
    if let DeploymentKind::Rollback { to_revision } = record.kind {
        return Err(format!("revision {to_revision} has no release to return to"));
    }
    let directory = node.meta.directory();
    let env = directory.environment(record.env).ok_or("the environment is gone")?;
    let repo = directory.repo_by_id(env.repo).ok_or("the repository is gone")?;
    let request = NodeRequest::Repo {
        id: repo.id,
        name: repo.name.clone(),
        request: RepoRequest::Blob {
            rev: Some(record.sha.clone()),
            path: wharf_ci::PIPELINE_FILE.into(),
        },
    };
    let text = match node.peers.call(repo.node, &request).await {
        Ok(NodeReply::Blob(blob)) => String::from_utf8_lossy(&blob.content).into_owned(),
        Ok(other) => return Err(format!("reading {}: unexpected reply {other:?}", wharf_ci::PIPELINE_FILE)),
        Err(error) => return Err(format!("reading {} at {}: {error}", wharf_ci::PIPELINE_FILE, short(&record.sha))),
    };
    let pipeline = wharf_ci::Pipeline::parse(&text).map_err(|e| format!("{}: {e}", wharf_ci::PIPELINE_FILE))?;
    let spec = pipeline
        .deploy
        .ok_or_else(|| format!("{} at {} has no deploy section", wharf_ci::PIPELINE_FILE, short(&record.sha)))?;
    // The pipeline may have passed a moment ago: this node's copy of the records can lag the
    // leader's by a replication round, so wait a little for it to show the passed job.
    let found = |directory: &dyn Directory| passed_artifact_job(directory, repo.id, &record.sha, &spec.from);
    let _ = node.meta.wait_for_state(Duration::from_secs(5), "the passed job", |d| found(d).is_some()).await;
    let artifact_job = found(node.meta.directory().as_ref())
        .ok_or_else(|| format!("no passed run of job {:?} with artifacts at {}: run its pipeline first", spec.from, short(&record.sha)))?;
    Ok(Release {
        sha: record.sha.clone(),
        artifact_job: artifact_job.id,
        command: spec.command.clone(),
        health: spec.health.clone(),
        settings: spec.environment(&env.name),
    })
}

/// The newest passed run of job `name` with artifacts among the pipelines of `sha`.
fn passed_artifact_job(directory: &dyn Directory, repo: wharf_proto::RepoId, sha: &str, name: &str) -> Option<wharf_proto::JobRecord> {
    directory
        .pipelines(repo, 100)
        .into_iter()
        .filter(|p| p.sha == sha)
        .flat_map(|p| p.jobs)
        .filter_map(|job| directory.job(job))
        .find(|job| job.name == name && job.status == wharf_proto::JobStatus::Passed && !job.artifacts.is_empty())
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}
