//! A small client of the HTTP API, for operators and the quick tour. Credentials come from
//! [`crate::credentials`]; lists print as tables ([`crate::output::table`]) or, with `--json`,
//! as the API's JSON.

use anyhow::{anyhow, bail, Context};
use clap::Subcommand;
use serde_json::{json, Value};

use crate::credentials::{ClientArgs, Credentials, TokenSource};
use crate::output::{cell, table};

/// Which Wharf to talk to, with which token, and how to print.
#[derive(Clone)]
pub struct Server {
    credentials: Credentials,
    /// `--json`: print the API's answers as they are.
    pub json: bool,
}

impl Server {
    /// Resolves the flags, variables and config file (see [`crate::credentials`]).
    pub fn new(args: &ClientArgs) -> anyhow::Result<Self> {
        Ok(Server { credentials: crate::credentials::resolve(args)?, json: args.json })
    }

    /// A client with these credentials (`wharf login` checks a token with it).
    pub fn from_credentials(credentials: Credentials) -> Self {
        Server { credentials, json: false }
    }

    /// Prints `value` as the API's JSON with `--json`, otherwise as `human` writes it.
    pub fn show(&self, value: &Value, human: impl FnOnce(&Value)) {
        if self.json {
            print(value);
        } else {
            human(value);
        }
    }

    /// GETs the list at `path` and prints its items (under `key`) as a table with `header`, one
    /// `row` each, the columns at `right` aligned right; or, with `--json`, the answer as it is.
    pub async fn list(&self, path: &str, key: &str, header: &[&str], right: &[usize], row: impl Fn(&Value) -> Vec<String>) -> anyhow::Result<()> {
        let listed = self.send(reqwest::Method::GET, path, None).await?;
        self.show(&listed, |listed| {
            let mut rows = table(header);
            for item in listed[key].as_array().into_iter().flatten() {
                rows.add_row(row(item));
            }
            crate::output::right_align(&mut rows, right);
            crate::output::print_table(rows);
        });
        Ok(())
    }

    /// The base URL, without a trailing slash.
    pub(crate) fn url(&self) -> &str {
        self.credentials.url.trim_end_matches('/')
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let request = reqwest::Client::new().request(method, url);
        match &self.credentials.token {
            Some((token, _)) => request.bearer_auth(token),
            None => request,
        }
    }

    /// The error for a failed request: the status and the API's message; for a 401, where the
    /// token came from (or that there was none).
    fn failure(&self, status: reqwest::StatusCode, value: &Value) -> anyhow::Error {
        let message = value["error"]["message"].as_str().map(str::to_owned).unwrap_or_else(|| match value {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        });
        if status != reqwest::StatusCode::UNAUTHORIZED {
            return anyhow!("{status}: {message}");
        }
        match &self.credentials.token {
            Some((_, TokenSource::Login)) => anyhow!("{status}: {message}"),
            Some((_, source)) => {
                let hint = match source {
                    TokenSource::DevDataDir(_) => "; it may be a stale token of an earlier `wharf dev`",
                    _ => "",
                };
                anyhow!("{status}: {message} (the token came from {source}{hint}; `wharf login` saves another)")
            }
            None => anyhow!(
                "{status}: {message} (no token: pass --token, set WHARF_TOKEN, or run `wharf login --url {}`)",
                self.url()
            ),
        }
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
        let url = format!("{}/api/v1/jobs/{job}/log?offset={offset}", self.url());
        let response = self.request(reqwest::Method::GET, &url).send().await.with_context(|| unreachable(&url))?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            return Err(self.failure(status, &serde_json::from_str(&text).unwrap_or(Value::String(text))));
        }
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let complete = header("x-wharf-log-complete").as_deref() == Some("true");
        let next = header("x-wharf-log-offset").and_then(|v| v.parse().ok());
        let text = response.text().await?;
        Ok((text.clone(), next.unwrap_or(offset + text.len() as u64), complete))
    }

    /// Opens a Server-Sent Events stream at `path` and yields its events until the server
    /// closes it.
    pub(crate) async fn events(
        &self,
        path: &str,
    ) -> anyhow::Result<impl futures::Stream<Item = anyhow::Result<eventsource_stream::Event>>> {
        use eventsource_stream::Eventsource;
        use futures::StreamExt;
        let url = format!("{}{path}", self.url());
        let response = self
            .request(reqwest::Method::GET, &url)
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .send()
            .await
            .with_context(|| unreachable(&url))?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            return Err(self.failure(status, &serde_json::from_str(&text).unwrap_or(Value::String(text))));
        }
        // The body's chunks as a stream (reqwest's `stream` feature is not built); it ends at
        // the first error.
        let chunks = futures::stream::unfold(Some(response), |response| async move {
            let mut response = response?;
            match response.chunk().await {
                Ok(Some(chunk)) => Some((Ok(chunk), Some(response))),
                Ok(None) => None,
                Err(error) => Some((Err(error), None)),
            }
        });
        Ok(chunks.eventsource().map(|event| event.map_err(|error| anyhow!("the event stream broke: {error}"))))
    }

    async fn send_once(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.url());
        let mut request = self.request(method, &url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.with_context(|| unreachable(&url))?;
        let status = response.status();
        let text = response.text().await?;
        let value: Value = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        if !status.is_success() {
            return Err(self.failure(status, &value));
        }
        Ok(value)
    }
}

