//! Wharf's sandbox: where the code that a push brings runs (CI job scripts and deployed
//! instances), so that whoever can push a `.wharf.yml` cannot read this node's data directory,
//! its tokens, its cookie or another job's workspace.
//!
//! On Linux the sandbox is Debian's `bubblewrap` (`bwrap`): the program gets its own mount,
//! PID, IPC and UTS namespaces (and its own network namespace when it asks for no network), a
//! filesystem of read-only system directories (`/usr`, `/bin`, `/lib*`, `/opt` and the few
//! files of `/etc` that programs need), an empty `/tmp`, and only the directories its
//! [`Confinement`] names. It runs as an unprivileged user: when Wharf runs as root, the real
//! user `--sandbox-uid` (65534, `nobody`, by default) through `setpriv`, with no capabilities
//! and `no_new_privs`; otherwise that id inside a user namespace of its own, mapped to Wharf's
//! user, which still sees none of Wharf's files. Resource limits are `setrlimit` limits
//! (processes, data size, no core files, set by util-linux's `prlimit`); cgroups are not used.
//!
//! [`Sandbox::detect`] tries the whole setup once at start. A node that cannot sandbox says
//! so (in its log and in `/api/v1/cluster`) and runs no job and no instance, unless its
//! operator opted in to running them unconfined (`--sandbox none`).
//!
//! [`beneath`] reads what a sandboxed program left in its workspace without following the
//! links it may have planted there; [`container`] runs a job that names an `image:` in a
//! container instead, with the same confinement.
//!
//! This crate builds commands and reads files; it keeps no state and starts nothing that
//! outlives the command its caller runs. The storage node's runner and instance driver use it.

pub mod beneath;
pub mod container;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::{Deserialize, Serialize};

/// The operator's choice, `--sandbox`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxMode {
    /// Confine with bubblewrap; without it, run nothing.
    #[default]
    Bubblewrap,
    /// Run jobs and instances as Wharf's own user, unconfined: anyone who can push can then
    /// read this node's data. Only for a machine where nobody untrusted can push.
    None,
}

impl std::str::FromStr for SandboxMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "bubblewrap" => Ok(SandboxMode::Bubblewrap),
            "none" => Ok(SandboxMode::None),
            other => Err(format!("unknown sandbox {other:?}: use bubblewrap or none")),
        }
    }
}

/// The system paths every sandbox sees, read-only, where they exist. `/etc` is not bound
/// whole: an operator's secrets (a cookie file under `/etc/wharf`, say) may live there.
const SYSTEM_PATHS: &[&str] = &[
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/opt",
    "/etc/alternatives",
    "/etc/ca-certificates",
    "/etc/ssl",
    "/etc/passwd",
    "/etc/group",
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/nsswitch.conf",
    "/etc/host.conf",
    "/etc/gai.conf",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/mime.types",
    "/etc/os-release",
    "/etc/python3",
    "/etc/python3.11",
];

/// The `PATH` of a sandboxed program: the system's, as the sandbox shows only that.
pub const SANDBOX_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What one sandboxed program may see and do.
#[derive(Debug, Clone, Default)]
pub struct Confinement {
    /// Its working directory (which must be one of `writable` or `readable`).
    pub workdir: PathBuf,
    /// Directories it may change, bound at their own paths.
    pub writable: Vec<PathBuf>,
    /// Directories it may read, bound at their own paths.
    pub readable: Vec<PathBuf>,
    /// Whether it shares the machine's network (an instance must, to be reached).
    pub network: bool,
    /// Limits of its processes.
    pub limits: Limits,
}

/// `setrlimit` limits, each applying to every process of the program.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// Bytes of data (heap) each process may have: what a memory limit can be without cgroups.
    pub data_bytes: Option<u64>,
    /// Processes the sandbox user may have at once.
    pub processes: Option<u64>,
}

