//! `wharf dev`: a whole Wharf in one process.
//!
//! The same parts a cluster runs, wired locally: a metadata Raft group with this node as its
//! only voter, a storage node whose router actor joins its process group, and the front, which
//! finds that router through the group exactly as it would find a remote one.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use rand::RngCore;
use wharf_front::FrontConfig;
use wharf_meta::{hash_token, Command, Meta, MetaConfig};
use wharf_node::{NodeConfig, StorageNode};
use wharf_proto::{NodeId, NodeRecord, NodeState, Principal};

/// The id of the one node of `wharf dev`.
const DEV_NODE: NodeId = NodeId(1);

/// Runs until SIGINT or SIGTERM, then stops the front, the node and the Raft group in turn.
pub async fn run(data_dir: PathBuf, listen: SocketAddr) -> anyhow::Result<()> {
    std::fs::create_dir_all(&data_dir).with_context(|| format!("cannot create {}", data_dir.display()))?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let address = listener.local_addr()?;

    let meta = Meta::open(&data_dir.join("meta"), DEV_NODE, address.to_string(), MetaConfig::default())
        .await
        .context("cannot open the metadata store")?;
    meta.bootstrap_single().await.context("cannot start the metadata Raft group")?;
    register_node(&meta, address).await?;
    let token = admin_token(&meta, &data_dir).await?;

    let node = StorageNode::start(NodeConfig::new(DEV_NODE, data_dir.clone()), meta.clone())
        .await
        .context("cannot start the storage node")?;
    let public_url = format!("http://{address}");
    let app = wharf_front::app(
        FrontConfig {
            public_url: public_url.clone(),
            ..FrontConfig::default()
        },
        meta.directory(),
    );

    println!("wharf: serving on {public_url}");
    println!("wharf: admin token {token} (also in {})", data_dir.join("admin-token").display());
    println!("wharf: try  curl -H 'Authorization: Bearer {token}' -d '{{\"name\":\"acme/app\"}}' {public_url}/api/v1/repos");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("the HTTP server failed")?;

    tracing::info!("shutting down");
    node.shutdown().await;
    meta.shutdown().await.context("cannot stop the metadata store cleanly")?;
    Ok(())
}

/// Records this node as an active member, once.
async fn register_node(meta: &Meta, address: SocketAddr) -> anyhow::Result<()> {
    if meta.directory().nodes().iter().any(|n| n.id == DEV_NODE) {
        return Ok(());
    }
    let record = NodeRecord {
        id: DEV_NODE,
        addr: address.to_string(),
        state: NodeState::Active,
        weight: 100,
    };
    match meta.write(Command::AddNode { record }).await? {
        Ok(_) => Ok(()),
        Err(error) => bail!("cannot register the node: {error}"),
    }
}

/// The admin token: created on first start (only its hash goes to the metadata store) and
/// written to `DATA_DIR/admin-token`, readable by the owner only.
async fn admin_token(meta: &Meta, data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("admin-token");
    if let Ok(token) = std::fs::read_to_string(&path) {
        let token = token.trim().to_owned();
        if meta.directory().authenticate(&token).is_some() {
            return Ok(token);
        }
    }
    let mut bytes = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut bytes);
    let token = format!("wharf_{}", hex(&bytes));
    let command = Command::AddToken {
        token_hash: hash_token(&token),
        principal: Principal {
            user: "admin".into(),
            admin: true,
        },
    };
    if let Err(error) = meta.write(command).await? {
        bail!("cannot record the admin token: {error}");
    }
    write_private(&path, &token).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(token)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn write_private(path: &Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let temporary = path.with_extension(format!(
        "tmp{}",
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
    ));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temporary)?;
    file.write_all(content.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(signal) => signal,
        Err(_) => {
            let _ = interrupt.await;
            return;
        }
    };
    tokio::select! {
        _ = interrupt => {}
        _ = terminate.recv() => {}
    }
}
