//! The settings of a storage node's sandbox and logs, shared by `wharf dev` and `wharf node`
//! (flags or `WHARF_*` variables; a node's TOML file does not take them).

use clap::Args;
use wharf_sandbox::SandboxMode;
use wharf_node::NodeConfig;

/// How a node confines the CI jobs and instances it runs.
#[derive(Args, Debug, Clone, Default)]
pub struct SandboxArgs {
    /// What confines CI jobs and deployed instances: `bubblewrap` (Debian's bubblewrap
    /// package; without it the node runs none), or `none` to run them unconfined as Wharf's
    /// own user, which lets anyone who can push read this node's data.
    #[arg(long, env = "WHARF_SANDBOX", default_value = "bubblewrap")]
    sandbox: SandboxMode,
    /// The user id jobs and instances run as (65534, `nobody`, by default).
    #[arg(long, env = "WHARF_SANDBOX_UID")]
    sandbox_uid: Option<u32>,
    /// A directory every job of the node may read and write, at the same path (a cache shared
    /// by jobs, say); repeat for more. What one job leaves there, later jobs see.
    #[arg(long = "sandbox-volume", env = "WHARF_SANDBOX_VOLUMES", value_delimiter = ',')]
    sandbox_volumes: Vec<std::path::PathBuf>,
    /// MiB of a job's log (and of an instance's output) that is kept (default 4).
    #[arg(long, env = "WHARF_LOG_LIMIT_MIB")]
    log_limit_mib: Option<u64>,
}

impl SandboxArgs {
    /// Puts these settings into `config`.
    pub fn apply(&self, config: &mut NodeConfig) {
        config.sandbox = self.sandbox;
        if let Some(uid) = self.sandbox_uid {
            config.sandbox_uid = uid;
        }
        config.sandbox_volumes = self.sandbox_volumes.clone();
        if let Some(mib) = self.log_limit_mib {
            config.log_limit_bytes = mib.max(1) << 20;
        }
    }
}