/// How this node runs untrusted programs; see the module's doc.
#[derive(Debug, Clone)]
pub struct Sandbox {
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    Bubblewrap {
        bwrap: PathBuf,
        /// The sandbox user's id, also its group's.
        uid: u32,
        /// Whether that is a real user of this machine that `setpriv` switches to (Wharf is
        /// root), rather than an id in a user namespace of the sandbox's own.
        real_user: bool,
    },
    /// The operator opted in to no sandbox.
    Unconfined,
    /// The machine cannot sandbox, and the operator did not opt in.
    Unavailable { reason: String },
}

impl Sandbox {
    /// Tries the sandbox once on this machine, as `mode` asks: a small program run in the same
    /// setup that jobs get.
    pub async fn detect(mode: SandboxMode, uid: u32) -> Sandbox {
        if mode == SandboxMode::None {
            return Sandbox { kind: Kind::Unconfined };
        }
        let Some(bwrap) = find_program("bwrap") else {
            return Sandbox::unavailable("bwrap (Debian's bubblewrap package) is not installed".into());
        };
        let candidate = Sandbox {
            kind: Kind::Bubblewrap {
                bwrap,
                uid,
                real_user: rustix::process::geteuid().is_root(),
            },
        };
        match candidate.try_once().await {
            Ok(()) => candidate,
            Err(reason) => Sandbox::unavailable(reason),
        }
    }

    /// A sandbox of the given kind without trying it: for tests of what is built from it.
    fn unavailable(reason: String) -> Sandbox {
        Sandbox {
            kind: Kind::Unavailable { reason },
        }
    }

    /// Runs `true` in an empty confinement; the error is what bwrap said.
    async fn try_once(&self) -> Result<(), String> {
        let scratch = std::env::temp_dir().join(format!("wharf-sandbox-probe-{}", std::process::id()));
        std::fs::create_dir_all(&scratch).map_err(|e| format!("cannot create {}: {e}", scratch.display()))?;
        self.hand_over(&scratch).map_err(|e| format!("cannot hand {} over: {e}", scratch.display()))?;
        let confinement = Confinement {
            workdir: scratch.clone(),
            writable: vec![scratch.clone()],
            ..Confinement::default()
        };
        let output = self.command("touch probe && test \"$(id -u)\" != 0", &confinement).map(|mut command| {
            command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
            command.output()
        });
        let result = match output {
            Ok(output) => match output.await {
                Ok(output) if output.status.success() => Ok(()),
                Ok(output) => Err(format!("bwrap failed: {}", String::from_utf8_lossy(&output.stderr).trim())),
                Err(error) => Err(format!("bwrap did not start: {error}")),
            },
            Err(error) => Err(error),
        };
        let _ = std::fs::remove_dir_all(&scratch);
        result
    }

    /// Whether programs may run here; the error says why not and what to do.
    pub fn ready(&self) -> Result<(), String> {
        match &self.kind {
            Kind::Unavailable { reason } => Err(format!(
                "this node cannot sandbox jobs and instances ({reason}); install bubblewrap, or start the node \
                 with --sandbox none to run them unconfined"
            )),
            _ => Ok(()),
        }
    }

