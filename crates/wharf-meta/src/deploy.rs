//! The deployment part of the metadata: environments, their numbered deployments, and the
//! instances that run them (which the front routes to).
//!
//! - Deployments to one environment run one at a time, in the order they were asked for: a
//!   controller on any node may claim only the oldest unfinished deployment of an environment,
//!   with a lease it renews; if its node dies, another node claims the deployment once the
//!   lease has run out and carries on from the records.
//! - Instances are records first: a controller adds one naming a node, that node's driver
//!   starts the process and reports its port and health, and a controller stops one by marking
//!   it stopped (the driver then kills it and removes the record). Traffic weights change in
//!   one command, so the route table changes atomically.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use wharf_proto::deploy::{
    DeployEvent, DeploymentKind, DeploymentRecord, DeploymentStatus, EnvConfig, EnvironmentRecord, InstanceHealth,
    InstanceRecord, Release,
};
use wharf_proto::{ApiError, NodeId, RepoId};

/// Events kept per deployment.
const MAX_EVENTS: usize = 200;

/// A change to environments, deployments or instances.
// A command lives as long as its proposal and its log entry's decoding: its size in memory
// does not matter, and boxing the release would only add noise at every use.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DeployCommand {
    /// Create an environment of a repository.
    CreateEnvironment {
        /// The repository.
        repo: RepoId,
        /// Its name, unique within the repository.
        name: String,
        /// Instance size.
        config: EnvConfig,
        /// Deploys only on an explicit call.
        protected: bool,
        /// When.
        now_ms: u64,
    },
    /// Change an environment's size or protection.
    UpdateEnvironment {
        /// The environment.
        env: u64,
        /// New size, if it changes.
        config: Option<EnvConfig>,
        /// New protection, if it changes.
        protected: Option<bool>,
    },
    /// Remove an environment: its instances are marked stopped (their drivers stop them) and
    /// its unfinished deployments fail.
    DeleteEnvironment {
        /// The environment.
        env: u64,
        /// When.
        now_ms: u64,
    },
    /// Ask for a new revision of an environment.
    CreateDeployment {
        /// The environment.
        env: u64,
        /// Why.
        kind: DeploymentKind,
        /// The branch it was asked for.
        branch: Option<String>,
        /// The commit (for a rollback, ignored: the earlier revision's commit is used).
        sha: String,
        /// When.
        now_ms: u64,
    },
    /// A controller on `node` takes a deployment: the oldest unfinished one of its
    /// environment, or one whose controller's lease ran out.
    ClaimDeployment {
        /// The deployment.
        deployment: u64,
        /// The controller's node.
        node: NodeId,
        /// When.
        now_ms: u64,
        /// How long the lease lasts unless renewed.
        lease_ms: u64,
    },
    /// The controller reports progress (and renews its lease).
    UpdateDeployment {
        /// The deployment.
        deployment: u64,
        /// The controller's node.
        node: NodeId,
        /// The new end of its lease.
        lease_until_ms: u64,
        /// What it runs, once read from the pipeline file.
        release: Option<Release>,
        /// A new status.
        status: Option<DeploymentStatus>,
        /// New details.
        details: Option<String>,
        /// The revision it now rolls back to.
        reverting_to: Option<u64>,
        /// Something to add to its history.
        event: Option<String>,
        /// When.
        now_ms: u64,
    },
    /// Let a deployment waiting for promotion go on.
    PromoteDeployment {
        /// The deployment.
        deployment: u64,
    },
    /// Add an instance of `revision` on `node` (its driver starts it).
    AddInstance {
        /// The environment.
        env: u64,
        /// The revision.
        revision: u64,
        /// The node.
        node: NodeId,
        /// The host the node serves instances on.
        host: String,
        /// Its traffic weight once healthy.
        weight: u32,
        /// When.
        now_ms: u64,
    },
    /// The driver started an instance's process.
    InstanceStarted {
        /// The instance.
        instance: u64,
        /// Its port.
        port: u16,
        /// Its process.
        pid: u32,
    },
    /// The driver's checks changed an instance's health.
    SetInstanceHealth {
        /// The instance.
        instance: u64,
        /// Its health.
        health: InstanceHealth,
        /// Why, when unhealthy.
        message: Option<String>,
        /// When.
        now_ms: u64,
    },
    /// Change traffic weights at once.
    SetWeights {
        /// Instance and weight; an instance given weight 0 starts retiring.
        weights: Vec<(u64, u32)>,
        /// When.
        now_ms: u64,
    },
    /// Stop an instance (its driver kills it, then removes it).
    StopInstance {
        /// The instance.
        instance: u64,
        /// Why.
        message: String,
    },
    /// The driver's process for a stopped instance is gone: forget it.
    RemoveInstance {
        /// The instance.
        instance: u64,
    },
}

