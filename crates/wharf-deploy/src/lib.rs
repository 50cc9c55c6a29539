//! Wharf deployments as records: environments, their numbered deployments, and the
//! instances that run them (which the front routes to), with the [`DeployCommand`]s that
//! change them and [`apply`], over typed key spaces ([`keys`]) of a [`RecordsMut`] store.
//! `wharf-meta` runs [`apply`] in its Raft state machine, on sled; the tests here run it on
//! [`wharf_proto::store::MemRecords`]. The node's controllers and drivers read these records
//! and propose commands; this crate starts nothing and reads no clock (times come in the
//! commands).
//!
//! - Deployments to one environment run one at a time, in the order they were asked for: a
//!   controller on any node may claim only the oldest unfinished deployment of an environment,
//!   with a lease it renews; if its node dies, another node claims the deployment once the
//!   lease has run out and carries on from the records.
//! - Instances are records first: a controller adds one naming a node, that node's driver
//!   starts the process and reports its port and health, and a controller stops one by marking
//!   it stopped (the driver then kills it and removes the record). Traffic weights change in
//!   one command, so the route table changes atomically.

#![warn(missing_docs)]

use serde::{Deserialize, Serialize};
use wharf_proto::deploy::{
    DeployEvent, DeploymentKind, DeploymentRecord, DeploymentStatus, EnvConfig, EnvironmentRecord, InstanceHealth,
    InstanceRecord, Release,
};
use wharf_proto::store::{Order, Records, RecordsMut, Sequence};
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

/// Where the deployment records live in the metadata store.
pub mod keys {
    use wharf_proto::deploy::{DeploymentRecord, EnvironmentRecord, InstanceRecord};
    use wharf_proto::store::KeySpace;

    /// Environments by id.
    pub const ENVIRONMENTS: KeySpace<u64, EnvironmentRecord> = KeySpace::new(0x40, "deploy.environments");
    /// Index: `(repository, environment)`.
    pub const ENVIRONMENTS_BY_REPO: KeySpace<(u64, u64), ()> = KeySpace::new(0x41, "deploy.environments_by_repo");
    /// Deployments by id.
    pub const DEPLOYMENTS: KeySpace<u64, DeploymentRecord> = KeySpace::new(0x42, "deploy.deployments");
    /// Index: `(environment, deployment)`, oldest first.
    pub const DEPLOYMENTS_BY_ENV: KeySpace<(u64, u64), ()> = KeySpace::new(0x43, "deploy.deployments_by_env");
    /// Instances by id.
    pub const INSTANCES: KeySpace<u64, InstanceRecord> = KeySpace::new(0x44, "deploy.instances");
    /// Index: `(environment, instance)`.
    pub const INSTANCES_BY_ENV: KeySpace<(u64, u64), ()> = KeySpace::new(0x45, "deploy.instances_by_env");
    /// The next id (environments, deployments and instances share one sequence).
    pub const SEQUENCES: KeySpace<String, u64> = KeySpace::new(0x46, "deploy.sequences");

    /// Every key space of this crate: prefix and name.
    pub const ALL: &[(u8, &str)] = &[
        (ENVIRONMENTS.prefix, ENVIRONMENTS.name),
        (ENVIRONMENTS_BY_REPO.prefix, ENVIRONMENTS_BY_REPO.name),
        (DEPLOYMENTS.prefix, DEPLOYMENTS.name),
        (DEPLOYMENTS_BY_ENV.prefix, DEPLOYMENTS_BY_ENV.name),
        (INSTANCES.prefix, INSTANCES.name),
        (INSTANCES_BY_ENV.prefix, INSTANCES_BY_ENV.name),
        (SEQUENCES.prefix, SEQUENCES.name),
    ];
}

use keys::{DEPLOYMENTS, DEPLOYMENTS_BY_ENV, ENVIRONMENTS, ENVIRONMENTS_BY_REPO, INSTANCES, INSTANCES_BY_ENV, SEQUENCES};