/// `wharf repo …`
#[derive(Subcommand)]
pub enum RepoCommand {
    /// Create a repository.
    Create {
        /// The repository, as owner/name.
        name: String,
    },
    /// List repositories.
    List,
    /// Show one repository.
    Show {
        /// The repository, as owner/name.
        name: String,
    },
    /// Delete a repository.
    Delete {
        /// The repository, as owner/name.
        name: String,
    },
}

/// `wharf branch …`
#[derive(Subcommand)]
pub enum BranchCommand {
    /// List a repository's branches.
    List {
        /// The repository, as owner/name.
        repo: String,
    },
    /// Create a branch.
    Create {
        /// The repository, as owner/name.
        repo: String,
        /// The new branch's name.
        name: String,
        /// Branch, tag or commit to start from (default: the default branch).
        #[arg(long)]
        from: Option<String>,
    },
}

pub async fn repo(server: Server, command: RepoCommand) -> anyhow::Result<()> {
    use reqwest::Method;
    match command {
        RepoCommand::Create { name } => {
            let created = server.send(Method::POST, "/api/v1/repos", Some(json!({ "name": name }))).await?;
            server.show(&created, |created| out!("created {name}; push to {}", created["clone_url"].as_str().unwrap_or("")));
        }
        RepoCommand::List => {
            server
                .list("/api/v1/repos", "repos", &["NAME", "NODE", "CREATED", "CLONE URL"], &[], |repo| {
                    vec![cell(&repo["name"]), cell(&repo["node"]), time_ago(&repo["created_ms"]), cell(&repo["clone_url"])]
                })
                .await?;
        }
        RepoCommand::Show { name } => print(&server.send(Method::GET, &format!("/api/v1/repos/{name}"), None).await?),
        RepoCommand::Delete { name } => {
            server.send(Method::DELETE, &format!("/api/v1/repos/{name}"), None).await?;
            if !server.json {
                out!("deleted {name}");
            }
        }
    }
    Ok(())
}

pub async fn branch(server: Server, command: BranchCommand) -> anyhow::Result<()> {
    use reqwest::Method;
    match command {
        BranchCommand::List { repo } => {
            let path = format!("/api/v1/repos/{repo}/branches");
            server
                .list(&path, "branches", &["NAME", "COMMIT", "DEFAULT"], &[], |branch| {
                    let commit = branch["commit"].as_str().unwrap_or("");
                    let default = if branch["default"] == true { "yes" } else { "" };
                    vec![cell(&branch["name"]), commit[..commit.len().min(12)].to_owned(), default.to_owned()]
                })
                .await?;
        }
        BranchCommand::Create { repo, name, from } => {
            let body = json!({ "name": name, "from": from });
            print(&server.send(Method::POST, &format!("/api/v1/repos/{repo}/branches"), Some(body)).await?);
        }
    }
    Ok(())
}

/// Prints a JSON answer as indented JSON (nothing for an empty answer).
pub(crate) fn print(value: &Value) {
    if !value.is_null() {
        out!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
    }
}

/// A time in milliseconds since the epoch, as how long ago it was ("3m 12s ago").
pub(crate) fn time_ago(ms: &Value) -> String {
    let Some(ms) = ms.as_u64() else { return "-".into() };
    let then = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    match std::time::SystemTime::now().duration_since(then) {
        Ok(ago) => format!("{} ago", humantime::format_duration(std::time::Duration::from_secs(ago.as_secs().max(1)))),
        Err(_) => "just now".into(),
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
        /// Give up after this long: `90s`, `5m`, `1h 30m`, or a number of seconds.
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        timeout: std::time::Duration,
    },
}