impl DeployCommand {
    /// Whether applying the command twice has the effect of applying it once.
    pub fn is_idempotent(&self) -> bool {
        !matches!(
            self,
            DeployCommand::CreateEnvironment { .. }
                | DeployCommand::CreateDeployment { .. }
                | DeployCommand::ClaimDeployment { .. }
                | DeployCommand::AddInstance { .. }
        )
    }
}

/// What a deploy command produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DeployOutcome {
    /// Nothing to report.
    Done,
    /// The id of what was created.
    Created(u64),
}

/// Environments, deployments and instances, as applied.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DeployState {
    environments: BTreeMap<u64, EnvironmentRecord>,
    deployments: BTreeMap<u64, DeploymentRecord>,
    instances: BTreeMap<u64, InstanceRecord>,
    next_id: u64,
}

impl DeployState {
    fn fresh_id(&mut self) -> u64 {
        let id = self.next_id.max(1);
        self.next_id = id + 1;
        id
    }

    /// Applies one command.
    pub fn apply(&mut self, command: DeployCommand) -> Result<DeployOutcome, ApiError> {
        match command {
            DeployCommand::CreateEnvironment {
                repo,
                name,
                config,
                protected,
                now_ms,
            } => {
                if self.environments.values().any(|e| e.repo == repo && e.name == name) {
                    return Err(ApiError::Conflict {
                        message: format!("the repository has an environment named {name:?} already"),
                    });
                }
                let id = self.fresh_id();
                let record = EnvironmentRecord {
                    id,
                    repo,
                    name,
                    config,
                    protected,
                    current_revision: None,
                    last_good_revision: None,
                    created_ms: now_ms,
                };
                self.environments.insert(id, record);
                Ok(DeployOutcome::Created(id))
            }
            DeployCommand::UpdateEnvironment { env, config, protected } => {
                let record = self.environment_mut(env)?;
                if let Some(config) = config {
                    record.config = config;
                }
                if let Some(protected) = protected {
                    record.protected = protected;
                }
                Ok(DeployOutcome::Done)
            }
            DeployCommand::DeleteEnvironment { env, now_ms } => {
                self.environments.remove(&env).ok_or_else(|| not_found("environment", env))?;
                for instance in self.instances.values_mut().filter(|i| i.env == env) {
                    stop(instance, "its environment was deleted");
                }
                for deployment in self.deployments.values_mut().filter(|d| d.env == env && !d.status.is_finished()) {
                    deployment.status = DeploymentStatus::Failed;
                    deployment.finished_ms = Some(now_ms);
                    push_event(deployment, now_ms, "its environment was deleted".into());
                }
                Ok(DeployOutcome::Done)
            }
            DeployCommand::CreateDeployment {
                env,
                kind,
                branch,
                sha,
                now_ms,
            } => self.create_deployment(env, kind, branch, sha, now_ms),
            DeployCommand::ClaimDeployment {
                deployment,
                node,
                now_ms,
                lease_ms,
            } => {
                let record = self.deployments.get(&deployment).ok_or_else(|| not_found("deployment", deployment))?;
                let first_in_line = self
                    .deployments
                    .values()
                    .filter(|d| d.env == record.env && !d.status.is_finished())
                    .map(|d| d.id)
                    .min()
                    == Some(deployment);
                let claimable = match record.status {
                    DeploymentStatus::Pending => first_in_line,
                    DeploymentStatus::InProgress | DeploymentStatus::Paused => record.lease_until_ms.is_none_or(|until| until < now_ms),
                    _ => false,
                };
                if !claimable {
                    return Err(ApiError::Conflict {
                        message: format!("deployment {deployment} is not free to take"),
                    });
                }
                let record = self.deployments.get_mut(&deployment).expect("looked up above");
                if record.status == DeploymentStatus::Pending {
                    record.status = DeploymentStatus::InProgress;
                    record.started_ms = Some(now_ms);
                }
                let taken_over = record.controller.is_some_and(|c| c != node);
                record.controller = Some(node);
                record.lease_until_ms = Some(now_ms + lease_ms);
                let message = if taken_over {
                    format!("controller on node {node} took over")
                } else {
                    format!("controller on node {node} started")
                };
                push_event(record, now_ms, message);
                Ok(DeployOutcome::Done)
            }
            DeployCommand::UpdateDeployment {
                deployment,
                node,
                lease_until_ms,
                release,
                status,
                details,
                reverting_to,
                event,
                now_ms,
            } => {
                let record = self.deployments.get_mut(&deployment).ok_or_else(|| not_found("deployment", deployment))?;
                if record.controller != Some(node) || record.status.is_finished() {
                    return Err(ApiError::Conflict {
                        message: format!("node {node} does not control deployment {deployment}"),
                    });
                }
                record.lease_until_ms = Some(lease_until_ms);
                if release.is_some() {
                    record.release = release;
                }
                if let Some(details) = details {
                    record.details = details;
                }
                if reverting_to.is_some() {
                    record.reverting_to = reverting_to;
                }
                if let Some(event) = event {
                    push_event(record, now_ms, event);
                }
                if let Some(status) = status {
                    record.status = status;
                    if status.is_finished() {
                        record.finished_ms = Some(now_ms);
                        record.lease_until_ms = None;
                        let (env, serving) = (record.env, self.serving_revision(deployment));
                        if let (Some(environment), Some(revision)) = (self.environments.get_mut(&env), serving) {
                            environment.current_revision = Some(revision);
                            environment.last_good_revision = Some(revision);
                        }
                    }
                }
                Ok(DeployOutcome::Done)
            }
            DeployCommand::PromoteDeployment { deployment } => {
                let record = self.deployments.get_mut(&deployment).ok_or_else(|| not_found("deployment", deployment))?;
                if record.status.is_finished() {
                    return Err(ApiError::Conflict {
                        message: format!("deployment {deployment} has finished"),
                    });
                }
                record.promoted = true;
                Ok(DeployOutcome::Done)
            }
            DeployCommand::AddInstance {
                env,
                revision,
                node,
                host,
                weight,
                now_ms,
            } => {
                self.environment_mut(env)?;
                let id = self.fresh_id();
                let record = InstanceRecord {
                    id,
                    env,
                    revision,
                    node,
                    host,
                    port: None,
                    pid: None,
                    health: InstanceHealth::Starting,
                    weight,
                    healthy_since_ms: None,
                    retiring_since_ms: None,
                    message: None,
                    created_ms: now_ms,
                };
                self.instances.insert(id, record);
                Ok(DeployOutcome::Created(id))
            }
            DeployCommand::InstanceStarted { instance, port, pid } => {
                let record = self.instance_mut(instance)?;
                record.port = Some(port);
                record.pid = Some(pid);
                Ok(DeployOutcome::Done)
            }
            DeployCommand::SetInstanceHealth {
                instance,
                health,
                message,
                now_ms,
            } => {
                let record = self.instance_mut(instance)?;
                if record.health == InstanceHealth::Stopped {
                    // A check that raced with the stop: stopped stays stopped.
                    return Ok(DeployOutcome::Done);
                }
                if health == InstanceHealth::Healthy && record.health != InstanceHealth::Healthy {
                    record.healthy_since_ms = Some(now_ms);
                }
                if health != InstanceHealth::Healthy {
                    record.healthy_since_ms = None;
                }
                record.health = health;
                record.message = message;
                Ok(DeployOutcome::Done)
            }
            DeployCommand::SetWeights { weights, now_ms } => {
                for (instance, _) in &weights {
                    self.instance_mut(*instance)?;
                }
                for (instance, weight) in weights {
                    let record = self.instance_mut(instance)?;
                    record.weight = weight;
                    record.retiring_since_ms = if weight == 0 { record.retiring_since_ms.or(Some(now_ms)) } else { None };
                }
                Ok(DeployOutcome::Done)
            }
            DeployCommand::StopInstance { instance, message } => {
                stop(self.instance_mut(instance)?, &message);
                Ok(DeployOutcome::Done)
            }
            DeployCommand::RemoveInstance { instance } => {
                if self.instances.get(&instance).is_some_and(|i| i.health == InstanceHealth::Stopped) {
                    self.instances.remove(&instance);
                }
                Ok(DeployOutcome::Done)
            }
        }
    }