    /// One line for operators: what confines programs here.
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::Bubblewrap { uid, real_user: true, .. } => format!("bubblewrap, as user {uid}"),
            Kind::Bubblewrap { uid, real_user: false, .. } => format!("bubblewrap, as user {uid} in a user namespace"),
            Kind::Unconfined => "none (the operator opted in to unconfined jobs and instances)".into(),
            Kind::Unavailable { reason } => format!("unavailable: {reason}; no job or instance runs here"),
        }
    }

    /// Gives `dir` (and everything under it) to the sandbox user, so a program may write
    /// there. Nothing to do unless Wharf is root and switches users.
    pub fn hand_over(&self, dir: &Path) -> std::io::Result<()> {
        match &self.kind {
            Kind::Bubblewrap { uid, real_user: true, .. } => chown_tree(dir, *uid, *uid),
            _ => Ok(()),
        }
    }

    /// The user and group that own what a sandboxed program writes (and that a container runs
    /// as): the sandbox user when Wharf is root, Wharf's own otherwise.
    pub fn file_owner(&self) -> (u32, u32) {
        match &self.kind {
            Kind::Bubblewrap { uid, real_user: true, .. } => (*uid, *uid),
            _ => (rustix::process::geteuid().as_raw(), rustix::process::getegid().as_raw()),
        }
    }

    /// Lets the sandbox user read `dir` (a mirror, a release's files): adds read (and, for
    /// directories, search) permission for everyone beneath it. The data directory above it
    /// stays closed (0700) to everyone but Wharf; inside the sandbox only `dir` is bound.
    pub fn share_read_only(&self, dir: &Path) -> std::io::Result<()> {
        match &self.kind {
            Kind::Bubblewrap { real_user: true, .. } => open_tree_for_reading(dir),
            _ => Ok(()),
        }
    }

    /// A command that runs `script` with `sh -c` under `confinement`. The caller adds the
    /// program's variables (its environment is cleared here, but for `PATH`), its output and
    /// its process group.
    pub fn command(&self, script: &str, confinement: &Confinement) -> Result<tokio::process::Command, String> {
        let mut command = match &self.kind {
            Kind::Unavailable { .. } => return Err(self.ready().unwrap_err()),
            Kind::Unconfined => {
                let mut command = tokio::process::Command::new("prlimit");
                command.args(limit_args(confinement.limits));
                command.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
                command
            }
            Kind::Bubblewrap { bwrap, uid, real_user } => {
                let mut command = tokio::process::Command::new(bwrap);
                command.args(bwrap_args(confinement, *uid, *real_user));
                command.env_clear().env("PATH", SANDBOX_PATH);
                command
            }
        };
        command.arg("sh").arg("-c").arg(script).current_dir(&confinement.workdir);
        Ok(command)
    }
}

/// bwrap's arguments for `confinement`, up to the program (which follows them): bwrap sets
/// up the namespaces and the filesystem, `prlimit` the limits, and (when Wharf is root)
/// `setpriv` switches to the sandbox user last.
fn bwrap_args(confinement: &Confinement, uid: u32, real_user: bool) -> Vec<String> {
    let mut args: Vec<String> = [
        "--die-with-parent",
        "--new-session",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--hostname",
        "wharf-sandbox",
    ]
    .map(String::from)
    .to_vec();
    if !confinement.network {
        args.push("--unshare-net".into());
    }
    if !real_user {
        args.extend(["--unshare-user".into(), "--uid".into(), uid.to_string(), "--gid".into(), uid.to_string()]);
    }
    for path in SYSTEM_PATHS {
        args.extend(["--ro-bind-try".into(), (*path).into(), (*path).into()]);
    }
    // /tmp first: the directories below may live under it (a test's data directory does).
    // Modes are explicit: bwrap creates with Wharf's umask (077), which would leave the
    // sandbox user unable to use /tmp or to reach its own directories by their full paths.
    args.extend(["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/tmp"].map(String::from));
    for ancestor in ancestors(confinement.readable.iter().chain(&confinement.writable)) {
        args.extend(["--perms".into(), "0755".into(), "--dir".into(), ancestor.display().to_string()]);
    }
    for path in &confinement.readable {
        let path = path.display().to_string();
        args.extend(["--ro-bind".into(), path.clone(), path]);
    }
    for path in &confinement.writable {
        let path = path.display().to_string();
        args.extend(["--bind".into(), path.clone(), path]);
    }
    args.extend(["--chdir".into(), confinement.workdir.display().to_string()]);
    if real_user {
        // Root inside the sandbox keeps only what entering the workspace (the sandbox user's,
        // mode 0700) and switching users take; setpriv then drops those too, and no_new_privs
        // stops setuid programs from taking anything back.
        args.extend(
            ["--cap-drop", "ALL", "--cap-add", "CAP_DAC_OVERRIDE", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"].map(String::from),
        );
    }
    args.push("--".into());
    args.push("prlimit".into());
    args.extend(limit_args(confinement.limits));
    if real_user {
        args.extend([
            "setpriv".into(),
            format!("--reuid={uid}"),
            format!("--regid={uid}"),
            "--clear-groups".into(),
            "--no-new-privs".into(),
            "--inh-caps=-all".into(),
        ]);
    }
    args
}

/// The directories above `paths` (not `/`), each once, parents first.
fn ancestors<'a>(paths: impl Iterator<Item = &'a PathBuf>) -> Vec<PathBuf> {
    let mut all: Vec<PathBuf> = paths
        .flat_map(|path| path.ancestors().skip(1).filter(|a| a.parent().is_some()).map(Path::to_path_buf))
        .collect();
    all.sort_by_key(|path| path.components().count());
    let mut seen = std::collections::HashSet::new();
    all.retain(|path| seen.insert(path.clone()));
    all
}

