//! `wharf pipeline`, `wharf job` and `wharf variable`: CI through the HTTP API, with a
//! follower that prints jobs' logs live and a summary at the end.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::bail;
use clap::Subcommand;
use reqwest::Method;
use serde_json::{json, Value};

use crate::client::{print, Server};

/// How often the follower looks for new log output and status changes.
const FOLLOW_POLL: Duration = Duration::from_millis(500);

/// `wharf pipeline …`
#[derive(Subcommand)]
pub enum PipelineCommand {
    /// List a repository's pipelines, newest first.
    List { repo: String },
    /// Show a pipeline and its jobs.
    Show { id: u64 },
    /// Run the pipeline of a branch's tip and follow it.
    Run {
        repo: String,
        branch: String,
        /// Return at once instead of following it.
        #[arg(long)]
        no_follow: bool,
    },
    /// Follow a pipeline: job status changes and live logs, then a summary. Exits non-zero
    /// unless it passed.
    Follow { id: u64 },
    /// Cancel every unfinished job of a pipeline.
    Cancel { id: u64 },
}

/// `wharf job …`
#[derive(Subcommand)]
pub enum JobCommand {
    /// Print a job's log (`--follow`: until the job ends).
    Log {
        id: u64,
        #[arg(long)]
        follow: bool,
    },
    /// Run a finished job again.
    Retry { id: u64 },
    /// List a job's artifacts.
    Artifacts { id: u64 },
}

/// `wharf variable …`
#[derive(Subcommand)]
pub enum VariableCommand {
    /// Set a repository's CI variable.
    Set {
        repo: String,
        name: String,
        value: String,
        /// Mask it in logs and never show it again.
        #[arg(long)]
        secret: bool,
    },
    /// List a repository's CI variables (secret values hidden).
    List { repo: String },
    /// Remove a repository's CI variable.
    Delete { repo: String, name: String },
}

pub async fn pipeline(server: Server, command: PipelineCommand) -> anyhow::Result<()> {
    match command {
        PipelineCommand::List { repo } => {
            let listed = server.send(Method::GET, &format!("/api/v1/repos/{repo}/pipelines"), None).await?;
            out!("{:>6}  {:<9} {:<12} {:<24}", "ID", "STATUS", "SHA", "REF");
            for pipeline in listed["pipelines"].as_array().into_iter().flatten() {
                let sha = pipeline["sha"].as_str().unwrap_or("");
                out!(
                    "{:>6}  {:<9} {:<12} {:<24}",
                    pipeline["id"].as_u64().unwrap_or_default(),
                    pipeline["status"].as_str().unwrap_or(""),
                    &sha[..sha.len().min(12)],
                    pipeline["ref"].as_str().unwrap_or("")
                );
            }
            Ok(())
        }
        PipelineCommand::Show { id } => {
            print(&server.send(Method::GET, &format!("/api/v1/pipelines/{id}"), None).await?);
            Ok(())
        }
        PipelineCommand::Run { repo, branch, no_follow } => {
            let body = json!({ "branch": branch });
            let pipeline = server.send(Method::POST, &format!("/api/v1/repos/{repo}/pipelines"), Some(body)).await?;
            let id = pipeline["id"].as_u64().unwrap_or_default();
            out!("pipeline {id} started for {branch} of {repo}");
            if no_follow {
                return Ok(());
            }
            follow(&server, id).await
        }
        PipelineCommand::Follow { id } => follow(&server, id).await,
        PipelineCommand::Cancel { id } => {
            let pipeline = server.send(Method::POST, &format!("/api/v1/pipelines/{id}/cancel"), None).await?;
            out!("pipeline {id} is {}", pipeline["status"].as_str().unwrap_or("?"));
            Ok(())
        }
    }
}

pub async fn job(server: Server, command: JobCommand) -> anyhow::Result<()> {
    match command {
        JobCommand::Log { id, follow } => {
            let mut offset = 0;
            loop {
                let (text, next, complete) = server.log_from(id, offset).await?;
                out_raw!("{text}");
                offset = next;
                if complete || !follow {
                    return Ok(());
                }
                tokio::time::sleep(FOLLOW_POLL).await;
            }
        }
        JobCommand::Retry { id } => {
            server.send(Method::POST, &format!("/api/v1/jobs/{id}/retry"), None).await?;
            out!("job {id} queued again");
            Ok(())
        }
        JobCommand::Artifacts { id } => {
            print(&server.send(Method::GET, &format!("/api/v1/jobs/{id}/artifacts"), None).await?);
            Ok(())
        }
    }
}

pub async fn variable(server: Server, command: VariableCommand) -> anyhow::Result<()> {
    let value = match command {
        VariableCommand::Set { repo, name, value, secret } => {
            let body = json!({ "name": name, "value": value, "secret": secret });
            server.send(Method::POST, &format!("/api/v1/repos/{repo}/variables"), Some(body)).await?
        }
        VariableCommand::List { repo } => server.send(Method::GET, &format!("/api/v1/repos/{repo}/variables"), None).await?,
        VariableCommand::Delete { repo, name } => {
            server.send(Method::DELETE, &format!("/api/v1/repos/{repo}/variables/{name}"), None).await?
        }
    };
    print(&value);
    Ok(())
}

/// What the follower has shown of one job.
#[derive(Default)]
struct Shown {
    status: String,
    attempt: u64,
    offset: u64,
    complete: bool,
}