    fn create_deployment(
        &mut self,
        env: u64,
        kind: DeploymentKind,
        branch: Option<String>,
        sha: String,
        now_ms: u64,
    ) -> Result<DeployOutcome, ApiError> {
        self.environment_mut(env)?;
        let (sha, release) = match &kind {
            DeploymentKind::Deploy => (sha, None),
            DeploymentKind::Rollback { to_revision } => {
                let earlier = self
                    .deployments
                    .values()
                    .find(|d| d.env == env && d.revision == *to_revision)
                    .ok_or_else(|| ApiError::NotFound {
                        what: format!("revision {to_revision} of environment {env}"),
                    })?;
                let Some(release) = earlier.release.clone().filter(|_| earlier.status == DeploymentStatus::Completed) else {
                    return Err(ApiError::invalid(format!(
                        "revision {to_revision} never completed, so there is nothing to return to"
                    )));
                };
                (release.sha.clone(), Some(release))
            }
        };
        let revision = self.deployments.values().filter(|d| d.env == env).map(|d| d.revision).max().unwrap_or(0) + 1;
        let id = self.fresh_id();
        let mut record = DeploymentRecord {
            id,
            env,
            revision,
            kind,
            branch,
            sha,
            release,
            status: DeploymentStatus::Pending,
            details: "waiting for its turn".into(),
            reverting_to: None,
            promoted: false,
            controller: None,
            lease_until_ms: None,
            created_ms: now_ms,
            started_ms: None,
            finished_ms: None,
            events: Vec::new(),
        };
        push_event(&mut record, now_ms, format!("revision {revision} asked for"));
        self.deployments.insert(id, record);
        Ok(DeployOutcome::Created(id))
    }

