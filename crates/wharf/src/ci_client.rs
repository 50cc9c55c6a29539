//! `wharf pipeline`, `wharf job` and `wharf variable`: CI through the HTTP API, with a
//! follower that prints jobs' logs live and a summary at the end.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::bail;
use clap::Subcommand;
use reqwest::Method;
use serde_json::{json, Value};

use crate::client::{print, Server};
use crate::output::{cell, print_table, table};

/// How often the follower looks for new log output and status changes.
const FOLLOW_POLL: Duration = Duration::from_millis(500);

/// `wharf pipeline …`
#[derive(Subcommand)]
pub enum PipelineCommand {
    /// List a repository's pipelines, newest first.
    List {
        /// The repository, as owner/name.
        repo: String,
    },
    /// Show a pipeline and its jobs.
    Show {
        /// The pipeline's id.
        id: u64,
    },
    /// Run the pipeline of a branch's tip and follow it.
    Run {
        /// The repository, as owner/name.
        repo: String,
        /// The branch whose tip runs.
        branch: String,
        /// Return at once instead of following it.
        #[arg(long)]
        no_follow: bool,
    },
    /// Follow a pipeline: job status changes and live logs, then a summary. Exits non-zero
    /// unless it passed.
    Follow {
        /// The pipeline's id.
        id: u64,
    },
    /// Cancel every unfinished job of a pipeline.
    Cancel {
        /// The pipeline's id.
        id: u64,
    },
}

/// `wharf job …`
#[derive(Subcommand)]
pub enum JobCommand {
    /// Print a job's log (`--follow`: live, until the job ends).
    Log {
        /// The job's id.
        id: u64,
        /// Keep printing the log as the job writes it (over the API's event stream).
        #[arg(long)]
        follow: bool,
    },
    /// Run a finished job again.
    Retry {
        /// The job's id.
        id: u64,
    },
    /// List a job's artifacts.
    Artifacts {
        /// The job's id.
        id: u64,
    },
}

/// `wharf variable …`
#[derive(Subcommand)]
pub enum VariableCommand {
    /// Set a repository's CI variable.
    Set {
        /// The repository, as owner/name.
        repo: String,
        /// The variable's name.
        name: String,
        /// Its value.
        value: String,
        /// Mask it in logs and never show it again.
        #[arg(long)]
        secret: bool,
    },
    /// List a repository's CI variables (secret values hidden).
    List {
        /// The repository, as owner/name.
        repo: String,
    },
    /// Remove a repository's CI variable.
    Delete {
        /// The repository, as owner/name.
        repo: String,
        /// The variable's name.
        name: String,
    },
}

pub async fn pipeline(server: Server, command: PipelineCommand) -> anyhow::Result<()> {
    match command {
        PipelineCommand::List { repo } => {
            let path = format!("/api/v1/repos/{repo}/pipelines");
            server
                .list(&path, "pipelines", &["ID", "STATUS", "SHA", "REF"], &[0], |pipeline| {
                    let sha = pipeline["sha"].as_str().unwrap_or("");
                    vec![cell(&pipeline["id"]), cell(&pipeline["status"]), sha[..sha.len().min(12)].to_owned(), cell(&pipeline["ref"])]
                })
                .await
        }
        PipelineCommand::Show { id } => {
            print(&server.send(Method::GET, &format!("/api/v1/pipelines/{id}"), None).await?);
            Ok(())
        }
        PipelineCommand::Run { repo, branch, no_follow } => {
            let body = json!({ "branch": branch });
            let pipeline = server.send(Method::POST, &format!("/api/v1/repos/{repo}/pipelines"), Some(body)).await?;
            let id = pipeline["id"].as_u64().unwrap_or_default();
            if server.json && no_follow {
                print(&pipeline);
                return Ok(());
            }
            out!("pipeline {id} started for {branch} of {repo}");
            if no_follow {
                return Ok(());
            }
            follow(&server, id).await
        }
        PipelineCommand::Follow { id } => follow(&server, id).await,
        PipelineCommand::Cancel { id } => {
            let pipeline = server.send(Method::POST, &format!("/api/v1/pipelines/{id}/cancel"), None).await?;
            server.show(&pipeline, |pipeline| out!("pipeline {id} is {}", pipeline["status"].as_str().unwrap_or("?")));
            Ok(())
        }
    }
}

