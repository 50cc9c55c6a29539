//! The `wharf` binary.
//!
//! - `wharf dev` runs a whole one-node Wharf in this process: the metadata Raft group (one
//!   voter), a storage node with its repository actors, and the HTTP front.
//! - `wharf node` and `wharf front` are the processes of a cluster.
//! - `wharf repo …`, `wharf pipeline …` and the other client commands talk to the HTTP API,
//!   with the URL and token that `wharf login`, `WHARF_URL`/`WHARF_TOKEN` or `--url`/`--token`
//!   give (see `credentials`).

mod bootstrap;
#[macro_use]
mod output;
mod ci_client;
mod deploy_client;
mod client;
mod cluster;
mod credentials;
mod dev;
mod sandbox_args;
mod secrets;
mod telemetry;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "wharf", version, about = "Git hosting on actors, with Raft metadata")]
struct Cli {
    /// How log lines are written to standard error: `text` for people, `json` (one object a
    /// line, with the fields of the spans it is in, such as `request_id`) for log collectors.
    #[arg(long, global = true, value_enum, env = "WHARF_LOG_FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// The client commands' `--url`, `--token` and `--json`.
    #[command(flatten)]
    client: credentials::ClientArgs,
    #[command(subcommand)]
    command: Command,
}

/// See [`Cli::log_format`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run everything in one process: metadata, a storage node and the HTTP front.
    Dev {
        /// Where repositories, metadata and the admin token live.
        #[arg(long, default_value = "./wharf-data")]
        data_dir: PathBuf,
        /// The HTTP address to serve on (port 0 picks a free port).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Seconds a repository actor stays active with nothing to do.
        #[arg(long, env = "WHARF_ACTOR_IDLE_SECS", default_value_t = 300)]
        actor_idle_secs: u64,
        /// CI jobs that run at once.
        #[arg(long, env = "WHARF_RUNNER_SLOTS", default_value_t = wharf_node::DEFAULT_RUNNER_SLOTS)]
        runner_slots: usize,
        /// MiB of memory sled may use to cache the metadata.
        #[arg(long, env = "WHARF_META_CACHE_MIB", default_value_t = 32)]
        meta_cache_mib: u64,
        #[command(flatten)]
        sandbox: sandbox_args::SandboxArgs,
    },
    /// Save the URL and token the client commands use (in $XDG_CONFIG_HOME/wharf/config.toml
    /// or ~/.config/wharf/config.toml, mode 0600). Without --token, reads the token from
    /// standard input.
    Login,
    /// Print a completion script for a shell (e.g. `wharf completions bash > ~/.local/share/bash-completion/completions/wharf`).
    Completions {
        /// The shell: bash, elvish, fish, powershell or zsh.
        shell: clap_complete::Shell,
    },
    /// Run a storage node of a cluster (the first one starts the cluster; others --join it).
    Node {
        #[command(flatten)]
        args: cluster::ProcessArgs,
    },
    /// Run an HTTP front of a cluster: it routes every request to the owning node.
    Front {
        #[command(flatten)]
        args: cluster::ProcessArgs,
    },
    /// Manage repositories through the API.
    Repo {
        #[command(subcommand)]
        command: client::RepoCommand,
    },
    /// Look at and operate the cluster through a front's API.
    Cluster {
        #[command(subcommand)]
        command: client::ClusterCommand,
    },
    /// Manage branches through the API.
    Branch {
        #[command(subcommand)]
        command: client::BranchCommand,
    },
    /// Run, follow and cancel pipelines.
    Pipeline {
        #[command(subcommand)]
        command: ci_client::PipelineCommand,
    },
    /// Read a job's log and artifacts, retry it.
    Job {
        #[command(subcommand)]
        command: ci_client::JobCommand,
    },
    /// Manage a repository's CI variables.
    Variable {
        #[command(subcommand)]
        command: ci_client::VariableCommand,
    },
    /// Manage environments; roll one back.
    Env {
        #[command(subcommand)]
        command: deploy_client::EnvCommand,
    },
    /// Start, follow and promote deployments.
    Deployment {
        #[command(subcommand)]
        command: deploy_client::DeploymentCommand,
    },
}

/// Flags of `wharf node` that a front ignores, and the other way round: each subcommand's
/// `--help` lists only its own (issue 13). `ProcessArgs` stays one struct, as the TOML file
/// of a node and of a front share it.
const NODE_ONLY: &[&str] = &["weight", "runner_slots", "job_lease_secs", "metrics_http", "sandbox", "sandbox_uid", "sandbox_volumes", "log_limit_mib"];
const FRONT_ONLY: &[&str] = &["http"];

/// Parses the command line, with the help of `node`, `front` and `dev` trimmed to their own
/// flags.
fn parse() -> Cli {
    use clap::{CommandFactory, FromArgMatches};
    let hide = |mut command: clap::Command, names: &[&str]| {
        for name in names {
            command = command.mut_arg(*name, |arg| arg.hide(true));
        }
        command
    };
    let mut command = Cli::command()
        .mut_subcommand("node", |c| hide(c, FRONT_ONLY))
        .mut_subcommand("front", |c| hide(c, NODE_ONLY));
    // The servers take no client flags: for them, hide those global flags (a hidden global
    // flag is hidden wherever it is propagated, so this is decided from the command line).
    let server = std::env::args().skip(1).find(|arg| !arg.starts_with('-'));
    if matches!(server.as_deref(), Some("node" | "front" | "dev")) {
        command = hide(command, &["url", "token", "json"]);
    }
    let matches = command.get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit())
}