    /// The revision that serves once `deployment` has finished: its own, or the one it rolled
    /// back to; `None` when it failed outright.
    fn serving_revision(&self, deployment: u64) -> Option<u64> {
        let record = self.deployments.get(&deployment)?;
        match record.status {
            DeploymentStatus::Completed => Some(record.revision),
            DeploymentStatus::RolledBack => record.reverting_to,
            _ => None,
        }
    }

    fn environment_mut(&mut self, env: u64) -> Result<&mut EnvironmentRecord, ApiError> {
        self.environments.get_mut(&env).ok_or_else(|| not_found("environment", env))
    }

    fn instance_mut(&mut self, instance: u64) -> Result<&mut InstanceRecord, ApiError> {
        self.instances.get_mut(&instance).ok_or_else(|| not_found("instance", instance))
    }

    /// Every environment of `repo`, or of every repository.
    pub fn environments(&self, repo: Option<RepoId>) -> Vec<EnvironmentRecord> {
        self.environments.values().filter(|e| repo.is_none_or(|r| e.repo == r)).cloned().collect()
    }

    /// One environment.
    pub fn environment(&self, id: u64) -> Option<EnvironmentRecord> {
        self.environments.get(&id).cloned()
    }

    /// The deployments of `env` (every environment when `None`), oldest first.
    pub fn deployments(&self, env: Option<u64>) -> Vec<DeploymentRecord> {
        self.deployments.values().filter(|d| env.is_none_or(|e| d.env == e)).cloned().collect()
    }

    /// One deployment.
    pub fn deployment(&self, id: u64) -> Option<DeploymentRecord> {
        self.deployments.get(&id).cloned()
    }

    /// Instances of `env` (every environment when `None`).
    pub fn instances(&self, env: Option<u64>) -> Vec<InstanceRecord> {
        self.instances.values().filter(|i| env.is_none_or(|e| i.env == e)).cloned().collect()
    }
}

fn not_found(what: &str, id: u64) -> ApiError {
    ApiError::NotFound {
        what: format!("{what} {id}"),
    }
}

fn stop(instance: &mut InstanceRecord, message: &str) {
    instance.health = InstanceHealth::Stopped;
    instance.weight = 0;
    instance.message = Some(message.to_owned());
}