pub async fn job(server: Server, command: JobCommand) -> anyhow::Result<()> {
    match command {
        JobCommand::Log { id, follow: false } => {
            let (text, _, _) = server.log_from(id, 0).await?;
            out_raw!("{text}");
            Ok(())
        }
        JobCommand::Log { id, follow: true } => follow_log(&server, id).await,
        JobCommand::Retry { id } => {
            let job = server.send(Method::POST, &format!("/api/v1/jobs/{id}/retry"), None).await?;
            server.show(&job, |_| out!("job {id} queued again"));
            Ok(())
        }
        JobCommand::Artifacts { id } => {
            let path = format!("/api/v1/jobs/{id}/artifacts");
            server
                .list(&path, "artifacts", &["PATH", "BYTES"], &[1], |artifact| vec![cell(&artifact["path"]), cell(&artifact["size"])])
                .await
        }
    }
}

pub async fn variable(server: Server, command: VariableCommand) -> anyhow::Result<()> {
    let value = match command {
        VariableCommand::Set { repo, name, value, secret } => {
            let body = json!({ "name": name, "value": value, "secret": secret });
            server.send(Method::POST, &format!("/api/v1/repos/{repo}/variables"), Some(body)).await?
        }
        VariableCommand::List { repo } => {
            let path = format!("/api/v1/repos/{repo}/variables");
            return server
                .list(&path, "variables", &["NAME", "VALUE", "SECRET"], &[], |variable| {
                    let secret = variable["secret"] == true;
                    let value = if secret { "(hidden)".to_owned() } else { cell(&variable["value"]) };
                    vec![cell(&variable["name"]), value, if secret { "yes" } else { "no" }.to_owned()]
                })
                .await;
        }
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
    /// The attempt whose log is being streamed, once the job has started.
    streaming: Option<u64>,
    /// Its log has been shown to the end (or it never started and has finished).
    complete: bool,
}

/// What a job's log stream sends the follower.
enum FromLog {
    Line { name: String, line: String },
    Ended { job: u64, attempt: u64 },
}

/// Prints each job's status changes and its log lines (prefixed with the job's name) until
/// the pipeline has finished and every log is complete; then a summary. The pipeline's status
/// is polled (the API has no event stream for it); each started job's log comes live over its
/// event stream.
async fn follow(server: &Server, id: u64) -> anyhow::Result<()> {
    let mut shown: BTreeMap<u64, Shown> = BTreeMap::new();
    let (lines, mut received) = tokio::sync::mpsc::unbounded_channel();
    let mut streams = tokio::task::JoinSet::new();
    // On a terminal, a bar of finished jobs under the log lines.
    let bar = crate::output::progress_bar(0, "{spinner} pipeline {prefix} [{bar:30}] {pos}/{len} jobs finished ({elapsed})");
    bar.set_prefix(id.to_string());
    // A poll of the pipeline's status until it ends, not a retry: kept as a loop.
    loop {
        let pipeline = server.send(Method::GET, &format!("/api/v1/pipelines/{id}"), None).await?;
        if let Some(error) = pipeline["error"].as_str() {
            bail!("pipeline {id} failed at once: {error}");
        }
        let jobs = pipeline["jobs"].as_array().cloned().unwrap_or_default();
        for job in &jobs {
            let job_id = job["id"].as_u64().unwrap_or_default();
            let shown = shown.entry(job_id).or_default();
            let name = job["name"].as_str().unwrap_or("?").to_owned();
            let status = job["status"].as_str().unwrap_or("?").to_owned();
            if status != shown.status {
                let node = job["node"].as_u64().map(|n| format!(" on node {n}")).unwrap_or_default();
                bar.suspend(|| out!("==> {name}: {status}{node}"));
                shown.status = status;
            }
            if job["node"].is_null() {
                // Never started (skipped, canceled while queued, or still waiting): no log.
                shown.complete = shown.streaming.is_none() && job["finished_ms"].is_u64();
                continue;
            }
            let attempt = job["attempt"].as_u64().unwrap_or(0);
            if shown.streaming != Some(attempt) {
                (shown.streaming, shown.complete) = (Some(attempt), false);
                streams.spawn(stream_log(server.clone(), job_id, name, attempt, lines.clone()));
            }
        }
        bar.set_length(jobs.len() as u64);
        bar.set_position(jobs.iter().filter(|job| job["finished_ms"].is_u64()).count() as u64);
        // What the streams send until the next look at the pipeline.
        let next_look = tokio::time::sleep(FOLLOW_POLL);
        tokio::pin!(next_look);
        loop {
            tokio::select! {
                Some(message) = received.recv() => match message {
                    FromLog::Line { name, line } => bar.suspend(|| out!("{name:>12} | {line}")),
                    FromLog::Ended { job, attempt } => {
                        if let Some(shown) = shown.get_mut(&job).filter(|s| s.streaming == Some(attempt)) {
                            shown.complete = true;
                        }
                    }
                },
                () = &mut next_look => break,
            }
        }
        let finished = !matches!(pipeline["status"].as_str(), Some("queued" | "running"));
        if finished && shown.values().all(|s| s.complete) {
            bar.finish_and_clear();
            summary(&pipeline, &jobs)?;
            return started_deployments(server, &pipeline).await;
        }
    }
}

/// Sends the lines of one attempt of a job's log, from its event stream, until the attempt
/// ends (`end`) or the next one starts (`restart`: the follower starts a stream for it).
async fn stream_log(server: Server, job: u64, name: String, attempt: u64, lines: tokio::sync::mpsc::UnboundedSender<FromLog>) {
    use futures::StreamExt;
    let ended = FromLog::Ended { job, attempt };
    let mut events = match server.events(&format!("/api/v1/jobs/{job}/log")).await {
        Ok(events) => Box::pin(events),
        Err(error) => {
            eprintln!("wharf: cannot follow the log of job {job}: {error:#}");
            let _ = lines.send(ended);
            return;
        }
    };
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                eprintln!("wharf: the log of job {job} broke off: {error:#}");
                break;
            }
        };
        let data: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
        match event.event.as_str() {
            "log" => {
                for line in data["text"].as_str().unwrap_or("").lines() {
                    let _ = lines.send(FromLog::Line { name: name.clone(), line: line.to_owned() });
                }
            }
            "restart" => return,
            "end" => break,
            _ => {}
        }
    }
    let _ = lines.send(ended);
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
    let mut summary = table(&["JOB", "STAGE", "STATUS", "NODE", "DURATION", "TESTS P/F/S", "COVERAGE"]);
    for job in jobs {
        let duration = job["duration_ms"]
            .as_u64()
            .map(|ms| humantime::format_duration(Duration::from_millis(ms)).to_string())
            .unwrap_or_else(|| "-".into());
        let tests = &job["tests"];
        let tests = if tests.is_null() { "-".to_owned() } else { format!("{}/{}/{}", tests["passed"], tests["failed"], tests["skipped"]) };
        let coverage = job["coverage"].as_f64().map(|c| format!("{c:.2}%")).unwrap_or_else(|| "-".into());
        summary.add_row(vec![cell(&job["name"]), cell(&job["stage"]), cell(&job["status"]), cell(&job["node"]), duration, tests, coverage]);
    }
    crate::output::right_align(&mut summary, &[3, 4, 5, 6]);
    print_table(summary);
    let status = pipeline["status"].as_str().unwrap_or("?");
    out!("pipeline {} {status}", pipeline["id"]);
    if status != "passed" {
        bail!("pipeline {} {status}", pipeline["id"]);
    }
    Ok(())
}

/// Prints a job's log live from the API's event stream until the job ends; a new attempt
/// (a retry, or a runner lost and the job run elsewhere) starts the log again.
async fn follow_log(server: &Server, id: u64) -> anyhow::Result<()> {
    use futures::StreamExt;
    let mut events = std::pin::pin!(server.events(&format!("/api/v1/jobs/{id}/log")).await?);
    while let Some(event) = events.next().await {
        let event = event?;
        let data: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
        match event.event.as_str() {
            "log" => out_raw!("{}", data["text"].as_str().unwrap_or("")),
            "restart" => out!("--- job {id}: attempt {} starts again ---", data["attempt"]),
            "end" => {
                eprintln!("wharf: job {id} {}", data["status"].as_str().unwrap_or("is gone"));
                return Ok(());
            }
            _ => {}
        }
    }
    bail!("the log's event stream ended before the job did")
}
