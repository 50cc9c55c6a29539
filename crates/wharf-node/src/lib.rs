//! A Wharf storage node: it owns repositories on its disk and serves them to fronts by actor
//! messages.
//!
//! [`StorageNode::start`] spawns one [`router::NodeRouter`] actor and registers it in the process
//! group [`wharf_proto::node_group`]; that router is the node's only remotable actor, so peers
//! build one proxy per node, not one per repository. The router decodes each
//! [`wharf_proto::NodeRequest`] and hands repository work to a [`repo_actor::RepoActor`], one
//! per active repository, activated on the first message and passivated when idle (see
//! [`repo_actor`]). Git protocol traffic runs in [`session`]s: one `git upload-pack` or
//! `git receive-pack` process each, fed and drained in bounded chunks. Every ref change, a push
//! or a write through the API, is recorded the same way (`ref_changes`): push events through
//! Raft, then the pipeline rules.
//!
//! Beside repositories, every node runs CI jobs in its runner slots (`ci`: pipelines are
//! created where a push lands, jobs run wherever a slot is free) and the instances of
//! deployments (`deploy`: a process driver, and controllers that roll releases out).
//!
//! Metadata (repository records, push events, pipelines, deployments) is written through
//! [`wharf_meta::Meta`]; git work is done by [`wharf_git::GitRepo`]. The node never serves
//! HTTP: that is the front's job. It records metrics through the `metrics` facade and hands the
//! binary a collector for its state gauges ([`StorageNode::metrics_collector`]); the binary
//! serves them.

#![warn(missing_docs)]

mod activity;
mod background;
mod capped_log;
mod ci;
mod deploy;
mod mover;
mod ref_changes;
pub mod repo_actor;
pub mod router;
pub mod session;
mod telemetry;
mod traced;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorRef};
use wharf_meta::Meta;
use wharf_proto::{node_group, NodeId, NodeMessage, RepoId};

pub use ci::DEFAULT_RUNNER_SLOTS;

/// The default cap of a job's log (and an instance's output): 4 MiB, as GitLab's.
pub const DEFAULT_LOG_LIMIT_BYTES: u64 = 4 << 20;
use router::NodeRouter;

/// Settings of a storage node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's id (also its Raft id).
    pub id: NodeId,
    /// Where repositories live: `DATA_DIR/repos/{id:016x}.git`.
    pub data_dir: PathBuf,
    /// How long a repository actor stays active with nothing to do before it is passivated.
    /// Default 300 s. Shorter frees memory sooner; longer saves re-opening busy repositories.
    pub actor_idle_timeout: Duration,
    /// How long a git session may wait for its client's next request before it is killed.
    /// Default 120 s: long enough for a slow client, short enough that a vanished front does
    /// not hold a repository's write turn for long.
    pub session_idle_timeout: Duration,
    /// CI jobs that run at once on this node. Default 2; 0 runs none.
    pub runner_slots: usize,
    /// How long a runner holds a job without renewing its lease. Default 10 s: a job whose
    /// node dies is queued again within about this long. Node clocks must agree to well
    /// within it, since the leader compares a lease with its own clock.
    pub job_lease: Duration,
    /// Where this node serves `/metrics` (`host:port`), if it does; its answer to
    /// [`wharf_proto::NodeRequest::MetricsAddress`]. Default `None`: the binary sets it when it
    /// has started the listener.
    pub metrics_addr: Option<String>,
    /// How jobs and instances are confined; see [`wharf_sandbox`]. Default: bubblewrap, without
    /// which nothing runs.
    pub sandbox: wharf_sandbox::SandboxMode,
    /// The user id jobs and instances run as (when Wharf runs as root), or appear as in their
    /// user namespace (when it does not). Default 65534 (`nobody`).
    pub sandbox_uid: u32,
    /// Directories every job may read and write, at their own paths (a shared cache, say).
    /// Default none.
    pub sandbox_volumes: Vec<PathBuf>,
    /// Bytes of a job's log kept; output beyond is dropped after a "log truncated" line.
    /// Default 4 MiB (GitLab's default). The same cap applies to an instance's output.
    pub log_limit_bytes: u64,
}

impl NodeConfig {
    /// The defaults for node `id` storing under `data_dir`.
    pub fn new(id: NodeId, data_dir: PathBuf) -> Self {
        NodeConfig {
            id,
            data_dir,
            actor_idle_timeout: Duration::from_secs(300),
            session_idle_timeout: Duration::from_secs(120),
            runner_slots: ci::DEFAULT_RUNNER_SLOTS,
            job_lease: Duration::from_secs(10),
            metrics_addr: None,
            sandbox: wharf_sandbox::SandboxMode::default(),
            sandbox_uid: 65534,
            sandbox_volumes: Vec::new(),
            log_limit_bytes: DEFAULT_LOG_LIMIT_BYTES,
        }
    }

    /// The directory of repository `id` on this node.
    pub fn repo_path(&self, id: RepoId) -> PathBuf {
        self.data_dir.join("repos").join(id.dir_name())
    }
}