/// Prints each job's status changes and new log lines (prefixed with the job's name) until
/// the pipeline has finished and every log is complete; then a summary.
async fn follow(server: &Server, id: u64) -> anyhow::Result<()> {
    let mut shown: BTreeMap<u64, Shown> = BTreeMap::new();
    // A poll that prints new output until the pipeline ends, not a retry: kept as a loop.
    loop {
        let pipeline = server.send(Method::GET, &format!("/api/v1/pipelines/{id}"), None).await?;
        if let Some(error) = pipeline["error"].as_str() {
            bail!("pipeline {id} failed at once: {error}");
        }
        let jobs = pipeline["jobs"].as_array().cloned().unwrap_or_default();
        for job in &jobs {
            show_job(server, job, shown.entry(job["id"].as_u64().unwrap_or_default()).or_default()).await?;
        }
        let finished = !matches!(pipeline["status"].as_str(), Some("queued" | "running"));
        if finished && shown.values().all(|s| s.complete) {
            summary(&pipeline, &jobs)?;
            return started_deployments(server, &pipeline).await;
        }
        tokio::time::sleep(FOLLOW_POLL).await;
    }
}

async fn show_job(server: &Server, job: &Value, shown: &mut Shown) -> anyhow::Result<()> {
    let id = job["id"].as_u64().unwrap_or_default();
    let name = job["name"].as_str().unwrap_or("?");
    let status = job["status"].as_str().unwrap_or("?").to_owned();
    let attempt = job["attempt"].as_u64().unwrap_or(0);
    if attempt != shown.attempt {
        (shown.attempt, shown.offset, shown.complete) = (attempt, 0, false);
    }
    if status != shown.status {
        let node = job["node"].as_u64().map(|n| format!(" on node {n}")).unwrap_or_default();
        out!("==> {name}: {status}{node}");
        shown.status = status;
    }
    if job["node"].is_null() {
        // Never started (skipped, canceled while queued, or still waiting): no log to show.
        shown.complete = job["finished_ms"].is_u64();
        return Ok(());
    }
    if shown.complete {
        return Ok(());
    }
    let (text, next, complete) = server.log_from(id, shown.offset).await?;
    // Only whole lines, so that two jobs' output never mixes within a line.
    let whole = if complete { text.len() } else { text.rfind('\n').map_or(0, |at| at + 1) };
    for line in text[..whole].lines() {
        out!("{name:>12} | {line}");
    }
    shown.offset += whole as u64;
    shown.complete = complete && whole == text.len() && next == shown.offset;
    Ok(())
}

/// After a pipeline passed: the deployments it started (one per unprotected environment whose
/// branch it ran on), so that the user knows what to follow next. They appear a moment after
/// the pipeline ends: looked for during up to 5 s, and only if the repository has an
/// environment that a pipeline deploys to.
async fn started_deployments(server: &Server, pipeline: &Value) -> anyhow::Result<()> {
    let repo = pipeline["repo"].as_u64().unwrap_or_default();
    let environments = server.send(Method::GET, &format!("/api/v1/environments?project_id={repo}"), None).await?;
    let names: BTreeMap<String, String> = environments["environments"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["protected"] == false)
        .map(|e| (e["id"].as_str().unwrap_or_default().to_owned(), e["name"].as_str().unwrap_or_default().to_owned()))
        .collect();
    if names.is_empty() {
        return Ok(());
    }
    let (sha, finished) = (pipeline["sha"].as_str().unwrap_or_default(), pipeline["finished_ms"].as_u64().unwrap_or_default());
    for _ in 0..10 {
        let listed = server.send(Method::GET, &format!("/api/v1/deployments?sha={sha}"), None).await?;
        let started: Vec<&Value> = listed["deployments"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|d| d["created_ms"].as_u64() >= Some(finished.saturating_sub(5_000)) && names.contains_key(d["env"].as_str().unwrap_or_default()))
            .collect();
        if !started.is_empty() {
            for deployment in started {
                let (id, env) = (deployment["id"].as_str().unwrap_or("?"), deployment["env"].as_str().unwrap_or("?"));
                out!(
                    "deployment {id} started: revision {} of {env} ({}); follow it with: wharf deployment follow {id}",
                    deployment["revision"],
                    names.get(env).map_or("?", String::as_str)
                );
            }
            return Ok(());
        }
        tokio::time::sleep(FOLLOW_POLL).await;
    }
    Ok(())
}

fn summary(pipeline: &Value, jobs: &[Value]) -> anyhow::Result<()> {
    out!();
    out!("{:<16} {:<10} {:<10} {:>5} {:>9} {:>16} {:>9}", "JOB", "STAGE", "STATUS", "NODE", "SECONDS", "TESTS P/F/S", "COVERAGE");
    for job in jobs {
        let seconds = job["duration_ms"].as_u64().map(|ms| format!("{:.1}", ms as f64 / 1000.0)).unwrap_or_else(|| "-".into());
        let tests = &job["tests"];
        let tests = if tests.is_null() { "-".to_owned() } else { format!("{}/{}/{}", tests["passed"], tests["failed"], tests["skipped"]) };
        let coverage = job["coverage"].as_f64().map(|c| format!("{c:.2}%")).unwrap_or_else(|| "-".into());
        out!(
            "{:<16} {:<10} {:<10} {:>5} {:>9} {:>16} {:>9}",
            job["name"].as_str().unwrap_or(""),
            job["stage"].as_str().unwrap_or(""),
            job["status"].as_str().unwrap_or(""),
            job["node"].as_u64().map(|n| n.to_string()).unwrap_or_else(|| "-".into()),
            seconds,
            tests,
            coverage
        );
    }
    let status = pipeline["status"].as_str().unwrap_or("?");
    out!("pipeline {} {status}", pipeline["id"]);
    if status != "passed" {
        bail!("pipeline {} {status}", pipeline["id"]);
    }
    Ok(())
}