/// `prlimit`'s arguments for `limits`, up to the program.
fn limit_args(limits: Limits) -> Vec<String> {
    let mut args = vec!["--core=0".to_owned()];
    if let Some(bytes) = limits.data_bytes {
        args.push(format!("--data={bytes}"));
    }
    if let Some(processes) = limits.processes {
        args.push(format!("--nproc={processes}"));
    }
    args.push("--".into());
    args
}

/// `name` on this process's `PATH`.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|candidate| candidate.is_file())
}

/// Changes the owner of `dir` and everything beneath it, not following links.
fn chown_tree(dir: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid))?;
    if std::fs::symlink_metadata(dir)?.is_dir() {
        for entry in std::fs::read_dir(dir)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// Adds `a+r` to the files and `a+rx` to the directories beneath `dir`, not following links.
fn open_tree_for_reading(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let metadata = std::fs::symlink_metadata(dir)?;
    if metadata.file_type().is_symlink() {
        return Ok(());
    }
    let extra = if metadata.is_dir() { 0o555 } else { 0o444 };
    let mode = metadata.permissions().mode();
    if mode & extra != extra {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | extra))?;
    }
    if metadata.is_dir() {
        for entry in std::fs::read_dir(dir)? {
            open_tree_for_reading(&entry?.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sandbox_binds_only_what_the_confinement_names() {
        let confinement = Confinement {
            workdir: "/data/ci/work/job-1".into(),
            writable: vec!["/data/ci/work/job-1".into()],
            readable: vec!["/data/ci/mirrors/r.git".into()],
            network: false,
            limits: Limits::default(),
        };
        let args = bwrap_args(&confinement, 65534, true).join(" ");
        assert!(args.contains("--bind /data/ci/work/job-1 /data/ci/work/job-1"), "{args}");
        assert!(args.contains("--ro-bind /data/ci/mirrors/r.git /data/ci/mirrors/r.git"), "{args}");
        assert!(args.contains("--unshare-net"), "no network was asked for: {args}");
        assert!(!args.contains("--ro-bind-try /etc /etc"), "/etc is not bound whole: {args}");
        assert!(args.find("--tmpfs /tmp") < args.find("--bind /data"), "/tmp comes before the binds beneath it");
        assert!(
            args.contains("--perms 0755 --dir /data --perms 0755 --dir /data/ci --perms 0755 --dir /data/ci/mirrors --perms 0755 --dir /data/ci/work --ro-bind"),
            "the sandbox user can reach its directories by their full paths: {args}"
        );
        assert!(args.ends_with("-- prlimit --core=0 -- setpriv --reuid=65534 --regid=65534 --clear-groups --no-new-privs --inh-caps=-all"), "as root, setpriv switches users last: {args}");
        let as_user = bwrap_args(&Confinement { network: true, ..confinement }, 65534, false).join(" ");
        assert!(as_user.contains("--unshare-user --uid 65534"), "{as_user}");
        assert!(!as_user.contains("--unshare-net") && !as_user.contains("setpriv"), "{as_user}");
    }

    #[test]
    fn a_node_that_cannot_sandbox_runs_nothing_and_says_what_to_do() {
        let sandbox = Sandbox::unavailable("bwrap is not installed".into());
        let error = sandbox.ready().unwrap_err();
        assert!(error.contains("install bubblewrap") && error.contains("--sandbox none"), "{error}");
        assert!(sandbox.command("true", &Confinement::default()).is_err());
        assert!(sandbox.describe().starts_with("unavailable: bwrap is not installed"));
    }
}
