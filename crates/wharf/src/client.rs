//! A small client of the HTTP API, for operators and the quick tour.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

/// Which Wharf to talk to, and with which token.
#[derive(Args)]
pub struct Server {
    /// The front's URL.
    #[arg(long, env = "WHARF_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The API token; default: the contents of ./wharf-data/admin-token, if any.
    #[arg(long, env = "WHARF_TOKEN")]
    token: Option<String>,
}

impl Server {
    fn token(&self) -> Option<String> {
        self.token.clone().or_else(|| {
            std::fs::read_to_string(PathBuf::from("wharf-data/admin-token"))
                .ok()
                .map(|t| t.trim().to_owned())
        })
    }

    /// Sends a request; a 503 (a node or the metadata leader is briefly away) is retried with
    /// backoff (0.5 s doubling to 5 s) for about a minute.
    pub(crate) async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        use backon::Retryable;
        let backoff = backon::ExponentialBuilder::new()
            .with_min_delay(std::time::Duration::from_millis(500))
            .with_max_delay(std::time::Duration::from_secs(5))
            .with_total_delay(Some(std::time::Duration::from_secs(60)))
            .without_max_times();
        (|| self.send_once(method.clone(), path, body.clone()))
            .retry(backoff)
            .when(|error| error.to_string().starts_with("503"))
            .notify(|error, _| eprintln!("wharf: {error}; retrying"))
            .await
    }

    /// A job's log from `offset`: the text, the next offset, and whether the log is complete.
    pub(crate) async fn log_from(&self, job: u64, offset: u64) -> anyhow::Result<(String, u64, bool)> {
        let url = format!("{}/api/v1/jobs/{job}/log?offset={offset}", self.url.trim_end_matches('/'));
        let mut request = reqwest::Client::new().get(&url);
        if let Some(token) = self.token() {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.with_context(|| format!("cannot reach {url}"))?;
        if !response.status().is_success() {
            bail!("{}: {}", response.status(), response.text().await.unwrap_or_default());
        }
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let complete = header("x-wharf-log-complete").as_deref() == Some("true");
        let next = header("x-wharf-log-offset").and_then(|v| v.parse().ok());
        let text = response.text().await?;
        Ok((text.clone(), next.unwrap_or(offset + text.len() as u64), complete))
    }

    async fn send_once(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.url.trim_end_matches('/'));
        let mut request = reqwest::Client::new().request(method, &url);
        if let Some(token) = self.token() {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.with_context(|| format!("cannot reach {url}"))?;
        let status = response.status();
        let text = response.text().await?;
        let value: Value = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        if !status.is_success() {
            let message = value["error"]["message"].as_str().map(str::to_owned).unwrap_or_else(|| value.to_string());
            bail!("{status}: {message}");
        }
        Ok(value)
    }
}

/// `wharf repo …`
#[derive(Subcommand)]
pub enum RepoCommand {
    /// Create a repository named owner/name.
    Create { name: String },
    /// List repositories.
    List,
    /// Show one repository.
    Show { name: String },
    /// Delete a repository.
    Delete { name: String },
}

/// `wharf branch …`
#[derive(Subcommand)]
pub enum BranchCommand {
    /// List a repository's branches.
    List { repo: String },
    /// Create a branch.
    Create {
        repo: String,
        name: String,
        /// Branch, tag or commit to start from (default: the default branch).
        #[arg(long)]
        from: Option<String>,
    },
}

pub async fn repo(server: Server, command: RepoCommand) -> anyhow::Result<()> {
    use reqwest::Method;
    let value = match command {
        RepoCommand::Create { name } => server.send(Method::POST, "/api/v1/repos", Some(json!({ "name": name }))).await?,
        RepoCommand::List => server.send(Method::GET, "/api/v1/repos", None).await?,
        RepoCommand::Show { name } => server.send(Method::GET, &format!("/api/v1/repos/{name}"), None).await?,
        RepoCommand::Delete { name } => server.send(Method::DELETE, &format!("/api/v1/repos/{name}"), None).await?,
    };
    print(&value);
    Ok(())
}

pub async fn branch(server: Server, command: BranchCommand) -> anyhow::Result<()> {
    use reqwest::Method;
    let value = match command {
        BranchCommand::List { repo } => server.send(Method::GET, &format!("/api/v1/repos/{repo}/branches"), None).await?,
        BranchCommand::Create { repo, name, from } => {
            server
                .send(Method::POST, &format!("/api/v1/repos/{repo}/branches"), Some(json!({ "name": name, "from": from })))
                .await?
        }
    };
    print(&value);
    Ok(())
}

