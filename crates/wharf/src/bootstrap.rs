//! Start-up steps shared by `wharf dev` and `wharf node`: recording the node (and where it
//! serves metrics), the admin token, and waiting for a stop signal.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use rand::RngCore;
use wharf_meta::{hash_token, Command, Meta};
use wharf_proto::{NodeRecord, Principal};

/// Records this node as a member, once; on later starts, only updates where it serves
/// metrics if that changed (a listener on port 0 gets a new port each time). Its state and
/// weight in the records stay as they are: a drained node that restarts is still drained.
pub async fn register_node(meta: &Meta, record: NodeRecord) -> anyhow::Result<()> {
    let known = meta.directory().nodes().into_iter().find(|n| n.id == record.id);
    let record = match known {
        None => record,
        Some(known) if known.metrics_addr == record.metrics_addr => return Ok(()),
        Some(known) => NodeRecord {
            metrics_addr: record.metrics_addr,
            ..known
        },
    };
    meta.write(Command::AddNode { record }).await.context("cannot register the node")?;
    Ok(())
}

/// The admin token: created on first start (only its hash goes to the metadata store) and
/// written to `DATA_DIR/admin-token`, readable by the owner only.
pub async fn admin_token(meta: &Meta, data_dir: &Path) -> anyhow::Result<String> {
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
    meta.write(command).await.context("cannot record the admin token")?;
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

/// Resolves on SIGINT or SIGTERM; the handlers are registered when this is called.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    // Registered now, not when the future is first polled: a process that says it is ready
    // and is then sent SIGTERM must stop cleanly, not die of the signal's default action.
    let interrupt = signal(SignalKind::interrupt());
    let terminate = signal(SignalKind::terminate());
    async move {
        match (interrupt, terminate) {
            (Ok(mut interrupt), Ok(mut terminate)) => {
                tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = terminate.recv() => {}
                }
            }
            // Without signal handlers there is nothing to wait for but Ctrl-C.
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}