/// `wharf login`: checks the token against the server (any request with a token that is not
/// valid is refused with 401), then saves the URL and token.
async fn login(args: &credentials::ClientArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    let url = args.url.clone().or_else(|| std::env::var("WHARF_URL").ok()).unwrap_or_else(|| credentials::DEFAULT_URL.to_owned());
    let token = match &args.token {
        Some(token) => token.trim().to_owned(),
        None => {
            if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                eprint!("Paste the token for {url}: ");
            }
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).context("cannot read the token from standard input")?;
            line.trim().to_owned()
        }
    };
    if token.is_empty() {
        anyhow::bail!("no token: pass --token TOKEN or write it to standard input");
    }
    let Some(path) = credentials::config_path() else {
        anyhow::bail!("neither XDG_CONFIG_HOME nor HOME is set: nowhere to save the token");
    };
    let server = client::Server::from_credentials(credentials::Credentials {
        url: url.clone(),
        token: Some((token.clone(), credentials::TokenSource::Login)),
    });
    server
        .send(reqwest::Method::GET, "/api/v1/cluster", None)
        .await
        .with_context(|| format!("not logged in: {url} did not accept the token"))?;
    credentials::save(&path, &url, &token)?;
    out!("logged in to {url}; saved to {}", path.display());
    Ok(())
}

fn main() -> std::process::ExitCode {
    // Everything Wharf writes (metadata, repositories, logs, artifacts, the admin token) is
    // its own: files 0600, directories 0700, whatever the caller's umask.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    // The cookie is read once, then removed from the environment, so that no child process (a
    // CI job, a deployed app, git) inherits it and no job can read it from
    // /proc/<pid>/environ. Done first, while this process has a single thread: changing the
    // environment while another thread reads it is undefined behaviour in libc.
    let env_cookie = secrets::take("WHARF_COOKIE");
    let cli = parse();
    if matches!(cli.command, Command::Dev { .. } | Command::Node { .. } | Command::Front { .. }) {
        // A server never uses a client's token (clap has read it by now for the client
        // commands); an administrator's exported one must not reach the jobs it runs either.
        secrets::take("WHARF_TOKEN");
    }
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WHARF_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        )
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal: escape codes garble a log file or collector.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("wharf: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Dev {
                data_dir,
                listen,
                actor_idle_secs,
                runner_slots,
                meta_cache_mib,
                sandbox,
            } => {
                let meta = wharf_meta::MetaConfig {
                    cache_bytes: meta_cache_mib.max(1) << 20,
                    ..wharf_meta::MetaConfig::default()
                };
                dev::run(data_dir, listen, std::time::Duration::from_secs(actor_idle_secs), runner_slots, meta, sandbox).await
            }
            Command::Node { mut args } => {
                args.set_env_cookie(env_cookie);
                cluster::run_node(args).await
            }
            Command::Front { mut args } => {
                args.set_env_cookie(env_cookie);
                cluster::run_front(args).await
            }
            Command::Login => login(&cli.client).await,
            Command::Completions { shell } => {
                let mut command = <Cli as clap::CommandFactory>::command();
                let mut script = Vec::new();
                clap_complete::generate(shell, &mut command, "wharf", &mut script);
                out_raw!("{}", String::from_utf8_lossy(&script));
                Ok(())
            }
            Command::Repo { command } => client::repo(client::Server::new(&cli.client)?, command).await,
            Command::Branch { command } => client::branch(client::Server::new(&cli.client)?, command).await,
            Command::Cluster { command } => client::cluster(client::Server::new(&cli.client)?, command).await,
            Command::Pipeline { command } => ci_client::pipeline(client::Server::new(&cli.client)?, command).await,
            Command::Job { command } => ci_client::job(client::Server::new(&cli.client)?, command).await,
            Command::Variable { command } => ci_client::variable(client::Server::new(&cli.client)?, command).await,
            Command::Env { command } => deploy_client::env(client::Server::new(&cli.client)?, command).await,
            Command::Deployment { command } => deploy_client::deployment(client::Server::new(&cli.client)?, command).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("wharf: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        <Cli as clap::CommandFactory>::command().debug_assert();
    }

    /// Every positional argument says what it is (issue 13). `env` and `deployment` are left
    /// out while their ids change (issue 13, point 3).
    #[test]
    fn positional_arguments_have_help() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in command.get_positionals() {
                if arg.get_help().is_none() {
                    missing.push(format!("{path} <{}>", arg.get_id()));
                }
            }
            for sub in command.get_subcommands() {
                if !matches!(sub.get_name(), "env" | "deployment") {
                    walk(sub, &format!("{path} {}", sub.get_name()), missing);
                }
            }
        }
        let mut missing = Vec::new();
        walk(&<Cli as clap::CommandFactory>::command(), "wharf", &mut missing);
        assert!(missing.is_empty(), "positional arguments without help: {missing:?}");
    }
}