/// The one id sequence that environments, deployments and instances shared before each had
/// its own. No longer advanced (but by [`import`]); each kind's sequence starts past it.
const SHARED_IDS: Sequence = Sequence(SEQUENCES, "record");
/// Each kind's own sequence (issue 13, point 3): the API and CLI tell kinds apart by a prefix
/// (`env-3`, `deploy-3`, `inst-3`; see [`wharf_proto::deploy::IdKind`]), so numbers may repeat
/// across kinds.
const ENVIRONMENT_IDS: Sequence = Sequence(SEQUENCES, "environment");
const DEPLOYMENT_IDS: Sequence = Sequence(SEQUENCES, "deployment");
const INSTANCE_IDS: Sequence = Sequence(SEQUENCES, "instance");

/// Takes the next id of one kind. A kind's sequence first starts where the shared sequence
/// stands, so ids taken before the split are never taken again and no record changes: no data
/// migration. Every replica decides this alike, since it reads only the store.
fn next_id(store: &mut dyn RecordsMut, kind: &Sequence) -> u64 {
    let shared = SEQUENCES.get(store, &SHARED_IDS.1.to_owned()).unwrap_or(1);
    kind.raise_to(store, shared);
    kind.next(store)
}

/// Applies one command to the deployment records in `store`.
pub fn apply(store: &mut dyn RecordsMut, command: DeployCommand) -> Result<DeployOutcome, ApiError> {
    match command {
        DeployCommand::CreateEnvironment {
            repo,
            name,
            config,
            protected,
            now_ms,
        } => {
            if environments(store, Some(repo)).iter().any(|e| e.name == name) {
                return Err(ApiError::Conflict {
                    message: format!("the repository has an environment named {name:?} already"),
                });
            }
            let id = next_id(store, &ENVIRONMENT_IDS);
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
            ENVIRONMENTS.put(store, &id, &record);
            ENVIRONMENTS_BY_REPO.put(store, &(repo.0, id), &());
            Ok(DeployOutcome::Created(id))
        }
        DeployCommand::UpdateEnvironment { env, config, protected } => {
            let mut record = environment_of(store, env)?;
            if let Some(config) = config {
                record.config = config;
            }
            if let Some(protected) = protected {
                record.protected = protected;
            }
            ENVIRONMENTS.put(store, &env, &record);
            Ok(DeployOutcome::Done)
        }
        DeployCommand::DeleteEnvironment { env, now_ms } => {
            let record = environment_of(store, env)?;
            ENVIRONMENTS.remove(store, &env);
            ENVIRONMENTS_BY_REPO.remove(store, &(record.repo.0, env));
            stop_instances(store, env, "its environment was deleted");
            for mut deployment in deployments(store, Some(env)).into_iter().filter(|d| !d.status.is_finished()) {
                deployment.status = DeploymentStatus::Failed;
                deployment.finished_ms = Some(now_ms);
                push_event(&mut deployment, now_ms, "its environment was deleted".into());
                DEPLOYMENTS.put(store, &deployment.id, &deployment);
            }
            Ok(DeployOutcome::Done)
        }
        DeployCommand::CreateDeployment {
            env,
            kind,
            branch,
            sha,
            now_ms,
        } => create_deployment(store, env, kind, branch, sha, now_ms),
        DeployCommand::ClaimDeployment {
            deployment,
            node,
            now_ms,
            lease_ms,
        } => {
            let mut record = deployment_of(store, deployment)?;
            let first_in_line = deployments(store, Some(record.env))
                .iter()
                .find(|d| !d.status.is_finished())
                .map(|d| d.id)
                == Some(deployment);
            let claimable = match record.status {
                DeploymentStatus::Pending => first_in_line,
                DeploymentStatus::InProgress | DeploymentStatus::Paused => {
                    record.lease_until_ms.is_none_or(|until| until < now_ms)
                }
                _ => false,
            };
            if !claimable {
                return Err(ApiError::Conflict {
                    message: format!("deployment {deployment} is not free to take"),
                });
            }
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
            push_event(&mut record, now_ms, message);
            DEPLOYMENTS.put(store, &deployment, &record);
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
            let mut record = deployment_of(store, deployment)?;
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
                push_event(&mut record, now_ms, event);
            }
            if let Some(status) = status {
                record.status = status;
                if status.is_finished() {
                    record.finished_ms = Some(now_ms);
                    record.lease_until_ms = None;
                    if let (Some(mut environment), Some(revision)) =
                        (ENVIRONMENTS.get(store, &record.env), serving_revision(&record))
                    {
                        environment.current_revision = Some(revision);
                        environment.last_good_revision = Some(revision);
                        ENVIRONMENTS.put(store, &environment.id, &environment);
                    }
                }
            }
            DEPLOYMENTS.put(store, &deployment, &record);
            Ok(DeployOutcome::Done)
        }
        DeployCommand::PromoteDeployment { deployment } => {
            let mut record = deployment_of(store, deployment)?;
            if record.status.is_finished() {
                return Err(ApiError::Conflict {
                    message: format!("deployment {deployment} has finished"),
                });
            }
            record.promoted = true;
            DEPLOYMENTS.put(store, &deployment, &record);
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
            environment_of(store, env)?;
            let id = next_id(store, &INSTANCE_IDS);
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
            INSTANCES.put(store, &id, &record);
            INSTANCES_BY_ENV.put(store, &(env, id), &());
            Ok(DeployOutcome::Created(id))
        }
        DeployCommand::InstanceStarted { instance, port, pid } => {
            let mut record = instance_of(store, instance)?;
            record.port = Some(port);
            record.pid = Some(pid);
            INSTANCES.put(store, &instance, &record);
            Ok(DeployOutcome::Done)
        }
        DeployCommand::SetInstanceHealth {
            instance,
            health,
            message,
            now_ms,
        } => {
            let mut record = instance_of(store, instance)?;
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
            INSTANCES.put(store, &instance, &record);
            Ok(DeployOutcome::Done)
        }
        DeployCommand::SetWeights { weights, now_ms } => {
            // Every instance is checked before any changes, so a refused command changes nothing.
            let mut records = weights
                .iter()
                .map(|(instance, _)| instance_of(store, *instance))
                .collect::<Result<Vec<_>, _>>()?;
            for (record, (_, weight)) in records.iter_mut().zip(weights) {
                record.weight = weight;
                record.retiring_since_ms = if weight == 0 { record.retiring_since_ms.or(Some(now_ms)) } else { None };
                INSTANCES.put(store, &record.id, record);
            }
            Ok(DeployOutcome::Done)
        }
        DeployCommand::StopInstance { instance, message } => {
            let mut record = instance_of(store, instance)?;
            stop(&mut record, &message);
            INSTANCES.put(store, &instance, &record);
            Ok(DeployOutcome::Done)
        }
        DeployCommand::RemoveInstance { instance } => {
            if let Some(record) = INSTANCES.get(store, &instance).filter(|i| i.health == InstanceHealth::Stopped) {
                INSTANCES.remove(store, &instance);
                INSTANCES_BY_ENV.remove(store, &(record.env, instance));
            }
            Ok(DeployOutcome::Done)
        }
    }
}

