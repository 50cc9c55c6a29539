//! `wharf node` and `wharf front`: the processes of a cluster.
//!
//! Both connect to the mesh, serve Raft, and either start a new group (the first node, which
//! has nothing to `--join`) or join an existing one through any member. A storage node then
//! runs its repository actors; a front follows the Raft log as a learner (so it routes from a
//! local copy of the applied state) and serves HTTP.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use serde::Deserialize;
use wharf_cluster::{Cluster, Cookie, Identity, JoinRequest, OperatorFiles};
use wharf_front::FrontConfig;
use wharf_meta::{Meta, MetaConfig};
use wharf_node::{NodeConfig, StorageNode};
use wharf_proto::{NodeId, NodeRecord, NodeState};

use crate::bootstrap::{admin_token, register_node, shutdown_signal};

/// How long a process waits for the cluster while starting.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a starting process waits to reach every member before it says it is ready (it
/// goes on without those it cannot reach: a member may be down).
const MESH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a restarting member waits for a peer to answer its cookie check.
const COOKIE_CHECK_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a restarting member keeps asking when no peer answers its cookie check.
const COOKIE_CHECK_PATIENCE: Duration = Duration::from_secs(10);
/// How long one enrollment exchange with a member may take.
const ENROLL_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of a node or front: from `--config FILE` (TOML), overridden by flags and `WHARF_*`
/// variables.
#[derive(Args, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessArgs {
    /// A TOML file with any of the settings below (flags win).
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// This process's id: unique in the cluster, also its Raft id.
    #[arg(long, env = "WHARF_ID")]
    id: Option<u64>,
    /// Where its metadata (and, for a node, its repositories) live.
    #[arg(long, env = "WHARF_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Its cluster address (`host:port`), where peers connect.
    #[arg(long, env = "WHARF_LISTEN")]
    listen: Option<SocketAddr>,
    /// The shared secret every member of the cluster presents. Prefer WHARF_COOKIE or
    /// --cookie-file: a value on the command line is visible to every user in the process
    /// list, so Wharf warns about it.
    #[arg(long)]
    cookie: Option<String>,
    /// A file holding the cookie (surrounding whitespace ignored), readable by Wharf's user
    /// only. Used when neither --cookie nor WHARF_COOKIE is set.
    #[arg(long, env = "WHARF_COOKIE_FILE")]
    cookie_file: Option<PathBuf>,
    /// The value of WHARF_COOKIE, which `main` reads and removes from the environment before
    /// anything starts, so that no child process (a CI job, a deployed app) inherits it.
    #[arg(skip)]
    #[serde(skip)]
    env_cookie: Option<String>,
    /// This member's certificate (PEM), if the operator provides the cluster's certificates;
    /// with --tls-key and --tls-ca. Default: Wharf makes a cluster CA on the first node and
    /// issues certificates to joiners that present the cookie.
    #[arg(long, env = "WHARF_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// This member's private key (PEM, PKCS#8), with --tls-cert.
    #[arg(long, env = "WHARF_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// The CA certificate (PEM) that signed every member's certificate, with --tls-cert.
    #[arg(long, env = "WHARF_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// A running member's cluster address; none to start a new cluster.
    #[arg(long)]
    #[serde(default)]
    join: Vec<String>,
    /// A node's relative share of repositories (100 = the usual share).
    #[arg(long)]
    weight: Option<u32>,
    /// A front's HTTP address.
    #[arg(long, env = "WHARF_HTTP")]
    http: Option<SocketAddr>,
    /// CI jobs a node runs at once (0: none).
    #[arg(long, env = "WHARF_RUNNER_SLOTS")]
    runner_slots: Option<usize>,
    /// Seconds a node's runner holds a job without renewing its lease.
    #[arg(long, env = "WHARF_JOB_LEASE_SECS")]
    job_lease_secs: Option<u64>,
    /// MiB of memory sled may use to cache the metadata (default 32): more keeps more of a
    /// large metadata set in memory, less reads the disk more often.
    #[arg(long, env = "WHARF_META_CACHE_MIB")]
    meta_cache_mib: Option<u64>,
    /// Where a storage node serves `/metrics` (`host:port`, port 0 for a free port), or `off`.
    /// Default: the host of `listen`, port 0. The address is recorded in the node's record,
    /// where the front's `/api/v1/cluster/metrics-targets` finds it; an address bound to every
    /// interface is recorded with the host of `listen`. A front serves `/metrics` on its `http`
    /// address and ignores this setting.
    #[arg(long, env = "WHARF_METRICS_HTTP")]
    metrics_http: Option<String>,
    /// A node's sandbox and log settings (flags and variables only).
    #[command(flatten)]
    #[serde(skip)]
    sandbox: crate::sandbox_args::SandboxArgs,
}