fn push_event(record: &mut DeploymentRecord, time_ms: u64, message: String) {
    record.events.push(DeployEvent { time_ms, message });
    if record.events.len() > MAX_EVENTS {
        record.events.remove(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn environment(state: &mut DeployState) -> u64 {
        let created = state.apply(DeployCommand::CreateEnvironment {
            repo: RepoId(1),
            name: "staging".into(),
            config: EnvConfig::default(),
            protected: false,
            now_ms: 1,
        });
        let Ok(DeployOutcome::Created(id)) = created else { panic!("{created:?}") };
        id
    }

    fn deploy(state: &mut DeployState, env: u64, sha: &str) -> u64 {
        let created = state.apply(DeployCommand::CreateDeployment {
            env,
            kind: DeploymentKind::Deploy,
            branch: Some("main".into()),
            sha: sha.into(),
            now_ms: 2,
        });
        let Ok(DeployOutcome::Created(id)) = created else { panic!("{created:?}") };
        id
    }

    fn claim(state: &mut DeployState, deployment: u64, node: u64, now_ms: u64) -> Result<DeployOutcome, ApiError> {
        state.apply(DeployCommand::ClaimDeployment {
            deployment,
            node: NodeId(node),
            now_ms,
            lease_ms: 100,
        })
    }

    fn finish(state: &mut DeployState, deployment: u64, node: u64, status: DeploymentStatus) -> Result<DeployOutcome, ApiError> {
        state.apply(DeployCommand::UpdateDeployment {
            deployment,
            node: NodeId(node),
            lease_until_ms: 0,
            release: Some(Release {
                sha: "abc".into(),
                artifact_job: 1,
                command: "run".into(),
                health: Default::default(),
                settings: Default::default(),
            }),
            status: Some(status),
            details: None,
            reverting_to: None,
            event: None,
            now_ms: 9,
        })
    }

    #[test]
    fn deployments_of_an_environment_run_one_at_a_time_in_order() {
        let mut state = DeployState::default();
        let env = environment(&mut state);
        let first = deploy(&mut state, env, "a");
        let second = deploy(&mut state, env, "b");
        assert_eq!(state.deployment(second).unwrap().revision, 2);
        assert!(claim(&mut state, second, 1, 5).is_err(), "a newer deployment never overtakes an older one");
        claim(&mut state, first, 1, 5).unwrap();
        assert!(claim(&mut state, first, 2, 50).is_err(), "a held lease is not taken");
        claim(&mut state, first, 2, 500).unwrap();
        assert!(finish(&mut state, first, 1, DeploymentStatus::Completed).is_err(), "the old controller lost it");
        finish(&mut state, first, 2, DeploymentStatus::Completed).unwrap();
        let environment = state.environment(env).unwrap();
        assert_eq!((environment.current_revision, environment.last_good_revision), (Some(1), Some(1)));
        claim(&mut state, second, 1, 600).unwrap();
    }

    #[test]
    fn a_rollback_reuses_a_completed_revision_and_weights_change_together() {
        let mut state = DeployState::default();
        let env = environment(&mut state);
        let first = deploy(&mut state, env, "a");
        claim(&mut state, first, 1, 5).unwrap();
        finish(&mut state, first, 1, DeploymentStatus::Completed).unwrap();
        let rollback = state.apply(DeployCommand::CreateDeployment {
            env,
            kind: DeploymentKind::Rollback { to_revision: 1 },
            branch: None,
            sha: String::new(),
            now_ms: 10,
        });
        let Ok(DeployOutcome::Created(rollback)) = rollback else { panic!() };
        let record = state.deployment(rollback).unwrap();
        assert_eq!((record.revision, record.sha.as_str()), (2, "abc"));
        assert!(record.release.is_some());
        let missing = DeploymentKind::Rollback { to_revision: 7 };
        assert!(state
            .apply(DeployCommand::CreateDeployment { env, kind: missing, branch: None, sha: String::new(), now_ms: 11 })
            .is_err());

        let add = |state: &mut DeployState, revision| {
            let Ok(DeployOutcome::Created(id)) = state.apply(DeployCommand::AddInstance {
                env,
                revision,
                node: NodeId(1),
                host: "127.0.0.1".into(),
                weight: 1,
                now_ms: 12,
            }) else {
                panic!()
            };
            id
        };
        let (old, new) = (add(&mut state, 1), add(&mut state, 2));
        assert!(state.apply(DeployCommand::SetWeights { weights: vec![(old, 0), (99, 1)], now_ms: 13 }).is_err());
        assert_eq!(state.instances(Some(env))[0].weight, 1, "a refused change changes nothing");
        state.apply(DeployCommand::SetWeights { weights: vec![(old, 0), (new, 1)], now_ms: 13 }).unwrap();
        let instances = state.instances(Some(env));
        assert_eq!((instances[0].weight, instances[0].retiring_since_ms), (0, Some(13)));
        state.apply(DeployCommand::DeleteEnvironment { env, now_ms: 14 }).unwrap();
        assert!(state.instances(None).iter().all(|i| i.health == InstanceHealth::Stopped));
        assert_eq!(state.deployment(rollback).unwrap().status, DeploymentStatus::Failed);
    }
}