pub(crate) fn print(value: &Value) {
    if !value.is_null() {
        out!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
    }
}

/// `wharf cluster …`
#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Show every node: state, Raft role, repositories, live actors.
    Status,
    /// Move every repository off a node, then mark it drained.
    Drain {
        /// The node's id.
        node: u64,
        /// Return at once instead of waiting until the node is empty.
        #[arg(long)]
        no_wait: bool,
    },
    /// Take a drained node back into placement.
    Undrain {
        /// The node's id.
        node: u64,
    },
    /// Remove a drained node from the cluster (Raft group and records); then stop it.
    Leave {
        /// The node's id.
        node: u64,
    },
    /// Wait until every node answers and every repository is on its desired node.
    Wait {
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
}

pub async fn cluster(server: Server, command: ClusterCommand) -> anyhow::Result<()> {
    use reqwest::Method;
    match command {
        ClusterCommand::Status => {
            let status = server.send(Method::GET, "/api/v1/cluster", None).await?;
            print_status(&status);
        }
        ClusterCommand::Leave { node } => {
            server.send(Method::DELETE, &format!("/api/v1/cluster/nodes/{node}"), None).await?;
            out!("node {node} has left the cluster; its process can be stopped");
        }
        ClusterCommand::Wait { timeout } => {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(timeout);
            // A poll that prints what it waits for at each step, not a retry of a failed call
            // (those are `send`'s): kept as a loop.
            loop {
                let status = server.send(Method::GET, "/api/v1/cluster", None).await?;
                let nodes = status["nodes"].as_array().cloned().unwrap_or_default();
                let unreachable = nodes.iter().filter(|n| n["reachable"] != true).count();
                let misplaced = status["misplaced"].as_u64().unwrap_or(0);
                if unreachable == 0 && misplaced == 0 {
                    out!("cluster healthy and balanced: {} nodes", nodes.len());
                    return Ok(());
                }
                out!("waiting: {unreachable} nodes unreachable, {misplaced} repositories to move");
                if std::time::Instant::now() > deadline {
                    bail!("the cluster is not healthy and balanced after {timeout} s");
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
        ClusterCommand::Undrain { node } => {
            server.send(Method::POST, &format!("/api/v1/cluster/nodes/{node}/undrain"), None).await?;
            out!("node {node} is active again; the rebalancer moves its share back to it");
        }
        ClusterCommand::Drain { node, no_wait } => {
            server.send(Method::POST, &format!("/api/v1/cluster/nodes/{node}/drain"), None).await?;
            if no_wait {
                out!("node {node} is draining");
                return Ok(());
            }
            let mut total = None;
            // A poll that prints the drain's progress, not a retry: kept as a loop.
            loop {
                let status = server.send(Method::GET, "/api/v1/cluster", None).await?;
                let Some(entry) = status["nodes"].as_array().and_then(|n| n.iter().find(|e| e["id"] == node)).cloned() else {
                    bail!("node {node} disappeared from the cluster");
                };
                let left = entry["repos"].as_u64().unwrap_or(0);
                let total = *total.get_or_insert(left.max(1));
                let moved = total.saturating_sub(left);
                out!("draining node {node}: {moved} of {total} repositories moved ({}%), state {}", moved * 100 / total, entry["state"]);
                if entry["state"] == "drained" {
                    return Ok(());
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }
    Ok(())
}

fn print_status(status: &Value) {
    out!(
        "balanced: {} ({} repositories to move)",
        if status["balanced"] == true { "yes" } else { "no" },
        status["misplaced"]
    );
    out!("{:>4}  {:<22} {:<9} {:<9} {:>6} {:>7} {:>8}", "ID", "ADDRESS", "STATE", "RAFT", "REPOS", "ACTORS", "SESSIONS");
    for node in status["nodes"].as_array().into_iter().flatten() {
        let show = |v: &Value| v.as_u64().map(|n| n.to_string()).unwrap_or_else(|| "-".into());
        out!(
            "{:>4}  {:<22} {:<9} {:<9} {:>6} {:>7} {:>8}",
            node["id"],
            node["addr"].as_str().unwrap_or(""),
            node["state"].as_str().unwrap_or(""),
            node["raft_role"].as_str().unwrap_or(""),
            show(&node["repos"]),
            show(&node["actors"]),
            show(&node["sessions"]),
        );
    }
    for other in status["other_members"].as_array().into_iter().flatten() {
        out!("{:>4}  {:<22} {:<9} {:<9}", other["id"], "(front)", "-", other["raft_role"].as_str().unwrap_or(""));
    }
}