/// The settings once file, flags and defaults are merged.
struct Settings {
    id: NodeId,
    data_dir: PathBuf,
    listen: SocketAddr,
    cookie: Cookie,
    /// The operator's certificate files, if given.
    tls: Option<OperatorFiles>,
    join: Vec<String>,
    weight: u32,
    http: SocketAddr,
    runner_slots: usize,
    job_lease: Duration,
    meta_cache_bytes: u64,
    /// `None`: no metrics listener.
    metrics_http: Option<SocketAddr>,
    sandbox: crate::sandbox_args::SandboxArgs,
}

impl ProcessArgs {
    /// Passes on the value WHARF_COOKIE had when the process started.
    pub fn set_env_cookie(&mut self, cookie: Option<String>) {
        self.env_cookie = cookie;
    }

    fn resolve(self) -> anyhow::Result<Settings> {
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
                toml::from_str::<ProcessArgs>(&text).with_context(|| format!("{} is not a valid config", path.display()))?
            }
            None => ProcessArgs::default(),
        };
        let Some(id) = self.id.or(file.id) else {
            bail!("every process needs an id: pass --id N or set id in the config file");
        };
        let cookie = resolve_cookie(
            self.cookie,
            self.env_cookie,
            self.cookie_file.or(file.cookie_file),
            file.cookie,
        )?;
        let tls = match (self.tls_cert.or(file.tls_cert), self.tls_key.or(file.tls_key), self.tls_ca.or(file.tls_ca)) {
            (None, None, None) => None,
            (Some(cert), Some(key), Some(ca)) => Some(OperatorFiles { cert, key, ca }),
            _ => return Err(wharf_cluster::TlsError::Partial.into()),
        };
        let listen = self.listen.or(file.listen).unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7100 + id as u16)));
        let metrics_http = match self.metrics_http.or(file.metrics_http).as_deref().map(str::trim) {
            None => Some(SocketAddr::new(listen.ip(), 0)),
            Some("off") => None,
            Some(text) => Some(text.parse().with_context(|| {
                format!("metrics_http {text:?} is neither `host:port` (an IP address and a port) nor `off`")
            })?),
        };
        Ok(Settings {
            id: NodeId(id),
            data_dir: self.data_dir.or(file.data_dir).unwrap_or_else(|| PathBuf::from(format!("./wharf-data-{id}"))),
            listen,
            cookie,
            tls,
            join: if self.join.is_empty() { file.join } else { self.join },
            weight: self.weight.or(file.weight).unwrap_or(100),
            http: self.http.or(file.http).unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
            runner_slots: self.runner_slots.or(file.runner_slots).unwrap_or(wharf_node::DEFAULT_RUNNER_SLOTS),
            job_lease: Duration::from_secs(self.job_lease_secs.or(file.job_lease_secs).unwrap_or(10).max(1)),
            meta_cache_bytes: self.meta_cache_mib.or(file.meta_cache_mib).map_or(MetaConfig::default().cache_bytes, |mib| mib.max(1) << 20),
            metrics_http,
            sandbox: self.sandbox,
        })
    }
}

/// Where the cookie comes from, first found wins: `--cookie` (with a warning: the process list
/// shows it), WHARF_COOKIE, a cookie file (`--cookie-file`, WHARF_COOKIE_FILE, `cookie_file`
/// in the config file), `cookie` in the config file. Weak and example cookies are refused.
fn resolve_cookie(
    flag: Option<String>,
    env: Option<String>,
    file: Option<PathBuf>,
    in_config: Option<String>,
) -> anyhow::Result<Cookie> {
    let value = if let Some(value) = flag {
        eprintln!(
            "wharf: warning: --cookie puts the cluster's secret in the process list, where every user of this \
             machine can read it; use WHARF_COOKIE or --cookie-file instead"
        );
        value
    } else if let Some(value) = env {
        value
    } else if let Some(path) = file {
        warn_if_readable_by_others(&path);
        std::fs::read_to_string(&path).with_context(|| format!("cannot read the cookie file {}", path.display()))?
    } else if let Some(value) = in_config {
        value
    } else {
        bail!(
            "every process needs the cluster's cookie: set WHARF_COOKIE or pass --cookie-file FILE \
             (cookie_file in the config file); {}",
            wharf_cluster::cookie::MAKE_ONE
        );
    };
    Ok(Cookie::new(&value)?)
}

fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            eprintln!(
                "wharf: warning: the cookie file {} can be read by other users (mode {:o}); chmod 600 it",
                path.display(),
                meta.permissions().mode() & 0o777
            );
        }
    }
}

