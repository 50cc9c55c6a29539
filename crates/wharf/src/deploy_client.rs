//! `wharf env` and `wharf deploy`: environments and deployments through the HTTP API, with a
//! follower that prints a deployment's events and progress until it ends.

use std::time::Duration;

use anyhow::bail;
use clap::Subcommand;
use reqwest::Method;
use serde_json::{json, Value};

use wharf_proto::deploy::IdKind;

use crate::client::{print, Server};
use crate::output::cell;

/// `wharf env …`
#[derive(Subcommand)]
pub enum EnvCommand {
    /// Create an environment of a repository.
    Create {
        repo: String,
        name: String,
        /// Deploy only on an explicit call, never from a branch.
        #[arg(long)]
        protected: bool,
        /// CPUs per instance.
        #[arg(long, default_value_t = 1.0)]
        cpu: f64,
        /// Memory per instance, GiB (a data limit for the process driver; 0 for none).
        #[arg(long, default_value_t = 0.0)]
        memory: f64,
        /// Storage per instance, GiB.
        #[arg(long, default_value_t = 1.0)]
        storage: f64,
    },
    /// List environments (of one repository).
    List { repo: Option<String> },
    /// Show an environment: its revision and instances.
    Show {
        /// The environment: env-3, 3, or its name.
        env: String,
    },
    /// Delete an environment and stop its instances.
    Delete {
        /// The environment: env-3, 3, or its name.
        env: String,
    },
    /// Print the output of an environment's instances, or of one instance. A stopped
    /// instance's output stays readable (a failed release's, after its rollback): its id is in
    /// the deployment's events (`instance 5 of revision 3 is unhealthy`).
    Logs {
        /// The environment: env-3, 3, or its name.
        env: String,
        /// Only this instance (inst-5 or 5), running or stopped.
        instance: Option<String>,
    },
    /// Return to an earlier revision, and follow the rollback.
    Rollback {
        /// The environment: env-3, 3, or its name.
        env: String,
        revision: u64,
        #[arg(long)]
        no_follow: bool,
    },
}

