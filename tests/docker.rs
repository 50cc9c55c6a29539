//! Wharf in Docker containers: one container per process on a private network, and a node cut
//! off that network (not killed), and the Docker driver of deployments. Every test here needs a
//! Docker engine, so each is `#[ignore]`d: `.ci/run` runs them with `--run-ignored only` when
//! `docker info` answers, and says it skipped them when it does not.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use wharf_tests::cluster::{free_port, names_placed_on, random_cookie};
use wharf_tests::{files_under, git_ok, id_number, wait_until, wharf_binary, Wharf};

fn docker(args: &[&str]) -> Output {
    Command::new("docker").args(args).output().expect("run docker")
}

/// Builds the image `tag` with `scripts/docker-image.sh` from the wharf binary the tests use.
fn build_image(tag: &str) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/docker-image.sh");
    let built = Command::new("bash").arg(script).arg(wharf_binary()).arg(tag).output().expect("build the image");
    assert!(built.status.success(), "image build failed: {}", String::from_utf8_lossy(&built.stderr));
}

fn docker_ok(args: &[&str]) -> String {
    let output = docker(args);
    assert!(output.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Containers and the network of one test, removed when dropped.
struct DockerCluster {
    prefix: String,
    subnet: u8,
    containers: Vec<String>,
    image: String,
    /// `WHARF_COOKIE=…`, a random cookie of this test's cluster.
    cookie_env: String,
}

impl DockerCluster {
    fn ip(&self, host: u8) -> String {
        format!("172.31.{}.{host}", self.subnet)
    }

    fn network(&self) -> String {
        format!("{}-net", self.prefix)
    }

    /// Starts a container running `wharf ARGS` at address `.host`; returns its name.
    fn run(&mut self, name: &str, host: u8, publish: Option<u16>, args: &[String]) -> String {
        let container = format!("{}-{name}", self.prefix);
        let ip = self.ip(host);
        let network = self.network();
        let mut command = vec![
            "run", "-d", "--name", &container, "--network", &network, "--ip", &ip, "-e", &self.cookie_env,
            "-e", "WHARF_LOG=warn",
        ];
        let port_mapping;
        if let Some(port) = publish {
            port_mapping = format!("127.0.0.1:{port}:8080");
            command.extend(["-p", &port_mapping]);
        }
        command.push(&self.image);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        command.extend(args);
        docker_ok(&command);
        self.containers.push(container.clone());
        container
    }

    /// Waits until a container's output has a line starting with `prefix`; the rest of it.
    fn wait_for_line(&self, container: &str, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            let logs = docker(&["logs", container]);
            let text = String::from_utf8_lossy(&logs.stdout).into_owned() + &String::from_utf8_lossy(&logs.stderr);
            if let Some(line) = text.lines().find_map(|line| line.strip_prefix(prefix)) {
                return line.trim().to_owned();
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("{container} did not print {prefix:?}: {}", String::from_utf8_lossy(&docker(&["logs", container]).stderr));
    }
}

impl Drop for DockerCluster {
    fn drop(&mut self) {
        for container in &self.containers {
            let _ = docker(&["rm", "-f", container]);
        }
        let _ = docker(&["network", "rm", &self.network()]);
        let _ = docker(&["image", "rm", &self.image]);
    }
}

fn node_args(id: u8, ip: &str, join: Option<&str>) -> Vec<String> {
    let mut args: Vec<String> = ["node", "--id", &id.to_string(), "--data-dir", "/data/node", "--listen", &format!("{ip}:7101")]
        .map(String::from)
        .to_vec();
    if let Some(join) = join {
        args.extend(["--join".to_owned(), format!("{join}:7101")]);
    }
    args
}

#[test]
#[ignore = "needs a Docker engine: .ci/run runs it with --run-ignored when one answers"]
fn a_node_cut_off_its_network_takes_only_its_own_repositories_offline() {
    let pid = std::process::id();
    let mut cluster = DockerCluster {
        prefix: format!("wharf-test-{pid}"),
        subnet: (pid % 200 + 20) as u8,
        containers: Vec::new(),
        image: format!("wharf:test-{pid}"),
        cookie_env: format!("WHARF_COOKIE={}", random_cookie()),
    };
    build_image(&cluster.image);
    docker_ok(&["network", "create", "--subnet", &format!("172.31.{}.0/24", cluster.subnet), &cluster.network()]);

    let first_ip = cluster.ip(11);
    let one = cluster.run("node1", 11, None, &node_args(1, &first_ip, None));
    let token = cluster.wait_for_line(&one, "wharf: new cluster; admin token ");
    let token = token.split_whitespace().next().unwrap().to_owned();
    let mut nodes = vec![one];
    for id in 2..=3u8 {
        let ip = cluster.ip(10 + id);
        let name = cluster.run(&format!("node{id}"), 10 + id, None, &node_args(id, &ip, Some(&first_ip)));
        cluster.wait_for_line(&name, &format!("wharf: node {id} ready"));
        nodes.push(name);
    }
    let port = free_port();
    let front_ip = cluster.ip(20);
    let front_args: Vec<String> = [
        "front", "--id", "100", "--data-dir", "/data/front", "--listen", &format!("{front_ip}:7200"), "--http", "0.0.0.0:8080",
        "--join", &format!("{first_ip}:7101"),
    ]
    .map(String::from)
    .to_vec();
    let front_container = cluster.run("front", 20, Some(port), &front_args);
    cluster.wait_for_line(&front_container, "wharf: serving on");
    let front = Wharf::attach(format!("http://127.0.0.1:{port}"), token, std::path::Path::new("/tmp"));

    // One repository on each node, pushed and cloned back through the front.
    let mut repos = Vec::new();
    for node in 1..=3 {
        let name = names_placed_on(node, 3, 1).remove(0);
        assert_eq!(front.create_repo(&name)["node"], node);
        let work = tempfile::tempdir().unwrap();
        std::fs::write(work.path().join("README.md"), format!("{name}\n")).unwrap();
        git_ok(work.path(), &["init", "-q"]);
        git_ok(work.path(), &["add", "."]);
        git_ok(work.path(), &["commit", "-qm", "first"]);
        git_ok(work.path(), &["push", "-q", &front.push_url(&name), "main"]);
        let clone = tempfile::tempdir().unwrap();
        git_ok(clone.path(), &["clone", "-q", &front.clone_url(&name), "copy"]);
        assert_eq!(files_under(&clone.path().join("copy")), files_under(work.path()));
        repos.push(name);
    }

    // Node 3 is cut off the network, not killed: its repository becomes unavailable (503
    // with Retry-After), the others and the metadata keep working.
    docker_ok(&["network", "disconnect", &cluster.network(), &nodes[2]]);
    wait_until("node 3's repository is reported unavailable", Duration::from_secs(120), || {
        front.get(&format!("/api/v1/repos/{}/branches", repos[2])).status == 503
    });
    for repo in &repos[..2] {
        assert_eq!(front.get(&format!("/api/v1/repos/{repo}/branches")).status, 200, "{repo}");
    }
    let newcomer = names_placed_on(1, 3, 2).remove(1);
    assert_eq!(front.create_repo(&newcomer)["node"], 1);

    // Reconnected, it serves again with its data.
    docker_ok(&["network", "connect", "--ip", &cluster.ip(13), &cluster.network(), &nodes[2]]);
    wait_until("node 3's repository is served again", Duration::from_secs(180), || {
        front.get(&format!("/api/v1/repos/{}/branches", repos[2])).status == 200
    });
}

/// Removes the containers of deployed instances when a test ends, however it ends.
struct InstanceContainers;

impl Drop for InstanceContainers {
    fn drop(&mut self) {
        let listed = docker(&["ps", "--all", "--quiet", "--filter", "name=wharf-instance-"]);
        for id in String::from_utf8_lossy(&listed.stdout).split_whitespace() {
            let _ = docker(&["rm", "--force", id]);
        }
    }
}

const CONTAINER_APP: &str = r#"stages: [build]
jobs:
  build:
    stage: build
    script: [mkdir -p out, cp version-server VERSION out/]
    artifacts: { paths: [out/] }
deploy:
  from: build
  command: cd out && exec ./version-server
  health: { path: /healthz, interval: 200ms, healthy_threshold: 2 }
  environments:
    staging:
      branch: main
      instances: 2
      driver: docker
      image: IMAGE
"#;

#[test]
#[ignore = "needs a Docker engine: .ci/run runs it with --run-ignored when one answers"]
fn a_docker_environment_runs_its_instances_as_containers_with_its_limits() {
    let _cleanup = InstanceContainers;
    let image = format!("wharf:app-test-{}", std::process::id());
    build_image(&image);

    let data = tempfile::tempdir().unwrap();
    let wharf = Wharf::start(data.path());
    wharf.create_repo("acme/boxed");
    let created = wharf.post(
        "/api/v1/environments",
        serde_json::json!({"project_id": "acme/boxed", "env_name": "staging", "config": {"cpu": 1, "memory": 0.5, "storage": 1}}),
    );
    let env = id_number(&created.json["env_id"]);
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join(".wharf.yml"), CONTAINER_APP.replace("IMAGE", &image)).unwrap();
    // The job sees only its checkout (it is sandboxed), so the server comes in the commit.
    std::fs::copy(env!("CARGO_BIN_EXE_version-server"), work.path().join("version-server")).unwrap();
    git_ok(work.path(), &["init", "-q"]);
    let push = |version: &str| {
        std::fs::write(work.path().join("VERSION"), version).unwrap();
        git_ok(work.path(), &["add", "."]);
        git_ok(work.path(), &["commit", "-qm", version]);
        git_ok(work.path(), &["push", "-q", &wharf.push_url("acme/boxed"), "HEAD:main"]);
    };
    let settled = |revision: u64| {
        let mut newest = serde_json::Value::Null;
        wait_until(&format!("revision {revision} finishes"), Duration::from_secs(120), || {
            newest = wharf.get(&format!("/api/v1/environments/{env}/deployments")).json["deployments"][0].clone();
            newest["revision"] == revision && matches!(newest["status"].as_str(), Some("completed" | "failed" | "rolled-back"))
        });
        newest
    };
    push("v1");
    let first = settled(1);
    assert_eq!(first["status"], "completed", "{first:#}");
    assert_eq!(String::from_utf8_lossy(&wharf.get("/apps/acme/boxed/staging/x").bytes), "version v1 path /x\n");

    // Each instance is a container with the environment's limits.
    let instances = wharf.get(&format!("/api/v1/environments/{env}")).json["instances"].clone();
    assert_eq!(instances.as_array().unwrap().len(), 2);
    for instance in instances.as_array().unwrap() {
        let name = format!("wharf-instance-{}", id_number(&instance["id"]));
        let limits = docker_ok(&["inspect", "--format", "{{.HostConfig.NanoCpus}} {{.HostConfig.Memory}}", &name]);
        assert_eq!(limits, "1000000000 536870912", "{name}: --cpus 1 --memory 512m");
    }

    // A rolling update replaces the containers; the old ones are removed.
    push("v2");
    assert_eq!(settled(2)["status"], "completed");
    assert_eq!(String::from_utf8_lossy(&wharf.get("/apps/acme/boxed/staging/").bytes), "version v2 path /\n");
    let old: Vec<String> = instances.as_array().unwrap().iter().map(|i| format!("wharf-instance-{}", id_number(&i["id"]))).collect();
    wait_until("the old containers are gone", Duration::from_secs(60), || {
        old.iter().all(|name| !docker(&["inspect", name]).status.success())
    });
    let deleted = wharf.request("DELETE", "/api/v1/environments", Some(format!("{{\"env_id\":{env}}}").into_bytes()), Some(&wharf.token));
    assert_eq!(deleted.status, 200);
    wait_until("every instance container is gone", Duration::from_secs(60), || {
        docker(&["ps", "--all", "--quiet", "--filter", "name=wharf-instance-"]).stdout.is_empty()
    });
    let _ = docker(&["rmi", &image]);
}

/// The jobs of the README's walkthrough (mkdir, cp, grep: `sh: mkdir: not found` before), in the
/// image's own userland (issue 13, point 5). Bubblewrap cannot run in an unprivileged
/// container, so the node runs its jobs with `WHARF_SANDBOX=none`, as the README says.
const README_JOBS: &str = r#"stages: [build, test]
jobs:
  build:
    stage: build
    script: [mkdir -p out, cp app.py VERSION out/, ls out]
    artifacts: { paths: [out/] }
  unit:
    stage: test
    script: ['grep -q "^v" VERSION && echo "Coverage: 100.00%"', 'tar czf out.tgz app.py && gzip -t out.tgz']
    coverage: 'Coverage: (\d+\.\d+)%'
"#;

#[test]
#[ignore = "needs a Docker engine: .ci/run runs it with --run-ignored when one answers"]
fn the_image_runs_the_readme_jobs_with_its_own_userland() {
    struct Removed(String, String);
    impl Drop for Removed {
        fn drop(&mut self) {
            let _ = docker(&["rm", "--force", &self.0]);
            let _ = docker(&["image", "rm", &self.1]);
        }
    }
    let pid = std::process::id();
    let (container, image) = (format!("wharf-jobs-test-{pid}"), format!("wharf:jobs-test-{pid}"));
    let _removed = Removed(container.clone(), image.clone());
    build_image(&image);
    let port = free_port();
    docker_ok(&[
        "run", "-d", "--name", &container, "-p", &format!("127.0.0.1:{port}:8080"), "-e", "WHARF_SANDBOX=none", "-e", "WHARF_LOG=warn",
        &image, "dev", "--data-dir", "/data/dev", "--listen", "0.0.0.0:8080",
    ]);
    let mut token = None;
    wait_until("the container prints its admin token", Duration::from_secs(60), || {
        let logs = docker(&["logs", &container]);
        token = String::from_utf8_lossy(&logs.stdout)
            .lines()
            .find_map(|line| line.strip_prefix("wharf: admin token ")?.split_whitespace().next().map(str::to_owned));
        token.is_some()
    });
    let data = tempfile::tempdir().unwrap();
    let wharf = Wharf::attach(format!("http://127.0.0.1:{port}"), token.unwrap(), data.path());
    wharf.create_repo("acme/app");
    wharf_tests::push(&wharf, "acme/app", &[(".wharf.yml", README_JOBS), ("app.py", "print('hi')\n"), ("VERSION", "v1\n")]);
    let pipeline = wharf_tests::finished_pipeline(&wharf, "acme/app");
    let log = |name: &str| {
        let id = wharf_tests::job(&pipeline, name)["id"].as_u64().unwrap();
        String::from_utf8_lossy(&wharf.get(&format!("/api/v1/jobs/{id}/log")).bytes).into_owned()
    };
    assert_eq!(pipeline["status"], "passed", "{pipeline:#}\nbuild: {}\nunit: {}", log("build"), log("unit"));
    assert!(log("build").contains("app.py"), "{}", log("build"));
    assert_eq!(wharf_tests::job(&pipeline, "unit")["coverage"], 100.0);
}

const CONTAINER_JOB: &str = r#"stages: [build]
jobs:
  boxed:
    stage: build
    image: IMAGE
    network: false
    script:
      - test -x /usr/local/bin/wharf && echo "in the wharf image"
      - test -e "$DATA_DIR/admin-token" || echo "no admin token"
      - echo "secret is $API_TOKEN"
      - echo made in a container > out.txt
    artifacts: { paths: [out.txt] }
"#;

/// A job that names an `image:` runs in a container of it, seeing its workspace and not the
/// node's data; its secrets are masked and its artifacts kept; the container is removed.
#[test]
#[ignore = "needs a Docker engine: .ci/run runs it with --run-ignored when one answers"]
fn a_job_with_an_image_runs_in_a_container_of_it() {
    let image = format!("wharf:job-test-{}", std::process::id());
    build_image(&image);

    let data = tempfile::tempdir().unwrap();
    let wharf = Wharf::start(data.path());
    wharf.create_repo("acme/boxed");
    for (name, value, secret) in [("DATA_DIR", data.path().display().to_string(), false), ("API_TOKEN", "s3cr3t-in-a-box".to_owned(), true)] {
        let set = wharf.post("/api/v1/repos/acme/boxed/variables", serde_json::json!({"name": name, "value": value, "secret": secret}));
        assert_eq!(set.status, 201, "{set:?}");
    }
    wharf_tests::push(&wharf, "acme/boxed", &[(".wharf.yml", &CONTAINER_JOB.replace("IMAGE", &image))]);
    let pipeline = wharf_tests::finished_pipeline(&wharf, "acme/boxed");
    let job = wharf_tests::job(&pipeline, "boxed");
    let log = String::from_utf8(wharf.get(&format!("/api/v1/jobs/{}/log", job["id"])).bytes).unwrap();
    assert_eq!(job["status"], "passed", "{log}");
    assert!(log.contains("\nin the wharf image\n") && log.contains("\nno admin token\n"), "{log}");
    assert!(log.contains("\nsecret is [MASKED]\n") && !log.contains("s3cr3t-in-a-box"), "{log}");
    let artifact = wharf.get(&format!("/api/v1/jobs/{}/artifacts/out.txt", job["id"]));
    assert_eq!(artifact.bytes, b"made in a container\n");
    assert!(docker(&["ps", "--all", "--quiet", "--filter", "name=wharf-job-"]).stdout.is_empty(), "the job's container is removed");
    let _ = docker(&["rmi", &image]);
}