/// This member's certificates: the operator's files; or those in `DATA_DIR/tls`; or, for the
/// first node of a new cluster (no `--join`), a new cluster CA; or, for a joiner, a
/// certificate from a member, asked for before anything is created in the data directory (so
/// a joiner with the wrong cookie leaves nothing behind). Returns whether it must be saved.
async fn identity(settings: &Settings) -> anyhow::Result<(Identity, bool)> {
    if let Some(files) = &settings.tls {
        return Ok((Identity::load_files(files)?, false));
    }
    if let Some(identity) = Identity::load(&settings.data_dir.join("tls"))? {
        return Ok((identity, false));
    }
    if settings.join.is_empty() {
        tracing::info!("no cluster certificate yet and nothing to --join: making a new cluster CA");
        return Ok((Identity::new_cluster(settings.id)?, true));
    }
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        for addr in &settings.join {
            match wharf_cluster::enroll::enroll(addr, settings.id, &settings.cookie, ENROLL_TIMEOUT).await {
                Ok(identity) => return Ok((identity, true)),
                Err(error) if error.is_transient() && tokio::time::Instant::now() < deadline => {
                    tracing::info!(%error, "no certificate yet; trying again");
                }
                Err(error) => return Err(error.into()),
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A restarting member asks its peers whether they accept its cookie (a valid certificate
/// gets it through TLS, but a wrong cookie would then fail every session for a minute, see
/// issue 13): the first definite answer counts. While every peer is unreachable or slow (a
/// loaded machine, peers restarting too), it asks again, for up to [`COOKIE_CHECK_PATIENCE`];
/// then it goes on, and a wrong cookie fails later, at the sessions.
async fn check_cookie(settings: &Settings, peers: &[String]) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + COOKIE_CHECK_PATIENCE;
    loop {
        let mut checks = tokio::task::JoinSet::new();
        for peer in peers {
            let (peer, id, cookie) = (peer.clone(), settings.id, settings.cookie.clone());
            checks.spawn(async move { wharf_cluster::enroll::check_cookie(&peer, id, &cookie, COOKIE_CHECK_TIMEOUT).await });
        }
        // Returning drops the set, which cancels the checks still running.
        while let Some(result) = checks.join_next().await {
            match result {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(error)) if error.is_transient() => {}
                Ok(Err(error)) => return Err(error.into()),
                Err(error) => tracing::warn!(%error, "a cookie check failed to run"),
            }
        }
        if peers.is_empty() || tokio::time::Instant::now() >= deadline {
            tracing::warn!("no peer could check this node's cookie; going on");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Connects, opens the metadata store and serves Raft. Returns the cluster handle and store.
async fn connect(settings: &Settings) -> anyhow::Result<(Cluster, Meta)> {
    let (identity, new) = identity(settings).await?;
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("cannot create {}", settings.data_dir.display()))?;
    if new {
        identity.save(&settings.data_dir.join("tls"))?;
    }
    let mut cluster = Cluster::start(settings.id, settings.listen, settings.cookie.clone(), identity).await?;
    let meta = Meta::open(
        &settings.data_dir.join("meta"),
        settings.id,
        settings.listen.to_string(),
        MetaConfig {
            cache_bytes: settings.meta_cache_bytes,
            ..MetaConfig::default()
        },
        Some(cluster.transport()),
    )
    .await
    .context("cannot open the metadata store")?;
    cluster.serve_raft(meta.clone()).await?;
    // Peers from the command line, and every member known from before a restart.
    let mut peers = settings.join.clone();
    peers.extend(meta.status().addresses.into_values());
    peers.sort();
    peers.dedup();
    peers.retain(|p| *p != settings.listen.to_string());
    if !new {
        check_cookie(settings, &peers).await?;
    }
    for peer in &peers {
        if let Err(error) = cluster.connect(peer).await {
            tracing::warn!(%error, "peer not reachable now");
        }
    }
    cluster.keep_connected(meta.clone(), settings.listen.to_string());
    Ok((cluster, meta))
}

/// Joins the group through a member, unless this process is a member already.
async fn join_if_new(cluster: &Cluster, meta: &Meta, settings: &Settings, storage: Option<NodeRecord>) -> anyhow::Result<()> {
    if meta.is_initialized().await? {
        return Ok(());
    }
    cluster.wait_for_peer(&settings.join, START_TIMEOUT).await?;
    let request = JoinRequest {
        id: settings.id.0,
        addr: settings.listen.to_string(),
        storage,
    };
    cluster.join(&request, START_TIMEOUT * 2).await?;
    Ok(())
}

/// `wharf node`: a storage node.
pub async fn run_node(args: ProcessArgs) -> anyhow::Result<()> {
    let settings = args.resolve()?;
    let telemetry = crate::telemetry::install()?;
    // Bound before anything registers, so the record names the port actually in use.
    let metrics_listener = match settings.metrics_http {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for metrics on {addr}"))?,
        ),
        None => None,
    };
    let metrics_addr = match &metrics_listener {
        Some(listener) => Some(crate::telemetry::advertised(listener.local_addr()?, settings.listen)),
        None => None,
    };
    let (cluster, meta) = connect(&settings).await?;
    wharf_telemetry::spawn_named("raft-metrics", wharf_meta::export_raft_metrics(meta.clone()));
    let record = NodeRecord {
        id: settings.id,
        addr: settings.listen.to_string(),
        state: NodeState::Active,
        weight: settings.weight,
        metrics_addr: metrics_addr.clone(),
    };
    let first = settings.join.is_empty() && !meta.is_initialized().await?;
    if first {
        meta.bootstrap_single().await.context("cannot start the metadata Raft group")?;
        register_node(&meta, record.clone()).await?;
        let token = admin_token(&meta, &settings.data_dir).await?;
        println!("wharf: new cluster; admin token {token} (also in {})", settings.data_dir.join("admin-token").display());
    } else {
        join_if_new(&cluster, &meta, &settings, Some(record.clone())).await?;
    }
    meta.wait_caught_up(START_TIMEOUT).await.context("the metadata did not catch up")?;
    let id = settings.id;
    meta.wait_for_state(START_TIMEOUT, "this node's record", |d| d.nodes().iter().any(|n| n.id == id))
        .await
        .context("this node's record did not arrive")?;
    // A restarted node's record still names the metrics port of its last run.
    register_node(&meta, record).await?;
    cluster.connect_all(&meta, &settings.listen.to_string(), MESH_TIMEOUT).await;
    let mut config = NodeConfig::new(settings.id, settings.data_dir.clone());
    config.runner_slots = settings.runner_slots;
    config.job_lease = settings.job_lease;
    config.metrics_addr = metrics_addr.clone();
    settings.sandbox.apply(&mut config);
    let node = StorageNode::start(config, meta.clone())
        .await
        .context("cannot start the storage node")?;
    telemetry.add_collector(node.metrics_collector());
    let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics_server = metrics_listener.map(|listener| {
        wharf_telemetry::spawn_named("metrics-listener", crate::telemetry::serve_metrics(listener, telemetry, async move {
            let _ = metrics_stopped.await;
        }))
    });
    let stop = shutdown_signal();
    match &metrics_addr {
        Some(addr) => println!("wharf: node {} ready on {} (metrics on http://{addr}/metrics)", settings.id, settings.listen),
        None => println!("wharf: node {} ready on {}", settings.id, settings.listen),
    }
    stop.await;

    tracing::info!("shutting down");
    let _ = stop_metrics.send(());
    if let Some(server) = metrics_server {
        match server.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "the metrics listener failed"),
            Err(error) => tracing::warn!(%error, "the metrics listener task failed"),
        }
    }
    node.shutdown().await;
    meta.shutdown().await.context("cannot stop the metadata store cleanly")?;
    cluster.shutdown();
    Ok(())
}

/// `wharf front`: the HTTP front of a cluster.
pub async fn run_front(args: ProcessArgs) -> anyhow::Result<()> {
    let settings = args.resolve()?;
    if settings.join.is_empty() && !is_member(&settings.data_dir.join("meta")) {
        bail!("a front needs --join with a node's cluster address");
    }
    let listener = tokio::net::TcpListener::bind(settings.http)
        .await
        .with_context(|| format!("cannot listen on {}", settings.http))?;
    let address = listener.local_addr()?;
    let telemetry = crate::telemetry::install()?;
    let (cluster, meta) = connect(&settings).await?;
    wharf_telemetry::spawn_named("raft-metrics", wharf_meta::export_raft_metrics(meta.clone()));
    join_if_new(&cluster, &meta, &settings, None).await?;
    meta.wait_caught_up(START_TIMEOUT).await.context("the metadata did not catch up")?;
    meta.wait_for_state(START_TIMEOUT, "the cluster's nodes", |d| !d.nodes().is_empty())
        .await
        .context("the cluster's state did not arrive")?;
    cluster.connect_all(&meta, &settings.listen.to_string(), MESH_TIMEOUT).await;
    let public_url = format!("http://{address}");
    let limits = wharf_front::HttpLimits::default().with_env_overrides()?;
    let app = wharf_front::app(
        FrontConfig {
            public_url: public_url.clone(),
            metrics_addr: Some(crate::telemetry::advertised(address, settings.listen)),
            limits: limits.clone(),
            ..FrontConfig::default()
        },
        meta.directory(),
        telemetry,
    );
    let stop = shutdown_signal();
    println!("wharf: serving on {public_url}");
    wharf_front::serve(listener, app, &limits, stop)
        .await
        .context("the HTTP server failed")?;
    meta.shutdown().await.context("cannot stop the metadata store cleanly")?;
    cluster.shutdown();
    Ok(())
}

/// Whether a metadata store already exists at `dir` (a restarted front needs no `--join`).
fn is_member(dir: &Path) -> bool {
    dir.join("db").exists() || dir.join("conf").exists()
}