pub async fn cluster(server: Server, command: ClusterCommand) -> anyhow::Result<()> {
    use reqwest::Method;
    match command {
        ClusterCommand::Status => {
            let status = server.send(Method::GET, "/api/v1/cluster", None).await?;
            server.show(&status, print_status);
        }
        ClusterCommand::Leave { node } => {
            server.send(Method::DELETE, &format!("/api/v1/cluster/nodes/{node}"), None).await?;
            out!("node {node} has left the cluster; its process can be stopped");
        }
        ClusterCommand::Wait { timeout } => {
            let deadline = std::time::Instant::now() + timeout;
            // A poll that prints what it waits for at each step, not a retry of a failed call
            // (those are `send`'s): kept as a loop.
            loop {
                let status = server.send(Method::GET, "/api/v1/cluster", None).await?;
                let nodes = status["nodes"].as_array().cloned().unwrap_or_default();
                let unreachable = nodes.iter().filter(|n| n["reachable"] != true).count();
                let misplaced = status["misplaced"].as_u64().unwrap_or(0);
                if unreachable == 0 && misplaced == 0 {
                    out!("cluster healthy and balanced: {}", count(nodes.len() as u64, "node", "nodes"));
                    return Ok(());
                }
                out!(
                    "waiting: {} unreachable, {} to move",
                    count(unreachable as u64, "node", "nodes"),
                    count(misplaced, "repository", "repositories")
                );
                if std::time::Instant::now() > deadline {
                    bail!("the cluster is not healthy and balanced after {}", humantime::format_duration(timeout));
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
            drain(&server, node).await?;
        }
    }
    Ok(())
}

/// Follows a drain until the node is drained: a progress bar on a terminal, a line per change
/// otherwise.
async fn drain(server: &Server, node: u64) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let mut total = None;
    let mut last = String::new();
    let bar = crate::output::progress_bar(0, "{spinner} draining node {prefix} [{bar:30}] {pos}/{len} repositories moved ({elapsed})");
    bar.set_prefix(node.to_string());
    // A poll that shows the drain's progress, not a retry: kept as a loop.
    loop {
        let status = server.send(reqwest::Method::GET, "/api/v1/cluster", None).await?;
        let Some(entry) = status["nodes"].as_array().and_then(|n| n.iter().find(|e| e["id"] == node)).cloned() else {
            bar.abandon();
            bail!("node {node} disappeared from the cluster");
        };
        let left = entry["repos"].as_u64().unwrap_or(0);
        let total = *total.get_or_insert(left);
        let moved = total.saturating_sub(left);
        bar.set_length(total);
        bar.set_position(moved);
        let line = format!("draining node {node}: {moved} of {} moved", count(total, "repository", "repositories"));
        if bar.is_hidden() && line != last {
            out!("{line}");
            last = line;
        }
        if entry["state"] == "drained" {
            bar.finish_and_clear();
            out!(
                "node {node} drained: {} moved in {}",
                count(total, "repository", "repositories"),
                humantime::format_duration(std::time::Duration::from_secs(started.elapsed().as_secs()))
            );
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// A duration as humantime writes it (`5m`, `1h 30m`), or a bare number of seconds.
fn parse_duration(text: &str) -> Result<std::time::Duration, humantime::DurationError> {
    match text.trim().parse::<u64>() {
        Ok(seconds) => Ok(std::time::Duration::from_secs(seconds)),
        Err(_) => humantime::parse_duration(text),
    }
}

/// "1 repository", "2 repositories".
pub(crate) fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn print_status(status: &Value) {
    out!(
        "balanced: {} ({} to move)",
        if status["balanced"] == true { "yes" } else { "no" },
        count(status["misplaced"].as_u64().unwrap_or(0), "repository", "repositories")
    );
    let mut nodes = table(&["ID", "ADDRESS", "STATE", "RAFT", "REPOS", "ACTORS", "SESSIONS"]);
    for node in status["nodes"].as_array().into_iter().flatten() {
        nodes.add_row(vec![
            cell(&node["id"]),
            cell(&node["addr"]),
            cell(&node["state"]),
            cell(&node["raft_role"]),
            cell(&node["repos"]),
            cell(&node["actors"]),
            cell(&node["sessions"]),
        ]);
    }
    for other in status["other_members"].as_array().into_iter().flatten() {
        nodes.add_row(vec![cell(&other["id"]), "(front)".into(), "-".into(), cell(&other["raft_role"]), "-".into(), "-".into(), "-".into()]);
    }
    crate::output::right_align(&mut nodes, &[0, 4, 5, 6]);
    crate::output::print_table(nodes);
}

/// The error for a server that does not answer, with where to look.
fn unreachable(url: &str) -> String {
    format!("cannot reach {url} (is Wharf running there? `wharf dev` starts one; --url, WHARF_URL or `wharf login` name another)")
}