fn create_deployment(
    store: &mut dyn RecordsMut,
    env: u64,
    kind: DeploymentKind,
    branch: Option<String>,
    sha: String,
    now_ms: u64,
) -> Result<DeployOutcome, ApiError> {
    environment_of(store, env)?;
    let earlier = deployments(store, Some(env));
    let (sha, release) = match &kind {
        DeploymentKind::Deploy => (sha, None),
        DeploymentKind::Rollback { to_revision } => {
            let target = earlier.iter().find(|d| d.revision == *to_revision).ok_or_else(|| ApiError::NotFound {
                what: format!("revision {to_revision} of environment {env}"),
            })?;
            let Some(release) = target.release.clone().filter(|_| target.status == DeploymentStatus::Completed) else {
                return Err(ApiError::invalid(format!(
                    "revision {to_revision} never completed, so there is nothing to return to"
                )));
            };
            (release.sha.clone(), Some(release))
        }
    };
    let revision = earlier.iter().map(|d| d.revision).max().unwrap_or(0) + 1;
    let id = next_id(store, &DEPLOYMENT_IDS);
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
    DEPLOYMENTS.put(store, &id, &record);
    DEPLOYMENTS_BY_ENV.put(store, &(env, id), &());
    Ok(DeployOutcome::Created(id))
}

