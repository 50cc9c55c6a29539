//! Jobs that name an `image:` run in a container of that image on the node's Docker engine,
//! as GitLab and Woodpecker users expect: the same [`Confinement`] as the bubblewrap sandbox
//! (its directories mounted at their own paths, read-only where they are only readable), the
//! same limits (`--pids-limit`, `--memory`), as the sandbox user, with every capability
//! dropped and `no-new-privileges`. A job with network gets Docker's default bridge (the
//! internet, not the node's loopback); `network: false` gets none.
//!
//! The job's variables reach the container by name only (`--env NAME`, the value taken from
//! the `docker` client's environment), so no secret appears in a process list. The container
//! is named after the job's attempt, and [`remove`] ends it: stopping the `docker run` client
//! does not stop the container.

use super::Confinement;

/// The name of the container of attempt `attempt` of job `job`.
pub fn name(job: u64, attempt: u32) -> String {
    format!("wharf-job-{job}-{attempt}")
}

/// Whether a Docker engine answers on this node.
pub async fn engine_answers() -> bool {
    let version = tokio::process::Command::new("docker").args(["version", "--format", "{{.Server.Version}}"]).output().await;
    version.is_ok_and(|output| output.status.success())
}

/// `docker run` of `image` as `user`, running `script` with `sh -c` under `confinement`, with
/// the variables named `variables` (the caller puts their values in the command's
/// environment).
pub fn command<'a>(
    container: &str,
    image: &str,
    confinement: &Confinement,
    user: (u32, u32),
    variables: impl Iterator<Item = &'a String>,
    script: &str,
) -> tokio::process::Command {
    let mut docker = tokio::process::Command::new("docker");
    docker.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    if let Ok(host) = std::env::var("DOCKER_HOST") {
        docker.env("DOCKER_HOST", host);
    }
    docker.args(["run", "--rm", "--init", "--name", container]);
    docker.args(["--cap-drop", "ALL", "--security-opt", "no-new-privileges"]);
    docker.arg("--user").arg(format!("{}:{}", user.0, user.1));
    docker.args(["--network", if confinement.network { "bridge" } else { "none" }]);
    if let Some(processes) = confinement.limits.processes {
        docker.arg("--pids-limit").arg(processes.to_string());
    }
    if let Some(bytes) = confinement.limits.data_bytes {
        docker.arg("--memory").arg(bytes.to_string());
    }
    for path in &confinement.readable {
        docker.arg("--volume").arg(format!("{0}:{0}:ro", path.display()));
    }
    for path in &confinement.writable {
        docker.arg("--volume").arg(format!("{0}:{0}", path.display()));
    }
    docker.arg("--workdir").arg(&confinement.workdir);
    for name in variables {
        docker.arg("--env").arg(name);
    }
    // `--` ends docker's options: the image name was checked not to be one, and this makes sure.
    docker.args(["--entrypoint", "sh", "--", image, "-c", script]);
    docker
}

/// Removes container `name`, running or not (the job ended, timed out or was stopped).
pub async fn remove(name: &str) {
    let _ = tokio::process::Command::new("docker")
        .args(["rm", "--force", name])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_container_gets_the_confinement_and_no_secret_on_its_command_line() {
        let confinement = Confinement {
            workdir: "/data/ci/work/job-1".into(),
            writable: vec!["/data/ci/work/job-1".into()],
            readable: vec!["/data/ci/mirrors/r.git".into()],
            network: false,
            limits: super::super::Limits {
                data_bytes: None,
                processes: Some(64),
            },
        };
        let names = ["API_TOKEN".to_owned()];
        let command = command("wharf-job-1-1", "debian:12", &confinement, (65534, 65534), names.iter(), "make");
        let args: Vec<String> = command.as_std().get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        let args = args.join(" ");
        assert!(args.contains("--user 65534:65534 --network none --pids-limit 64"), "{args}");
        assert!(args.contains("--volume /data/ci/mirrors/r.git:/data/ci/mirrors/r.git:ro"), "{args}");
        assert!(args.contains("--volume /data/ci/work/job-1:/data/ci/work/job-1 --workdir /data/ci/work/job-1"), "{args}");
        assert!(args.contains("--env API_TOKEN --entrypoint sh -- debian:12 -c make"), "values stay out of argv: {args}");
    }
}
