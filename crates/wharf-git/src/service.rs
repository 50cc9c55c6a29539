//! The server side of git's pack protocol, which gix does not have: run the `git` binary's
//! `upload-pack` / `receive-pack` in stateless-RPC mode, as Gitaly does.
//!
//! The caller owns the child process: it feeds the request body to stdin, reads the response
//! from stdout, and kills the process if the client goes away. `receive-pack` keeps the pushed
//! objects in a quarantine directory until every ref update is accepted, so a killed or
//! refused push leaves the repository as it was.

use std::path::Path;
use std::process::Stdio;

use tokio::process::{Child, Command};
use wharf_proto::GitService;

/// Starts `git upload-pack` or `git receive-pack` for the bare repository at `path`.
///
/// `advertise_refs` selects the ref advertisement (`GET info/refs`) instead of the RPC.
/// `git_protocol` is the client's `Git-Protocol` header. It is not passed on to upload-pack:
/// protocol v2's upload-pack (git 2.47) serves any object the repository has, whatever the
/// settings, so a commit whose branch was deleted would stay fetchable by its id. Without it
/// git answers in protocol v0, which every client falls back to, and which serves only what
/// the advertised refs reach.
pub fn spawn_service(
    path: &Path,
    service: GitService,
    advertise_refs: bool,
    git_protocol: Option<&str>,
) -> std::io::Result<Child> {
    let mut command = Command::new("git");
    command
        // Durability: a push is acknowledged only once objects and refs are on disk.
        .args(["-c", "core.fsync=objects,reference", "-c", "core.fsyncMethod=fsync"])
        // Only what refs reach is served to fetches; repositories created before this setting
        // have `allowAnySHA1InWant = true` in their config, which the command line overrides.
        .args(["-c", "uploadpack.allowAnySHA1InWant=false"])
        .arg(match service {
            GitService::UploadPack => "upload-pack",
            GitService::ReceivePack => "receive-pack",
        })
        .arg("--stateless-rpc");
    if advertise_refs {
        command.arg("--http-backend-info-refs");
    }
    command
        .arg(path)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so that an abort also stops the index-pack or
        // unpack-objects that receive-pack runs.
        .process_group(0)
        .kill_on_drop(true);
    if let (Some(protocol), GitService::ReceivePack) = (git_protocol, service) {
        command.env("GIT_PROTOCOL", protocol);
    }
    command.spawn()
}

/// Kills the process group of a service started by [`spawn_service`]: git and the helpers it
/// started. Falls back to killing git alone if the group cannot be signalled.
pub fn kill_service(child: &mut Child) {
    let group = child.id().and_then(|pid| i32::try_from(pid).ok()).and_then(rustix::process::Pid::from_raw);
    if let Some(group) = group {
        if rustix::process::kill_process_group(group, rustix::process::Signal::KILL).is_ok() {
            return;
        }
    }
    let _ = child.start_kill();
}
