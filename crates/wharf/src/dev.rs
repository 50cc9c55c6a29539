//! `wharf dev`: a whole Wharf in one process.
//!
//! The same parts a cluster runs, wired locally: a metadata Raft group with this node as its
//! only voter, a storage node whose router actor joins its process group, and the front, which
//! finds that router through the group exactly as it would find a remote one. `/metrics` on
//! the one HTTP port has all of their metrics.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use wharf_front::FrontConfig;
use wharf_meta::{Meta, MetaConfig};
use wharf_node::{NodeConfig, StorageNode};
use wharf_proto::{NodeId, NodeRecord, NodeState};

use crate::bootstrap::{admin_token, register_node, shutdown_signal};

/// The id of the one node of `wharf dev`.
const DEV_NODE: NodeId = NodeId(1);

/// Runs until SIGINT or SIGTERM, then stops the front, the node and the Raft group in turn.
pub async fn run(
    data_dir: PathBuf,
    listen: SocketAddr,
    actor_idle_timeout: std::time::Duration,
    runner_slots: usize,
    meta_config: MetaConfig,
    sandbox: crate::sandbox_args::SandboxArgs,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&data_dir).with_context(|| format!("cannot create {}", data_dir.display()))?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let address = listener.local_addr()?;
    let telemetry = crate::telemetry::install()?;

    let meta = Meta::open(&data_dir.join("meta"), DEV_NODE, address.to_string(), meta_config, None)
        .await
        .context("cannot open the metadata store")?;
    meta.bootstrap_single().await.context("cannot start the metadata Raft group")?;
    wharf_telemetry::spawn_named("raft-metrics", wharf_meta::export_raft_metrics(meta.clone()));
    // One process, one HTTP port: `/metrics` there has the node's and the front's metrics.
    let record = NodeRecord {
        id: DEV_NODE,
        addr: address.to_string(),
        state: NodeState::Active,
        weight: 100,
        metrics_addr: Some(address.to_string()),
    };
    register_node(&meta, record).await?;
    let token = admin_token(&meta, &data_dir).await?;

    let mut node_config = NodeConfig::new(DEV_NODE, data_dir.clone());
    node_config.actor_idle_timeout = actor_idle_timeout;
    node_config.runner_slots = runner_slots;
    node_config.metrics_addr = Some(address.to_string());
    sandbox.apply(&mut node_config);
    let node = StorageNode::start(node_config, meta.clone())
        .await
        .context("cannot start the storage node")?;
    telemetry.add_collector(node.metrics_collector());
    let public_url = format!("http://{address}");
    let limits = wharf_front::HttpLimits::default().with_env_overrides()?;
    let app = wharf_front::app(
        FrontConfig {
            public_url: public_url.clone(),
            metrics_addr: Some(address.to_string()),
            limits: limits.clone(),
            ..FrontConfig::default()
        },
        meta.directory(),
        telemetry,
    );

    let stop = shutdown_signal();
    println!("wharf: serving on {public_url}");
    println!("wharf: admin token {token} (also in {})", data_dir.join("admin-token").display());
    println!("wharf: try  curl -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' -d '{{\"name\":\"acme/app\"}}' {public_url}/api/v1/repos");
    wharf_front::serve(listener, app, &limits, stop)
        .await
        .context("the HTTP server failed")?;

    tracing::info!("shutting down");
    node.shutdown().await;
    meta.shutdown().await.context("cannot stop the metadata store cleanly")?;
    Ok(())
}