/// `wharf deployment …`
#[derive(Subcommand)]
pub enum DeploymentCommand {
    /// Deploy a branch's tip to an environment, and follow it.
    Start {
        repo: String,
        branch: String,
        /// The environment: env-3, 3, or its name.
        #[arg(long)]
        env: String,
        #[arg(long)]
        no_follow: bool,
    },
    /// Follow a deployment: its events and progress until it ends. Exits non-zero unless it
    /// completed.
    Follow {
        /// The deployment: deploy-7 or 7.
        id: String,
    },
    /// Show a deployment.
    Show {
        /// The deployment: deploy-7 or 7.
        id: String,
    },
    /// Let a blue-green deployment waiting for promotion take the traffic.
    Promote {
        /// The deployment: deploy-7 or 7.
        id: String,
    },
    /// List deployments, newest first.
    List {
        /// Only this environment's: env-3, 3, or its name.
        #[arg(long)]
        env: Option<String>,
        /// Only those with this status (pending, in-progress, paused, completed, failed,
        /// rolled-back).
        #[arg(long)]
        status: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
}

/// The environment that `text` names: `env-3`, `3`, or a name (refused if two repositories
/// have an environment of that name; then use its id).
async fn environment_id(server: &Server, text: &str) -> anyhow::Result<u64> {
    if let Ok(id) = IdKind::Environment.parse(text) {
        return Ok(id);
    }
    let listed = server.send(Method::GET, "/api/v1/environments", None).await?;
    let named: Vec<&Value> = listed["environments"].as_array().into_iter().flatten().filter(|e| e["name"] == text).collect();
    match named[..] {
        [env] => Ok(IdKind::Environment.parse(env["id"].as_str().unwrap_or_default())?),
        [] => bail!("no environment is named {text:?} (wharf env list shows them)"),
        _ => {
            let which: Vec<String> = named.iter().map(|e| format!("{} of {}", e["id"].as_str().unwrap_or("?"), e["project"].as_str().unwrap_or("?"))).collect();
            bail!("{} environments are named {text:?}: {}; name one by its id", named.len(), which.join(", "))
        }
    }
}

/// A deployment id as the user wrote it: `deploy-7` or `7`.
fn deployment_id(text: &str) -> anyhow::Result<u64> {
    Ok(IdKind::Deployment.parse(text)?)
}

/// The number in an id the API returned (`deploy-7`), or 0.
fn number(value: &Value, kind: IdKind) -> u64 {
    value.as_str().and_then(|text| kind.parse(text).ok()).or_else(|| value.as_u64()).unwrap_or_default()
}

pub async fn env(server: Server, command: EnvCommand) -> anyhow::Result<()> {
    match command {
        EnvCommand::Create { repo, name, protected, cpu, memory, storage } => {
            let body = json!({"project_id": repo, "env_name": name, "protected": protected,
                              "config": {"cpu": cpu, "memory": memory, "storage": storage}});
            print(&server.send(Method::POST, "/api/v1/environments", Some(body)).await?);
        }
        EnvCommand::List { repo } => {
            let path = match repo {
                Some(repo) => format!("/api/v1/environments?project_id={repo}"),
                None => "/api/v1/environments".into(),
            };
            let header = ["ID", "PROJECT", "NAME", "REVISION", "INSTANCES", "PROTECTED"];
            server
                .list(&path, "environments", &header, &[0, 3, 4], |env| {
                    vec![
                        cell(&env["id"]),
                        cell(&env["project"]),
                        cell(&env["name"]),
                        cell(&env["current_revision"]),
                        env["instances"].as_array().map_or(0, Vec::len).to_string(),
                        if env["protected"] == true { "yes" } else { "no" }.to_owned(),
                    ]
                })
                .await?;
        }
        EnvCommand::Show { env } => {
            let id = environment_id(&server, &env).await?;
            print(&server.send(Method::GET, &format!("/api/v1/environments/{id}"), None).await?)
        }
        EnvCommand::Delete { env } => {
            let id = environment_id(&server, &env).await?;
            print(&server.send(Method::DELETE, "/api/v1/environments", Some(json!({"env_id": id}))).await?)
        }
        EnvCommand::Logs { env, instance } => {
            let id = environment_id(&server, &env).await?;
            let instances = match instance {
                Some(instance) => vec![IdKind::Instance.parse(&instance)?],
                None => {
                    let environment = server.send(Method::GET, &format!("/api/v1/environments/{id}"), None).await?;
                    environment["instances"].as_array().into_iter().flatten().map(|i| number(&i["id"], IdKind::Instance)).collect()
                }
            };
            let headed = instances.len() > 1;
            for instance in instances {
                let log = server.send(Method::GET, &format!("/api/v1/environments/{id}/instances/{instance}/log"), None).await?;
                if headed {
                    out!("==> {} <==", IdKind::Instance.format(instance));
                }
                out_raw!("{}", log.as_str().unwrap_or(""));
            }
        }
        EnvCommand::Rollback { env, revision, no_follow } => {
            let id = environment_id(&server, &env).await?;
            let started = server.send(Method::POST, &format!("/api/v1/environments/{id}/rollback"), Some(json!({"revision": revision}))).await?;
            let deployment = number(&started["deployment_id"], IdKind::Deployment);
            if server.json && no_follow {
                print(&started);
                return Ok(());
            }
            out!(
                "{}: rolling back {} to revision {revision}",
                IdKind::Deployment.format(deployment),
                IdKind::Environment.format(id)
            );
            if !no_follow {
                follow(&server, deployment).await?;
            }
        }
    }
    Ok(())
}

pub async fn deployment(server: Server, command: DeploymentCommand) -> anyhow::Result<()> {
    match command {
        DeploymentCommand::Start { repo, branch, env, no_follow } => {
            let env_id = environment_id(&server, &env).await?;
            let body = json!({"repo_url": repo, "branch_name": branch, "env_id": env_id});
            let started = server.send(Method::POST, "/api/v1/deployments", Some(body)).await?;
            let id = number(&started["deployment_id"], IdKind::Deployment);
            if server.json && no_follow {
                print(&started);
                return Ok(());
            }
            out!("{}: {branch} of {repo} to {}", IdKind::Deployment.format(id), IdKind::Environment.format(env_id));
            if !no_follow {
                follow(&server, id).await?;
            }
            Ok(())
        }
        DeploymentCommand::Follow { id } => follow(&server, deployment_id(&id)?).await,
        DeploymentCommand::Show { id } => {
            let id = deployment_id(&id)?;
            print(&server.send(Method::GET, &format!("/api/v1/deployments/{id}"), None).await?);
            Ok(())
        }
        DeploymentCommand::Promote { id } => {
            let id = deployment_id(&id)?;
            print(&server.send(Method::POST, &format!("/api/v1/deployments/{id}/promote"), None).await?);
            Ok(())
        }
        DeploymentCommand::List { env, status, limit } => {
            let mut path = format!("/api/v1/deployments?limit={limit}");
            if let Some(env) = env {
                path.push_str(&format!("&environment={}", environment_id(&server, &env).await?));
            }
            if let Some(status) = status {
                path.push_str(&format!("&status={status}"));
            }
            let header = ["ID", "ENV", "REVISION", "STATUS", "BRANCH", "COMMIT", "DETAILS"];
            server
                .list(&path, "deployments", &header, &[2], |deployment| {
                    vec![
                        cell(&deployment["id"]),
                        cell(&deployment["env"]),
                        cell(&deployment["revision"]),
                        cell(&deployment["status"]),
                        cell(&deployment["branch"]),
                        deployment["sha"].as_str().unwrap_or("").chars().take(8).collect::<String>(),
                        cell(&deployment["details"]),
                    ]
                })
                .await
        }
    }
}

/// Prints each event of the deployment and its progress, live from the API's event stream,
/// until it ends: a progress bar on a terminal, a line per change otherwise. Exits non-zero
/// unless it completed.
async fn follow(server: &Server, id: u64) -> anyhow::Result<()> {
    use backon::Retryable;
    use futures::StreamExt;
    let path = format!("/api/v1/deployments/{id}");
    // A deployment a passed pipeline asks for appears a moment after the pipeline ends: a 404
    // is asked again for up to 10 s.
    let appears = backon::ConstantBuilder::new().with_delay(Duration::from_millis(250)).with_max_times(40);
    let deployment: Value = (|| server.send(Method::GET, &path, None))
        .retry(appears)
        .when(|error| error.to_string().starts_with("404"))
        .await?;
    let revision = deployment["revision"].clone();
    let bar = crate::output::progress_bar(100, "{spinner} revision {prefix} [{bar:30}] {pos}% {msg}");
    bar.set_prefix(revision.to_string());
    let mut last_line = String::new();
    let mut events = std::pin::pin!(server.events(&format!("{path}/events")).await?);
    while let Some(event) = events.next().await {
        let event = event?;
        let data: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
        match event.event.as_str() {
            "event" => {
                let message = data["message"].as_str().unwrap_or("").to_owned();
                bar.suspend(|| out!("  {message}"));
            }
            kind @ ("status" | "end") => {
                let status = data["status"].as_str().unwrap_or("?");
                let phase = data["progress"]["phase"].as_str().unwrap_or("");
                let percent = data["progress"]["percent"].as_u64().unwrap_or(0);
                let details = data["details"].as_str().unwrap_or("");
                bar.set_position(percent);
                bar.set_message(format!("[{status}] {phase}: {details}"));
                // The percentage goes to the bar, and into a line only at the end of a
                // completed deployment: the percentage (healthy instances serving the target
                // revision) and the details (the controller's count of updated instances) are
                // taken at different moments, so mid-rollout they can read as a contradiction
                // ("100%: 1 of 2 instances updated"), and a failed or rolled-back deployment's
                // percentage would read as success ("100%: 0 of 1 instances updated").
                let line = match status {
                    "completed" => format!("[{status}] revision {revision}: {phase} {percent}%: {details}"),
                    _ => format!("[{status}] revision {revision}: {phase}: {details}"),
                };
                if kind == "end" {
                    bar.finish_and_clear();
                    out!("{line}");
                    return match status {
                        "completed" => Ok(()),
                        _ => bail!("{} {status}", IdKind::Deployment.format(id)),
                    };
                }
                if bar.is_hidden() && line != last_line {
                    out!("{line}");
                    last_line = line;
                }
            }
            _ => {}
        }
    }
    bail!("the deployment's event stream ended before the deployment did")
}