/// The revision that serves once `record` has finished: its own, or the one it rolled back
/// to; `None` when it failed outright.
fn serving_revision(record: &DeploymentRecord) -> Option<u64> {
    match record.status {
        DeploymentStatus::Completed => Some(record.revision),
        DeploymentStatus::RolledBack => record.reverting_to,
        _ => None,
    }
}

fn environment_of(store: &dyn Records, env: u64) -> Result<EnvironmentRecord, ApiError> {
    ENVIRONMENTS.get(store, &env).ok_or_else(|| not_found("environment", env))
}

fn deployment_of(store: &dyn Records, deployment: u64) -> Result<DeploymentRecord, ApiError> {
    DEPLOYMENTS.get(store, &deployment).ok_or_else(|| not_found("deployment", deployment))
}

fn instance_of(store: &dyn Records, instance: u64) -> Result<InstanceRecord, ApiError> {
    INSTANCES.get(store, &instance).ok_or_else(|| not_found("instance", instance))
}

/// Every environment of `repo`, or of every repository.
pub fn environments(store: &dyn Records, repo: Option<RepoId>) -> Vec<EnvironmentRecord> {
    match repo {
        Some(repo) => ENVIRONMENTS_BY_REPO
            .keys(store, &repo.0)
            .into_iter()
            .filter_map(|(_, id)| ENVIRONMENTS.get(store, &id))
            .collect(),
        None => ENVIRONMENTS.scan(store, &(), Order::Ascending, usize::MAX).into_iter().map(|(_, e)| e).collect(),
    }
}

/// One environment.
pub fn environment(store: &dyn Records, id: u64) -> Option<EnvironmentRecord> {
    ENVIRONMENTS.get(store, &id)
}

/// The deployments of `env` (every environment when `None`), oldest first.
pub fn deployments(store: &dyn Records, env: Option<u64>) -> Vec<DeploymentRecord> {
    match env {
        Some(env) => DEPLOYMENTS_BY_ENV
            .keys(store, &env)
            .into_iter()
            .filter_map(|(_, id)| DEPLOYMENTS.get(store, &id))
            .collect(),
        None => DEPLOYMENTS.scan(store, &(), Order::Ascending, usize::MAX).into_iter().map(|(_, d)| d).collect(),
    }
}

/// One deployment.
pub fn deployment(store: &dyn Records, id: u64) -> Option<DeploymentRecord> {
    DEPLOYMENTS.get(store, &id)
}

/// Instances of `env` (every environment when `None`).
pub fn instances(store: &dyn Records, env: Option<u64>) -> Vec<InstanceRecord> {
    match env {
        Some(env) => INSTANCES_BY_ENV
            .keys(store, &env)
            .into_iter()
            .filter_map(|(_, id)| INSTANCES.get(store, &id))
            .collect(),
        None => INSTANCES.scan(store, &(), Order::Ascending, usize::MAX).into_iter().map(|(_, i)| i).collect(),
    }
}

