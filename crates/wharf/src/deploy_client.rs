//! `wharf env` and `wharf deploy`: environments and deployments through the HTTP API, with a
//! follower that prints a deployment's events and progress until it ends.

use std::time::Duration;

use anyhow::bail;
use clap::Subcommand;
use reqwest::Method;
use serde_json::{json, Value};

use crate::client::{print, Server};

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
    Show { id: u64 },
    /// Delete an environment and stop its instances.
    Delete { id: u64 },
    /// Print the output of an environment's instances, or of one instance. A stopped
    /// instance's output stays readable (a failed release's, after its rollback): its id is in
    /// the deployment's events (`instance 5 of revision 3 is unhealthy`).
    Logs {
        id: u64,
        /// Only this instance, running or stopped.
        instance: Option<u64>,
    },
    /// Return to an earlier revision, and follow the rollback.
    Rollback {
        id: u64,
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
        /// The environment's id.
        #[arg(long)]
        env: u64,
        #[arg(long)]
        no_follow: bool,
    },
    /// Follow a deployment: its events and progress until it ends. Exits non-zero unless it
    /// completed.
    Follow { id: u64 },
    /// Show a deployment.
    Show { id: u64 },
    /// Let a blue-green deployment waiting for promotion take the traffic.
    Promote { id: u64 },
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
            let listed = server.send(Method::GET, &path, None).await?;
            out!("{:>5}  {:<24} {:<14} {:>8} {:>9} {:>9}", "ID", "PROJECT", "NAME", "REVISION", "INSTANCES", "PROTECTED");
            for env in listed["environments"].as_array().into_iter().flatten() {
                out!(
                    "{:>5}  {:<24} {:<14} {:>8} {:>9} {:>9}",
                    env["id"].as_u64().unwrap_or_default(),
                    env["project"].as_str().unwrap_or(""),
                    env["name"].as_str().unwrap_or(""),
                    env["current_revision"].as_u64().map(|r| r.to_string()).unwrap_or_else(|| "-".into()),
                    env["instances"].as_array().map_or(0, Vec::len),
                    if env["protected"] == true { "yes" } else { "no" },
                );
            }
        }
        EnvCommand::Show { id } => print(&server.send(Method::GET, &format!("/api/v1/environments/{id}"), None).await?),
        EnvCommand::Delete { id } => print(&server.send(Method::DELETE, "/api/v1/environments", Some(json!({"env_id": id}))).await?),
        EnvCommand::Logs { id, instance } => {
            let instances = match instance {
                Some(instance) => vec![instance],
                None => {
                    let environment = server.send(Method::GET, &format!("/api/v1/environments/{id}"), None).await?;
                    environment["instances"].as_array().into_iter().flatten().filter_map(|i| i["id"].as_u64()).collect()
                }
            };
            let headed = instances.len() > 1;
            for instance in instances {
                let log = server.send(Method::GET, &format!("/api/v1/environments/{id}/instances/{instance}/log"), None).await?;
                if headed {
                    out!("==> instance {instance} <==");
                }
                out_raw!("{}", log.as_str().unwrap_or(""));
            }
        }
        EnvCommand::Rollback { id, revision, no_follow } => {
            let started = server.send(Method::POST, &format!("/api/v1/environments/{id}/rollback"), Some(json!({"revision": revision}))).await?;
            let deployment = started["deployment_id"].as_u64().unwrap_or_default();
            out!("deployment {deployment}: rolling back environment {id} to revision {revision}");
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
            let body = json!({"repo_url": repo, "branch_name": branch, "env_id": env});
            let started = server.send(Method::POST, "/api/v1/deployments", Some(body)).await?;
            let id = started["deployment_id"].as_u64().unwrap_or_default();
            out!("deployment {id}: {branch} of {repo} to environment {env}");
            if !no_follow {
                follow(&server, id).await?;
            }
            Ok(())
        }
        DeploymentCommand::Follow { id } => follow(&server, id).await,
        DeploymentCommand::Show { id } => {
            print(&server.send(Method::GET, &format!("/api/v1/deployments/{id}"), None).await?);
            Ok(())
        }
        DeploymentCommand::Promote { id } => {
            print(&server.send(Method::POST, &format!("/api/v1/deployments/{id}/promote"), None).await?);
            Ok(())
        }
    }
}

/// Prints each new event and each change of status or progress until the deployment ends.
async fn follow(server: &Server, id: u64) -> anyhow::Result<()> {
    use backon::Retryable;
    let mut shown_events = 0;
    let mut last_line = String::new();
    let path = format!("/api/v1/deployments/{id}");
    // A deployment a passed pipeline asks for appears a moment after the pipeline ends: a 404
    // is asked again for up to 10 s.
    let appears = backon::ConstantBuilder::new().with_delay(Duration::from_millis(250)).with_max_times(40);
    let mut deployment: Value = (|| server.send(Method::GET, &path, None))
        .retry(appears)
        .when(|error| error.to_string().starts_with("404"))
        .await?;
    // A poll that prints each change until the deployment ends, not a retry: kept as a loop.
    loop {
        let events = deployment["events"].as_array().cloned().unwrap_or_default();
        for event in events.iter().skip(shown_events) {
            out!("  {}", event["message"].as_str().unwrap_or(""));
        }
        shown_events = events.len();
        let status = deployment["status"].as_str().unwrap_or("?").to_owned();
        let line = format!(
            "[{status}] revision {}: {} {}%: {}",
            deployment["revision"],
            deployment["progress"]["phase"].as_str().unwrap_or(""),
            deployment["progress"]["percent"],
            deployment["details"].as_str().unwrap_or("")
        );
        if line != last_line {
            out!("{line}");
            last_line = line;
        }
        match status.as_str() {
            "completed" => return Ok(()),
            "failed" | "rolled-back" => bail!("deployment {id} {status}"),
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
        deployment = server.send(Method::GET, &path, None).await?;
    }
}