/// Everything a node's actors share.
pub(crate) struct NodeContext {
    pub config: NodeConfig,
    pub meta: Meta,
    pub registry: repo_actor::RepoRegistry,
    pub sessions: session::Sessions,
    /// Bundle files offered to other nodes during moves.
    pub transfers: mover::Transfers,
    /// Calls other nodes (moves, forwarding).
    pub peers: wharf_proto::NodeClient,
    /// Runner slots for CI jobs.
    pub runner: ci::Runner,
    /// The instance processes this node runs.
    pub driver: deploy::Driver,
    /// The deployments this node drives.
    pub controllers: deploy::Controllers,
    /// Every background loop of the node.
    pub background: background::Background,
    /// Where jobs and instances run, as found when the node started.
    pub sandbox: wharf_sandbox::Sandbox,
}


/// A running storage node.
pub struct StorageNode {
    router: ActorRef<NodeMessage>,
    context: Arc<NodeContext>,
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The repository directory could not be created.
    #[error("cannot create {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The router actor did not start.
    #[error("cannot spawn the node router actor: {0}")]
    Spawn(#[from] ractor::SpawnErr),
}

impl StorageNode {
    /// Starts the node's actors and registers its router in the node's process group.
    pub async fn start(mut config: NodeConfig, meta: Meta) -> Result<StorageNode, StartError> {
        // Paths under the data directory are handed to git processes that run elsewhere
        // (`git -C REPO bundle create FILE`), so they must not be relative.
        config.data_dir = std::path::absolute(&config.data_dir).map_err(|source| StartError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let repos_dir = config.data_dir.join("repos");
        std::fs::create_dir_all(&repos_dir).map_err(|source| StartError::DataDir {
            path: repos_dir.clone(),
            source,
        })?;
        // The data directory holds tokens, secrets and every repository: Wharf's alone, also
        // when an older version made it open to everyone.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&config.data_dir, std::fs::Permissions::from_mode(0o700)).map_err(|source| StartError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let sandbox = wharf_sandbox::Sandbox::detect(config.sandbox, config.sandbox_uid).await;
        match sandbox.ready() {
            Ok(()) => tracing::info!(sandbox = %sandbox.describe(), "jobs and instances are confined"),
            Err(why) => tracing::warn!("{why}"),
        }
        let context = Arc::new(NodeContext {
            sandbox,
            registry: repo_actor::RepoRegistry::default(),
            sessions: session::Sessions::default(),
            transfers: mover::Transfers::default(),
            peers: wharf_proto::NodeClient {
                timeout: std::time::Duration::from_secs(30),
            },
            runner: ci::Runner::new(config.runner_slots),
            driver: deploy::Driver::default(),
            controllers: deploy::Controllers::default(),
            background: background::Background::default(),
            config,
            meta,
        });
        let group = node_group(context.config.id);
        let (router, _) = Actor::spawn(
            Some(format!("{group}.router")),
            NodeRouter,
            context.clone(),
        )
        .await?;
        ractor::pg::join(group, vec![router.get_cell()]);
        spawn_passivation(&context);
        mover::spawn_rebalancer(&context);
        ci::spawn_runner(&context);
        deploy::spawn_driver(&context);
        deploy::spawn_controllers(&context);
        Ok(StorageNode { router, context })
    }

    /// The node's id.
    pub fn id(&self) -> NodeId {
        self.context.config.id
    }

    /// Number of repository actors active now.
    pub async fn active_actors(&self) -> usize {
        self.context.registry.active().await
    }

    /// Sets the node's state gauges (repositories active and passivated, runner slots, jobs
    /// and deployments by state) when called: for the binary to run before each scrape. It
    /// holds the node weakly and does nothing once the node has stopped.
    pub fn metrics_collector(&self) -> impl Fn() + Send + Sync + 'static {
        let node = Arc::downgrade(&self.context);
        move || {
            if let Some(node) = node.upgrade() {
                telemetry::collect(&node);
            }
        }
    }

    /// Stops the router and every repository actor. Sessions in flight are killed, so pushes
    /// that were not acknowledged leave nothing behind.
    pub async fn shutdown(self) {
        ractor::pg::leave(node_group(self.context.config.id), vec![self.router.get_cell()]);
        // Background loops first, so none starts new work on what is being stopped.
        self.context.background.stop(BACKGROUND_STOP_DEADLINE).await;
        self.context.registry.stop_all().await;
        self.context.sessions.abort_all();
        self.context.runner.stop_all();
        self.context.driver.stop_all();
        self.router.stop(None);
    }
}

/// How long shutdown waits for the background loops to end.
const BACKGROUND_STOP_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// Starts the sweeper that passivates idle repository actors. It sweeps a few times per idle
/// period, so an idle actor lives at most about 1.25 times as long.
fn spawn_passivation(context: &Arc<NodeContext>) {
    let every = std::time::Duration::from_secs(5).min(context.config.actor_idle_timeout / 4).max(std::time::Duration::from_millis(100));
    context.background.spawn_loop("passivation-sweeper", Arc::downgrade(context), background::Wake::Every(every), |node| async move {
        let stopped = node.registry.passivate_idle(node.config.actor_idle_timeout).await;
        if stopped > 0 {
            tracing::debug!(stopped, "passivated idle repository actors");
        }
    });
}

/// Milliseconds since the Unix epoch, for records.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