/// Imports records written by an older Wharf (a data directory being migrated), with the id
/// sequence set past them.
pub fn import(
    store: &mut dyn RecordsMut,
    environments: impl IntoIterator<Item = EnvironmentRecord>,
    deployments: impl IntoIterator<Item = DeploymentRecord>,
    instances: impl IntoIterator<Item = InstanceRecord>,
    next_id: u64,
) {
    for record in environments {
        ENVIRONMENTS_BY_REPO.put(store, &(record.repo.0, record.id), &());
        ENVIRONMENTS.put(store, &record.id, &record);
    }
    for record in deployments {
        DEPLOYMENTS_BY_ENV.put(store, &(record.env, record.id), &());
        DEPLOYMENTS.put(store, &record.id, &record);
    }
    for record in instances {
        INSTANCES_BY_ENV.put(store, &(record.env, record.id), &());
        INSTANCES.put(store, &record.id, &record);
    }
    for sequence in [&SHARED_IDS, &ENVIRONMENT_IDS, &DEPLOYMENT_IDS, &INSTANCE_IDS] {
        sequence.raise_to(store, next_id);
    }
}

fn not_found(what: &str, id: u64) -> ApiError {
    ApiError::NotFound {
        what: format!("{what} {id}"),
    }
}

/// Forgets a deleted repository's environments and their deployments. Their instances are
/// marked stopped, not removed: each node's driver stops its processes, then removes the
/// records, as for a deleted environment.
pub fn forget_repo(store: &mut dyn RecordsMut, repo: RepoId) {
    for env in environments(store, Some(repo)) {
        stop_instances(store, env.id, "its repository was deleted");
        for deployment in deployments(store, Some(env.id)) {
            DEPLOYMENTS.remove(store, &deployment.id);
            DEPLOYMENTS_BY_ENV.remove(store, &(env.id, deployment.id));
        }
        ENVIRONMENTS.remove(store, &env.id);
        ENVIRONMENTS_BY_REPO.remove(store, &(repo.0, env.id));
    }
}

/// Marks every instance of `env` stopped, saying why.
fn stop_instances(store: &mut dyn RecordsMut, env: u64, why: &str) {
    for mut instance in instances(store, Some(env)) {
        stop(&mut instance, why);
        INSTANCES.put(store, &instance.id, &instance);
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
    use wharf_proto::store::MemRecords;

    /// The deployment records of a store, as the tests read them.
    #[derive(Default)]
    struct DeployState(MemRecords);

    impl DeployState {
        fn apply(&mut self, command: DeployCommand) -> Result<DeployOutcome, ApiError> {
            super::apply(&mut self.0, command)
        }

        fn environment(&self, id: u64) -> Option<EnvironmentRecord> {
            super::environment(&self.0, id)
        }

        fn deployment(&self, id: u64) -> Option<DeploymentRecord> {
            super::deployment(&self.0, id)
        }

        fn instances(&self, env: Option<u64>) -> Vec<InstanceRecord> {
            super::instances(&self.0, env)
        }
    }

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

    #[test]
    fn each_kind_has_its_own_sequence_which_starts_past_the_shared_one() {
        let mut fresh = DeployState::default();
        let env = environment(&mut fresh);
        assert_eq!((env, deploy(&mut fresh, env, "a"), deploy(&mut fresh, env, "b")), (1, 1, 2));

        // A store written when the kinds shared one sequence (it stands at 10): no id taken
        // then is taken again, and no record changes.
        let mut old = DeployState::default();
        SHARED_IDS.raise_to(&mut old.0, 10);
        let env = environment(&mut old);
        assert_eq!(env, 10);
        assert_eq!(deploy(&mut old, env, "a"), 10);
        assert_eq!(deploy(&mut old, env, "b"), 11);
        let mut second = DeployState(old.0.clone());
        second.apply(DeployCommand::CreateEnvironment {
            repo: RepoId(1),
            name: "production".into(),
            config: EnvConfig::default(),
            protected: false,
            now_ms: 1,
        })
        .unwrap();
        assert_eq!(second.environment(11).map(|e| e.name), Some("production".to_owned()));
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
