//! Deployments on one node: a small HTTP application (it answers its version; `bad` fails its
//! health check, `flaky` passes it but fails real requests, `slow` answers them in half a second) that the test builds is deployed through
//! pipelines and the API while a client keeps sending requests through the front.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use wharf_tests::{git_ok, id_number, wait_until, Wharf};

/// The application: answers its version, and fails its health check when the version is `bad`.
const APP: &str = r#"import http.server, os, time
VERSION = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "VERSION")).read().strip()
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/healthz" and VERSION == "bad":
            self.send_response(500); self.end_headers(); return
        if self.path != "/healthz" and VERSION == "flaky":
            self.send_response(500); self.end_headers(); return
        if self.path != "/healthz" and VERSION == "slow":
            time.sleep(0.5)
        body = ("version %s path %s\n" % (VERSION, self.path)).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
print("version %s listening on %s" % (VERSION, os.environ["PORT"]), flush=True)
http.server.ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), Handler).serve_forever()
"#;

fn pipeline_file(strategy: &str) -> String {
    format!(
        r#"stages: [build]
jobs:
  build:
    stage: build
    script: [mkdir -p out, cp app.py VERSION out/]
    artifacts: {{ paths: [out/] }}
deploy:
  from: build
  command: python3 out/app.py
  health: {{ path: /healthz, interval: 200ms, timeout: 1s, healthy_threshold: 2, unhealthy_threshold: 2 }}
  environments:
    staging:
      branch: main
      instances: 2
      strategy: {strategy}
      progress_deadline: 60s
    production:
      branch: main
      instances: 1
"#
    )
}

/// A working copy of the application that pushes versions.
struct App {
    work: tempfile::TempDir,
    repo: String,
}

impl App {
    fn new(strategy: &str) -> App {
        App::for_repo("acme/shop", strategy)
    }

    fn for_repo(repo: &str, strategy: &str) -> App {
        let work = tempfile::tempdir().unwrap();
        std::fs::write(work.path().join("app.py"), APP).unwrap();
        std::fs::write(work.path().join(".wharf.yml"), pipeline_file(strategy)).unwrap();
        git_ok(work.path(), &["init", "-q"]);
        App { work, repo: repo.to_owned() }
    }

    /// Commits `version` and pushes it; returns the commit.
    fn push(&self, wharf: &Wharf, version: &str) -> String {
        std::fs::write(self.work.path().join("VERSION"), format!("{version}\n")).unwrap();
        git_ok(self.work.path(), &["add", "."]);
        git_ok(self.work.path(), &["commit", "-qm", version]);
        git_ok(self.work.path(), &["push", "-q", &wharf.push_url(&self.repo), "HEAD:main"]);
        git_ok(self.work.path(), &["rev-parse", "HEAD"]).trim().to_owned()
    }
}

/// A client that keeps reading the application through the front and counts what it sees.
struct Traffic {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Result<String, String>>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(url: String) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (stop_flag, record) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
            while !stop_flag.load(Ordering::SeqCst) {
                let answer = match http.get(&url).send() {
                    Ok(response) if response.status() == 200 => Ok(response.text().unwrap_or_default()),
                    Ok(response) => Err(format!("{} {}", response.status(), response.text().unwrap_or_default())),
                    Err(error) => Err(error.to_string()),
                };
                record.lock().unwrap().push(answer);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Traffic {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    /// Every failed request so far, and how many requests there were.
    fn failures(&self) -> (Vec<String>, usize) {
        let seen = self.seen.lock().unwrap();
        (seen.iter().filter_map(|r| r.clone().err()).collect(), seen.len())
    }

    /// The versions of the last `n` answers.
    fn last_versions(&self, n: usize) -> Vec<String> {
        let seen = self.seen.lock().unwrap();
        seen.iter().rev().take(n).filter_map(|r| r.as_ref().ok()).map(|text| version_of(text)).collect()
    }

    fn clear(&self) {
        self.seen.lock().unwrap().clear();
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn version_of(text: &str) -> String {
    text.split_whitespace().nth(1).unwrap_or("").to_owned()
}

fn create_environment(wharf: &Wharf, name: &str, protected: bool) -> u64 {
    create_environment_of(wharf, "acme/shop", name, protected)
}

fn create_environment_of(wharf: &Wharf, repo: &str, name: &str, protected: bool) -> u64 {
    let body = json!({"project_id": repo, "env_name": name, "config": {"cpu": 1, "memory": 1, "storage": 1}, "protected": protected});
    let created = wharf.post("/api/v1/environments", body);
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(created.json["message"], "Environment created successfully");
    let env = &created.json["env_id"];
    assert!(env.as_str().is_some_and(|e| e.starts_with("env-")), "{env}");
    id_number(env)
}

/// Waits until the environment's newest deployment has finished; returns it.
fn settled(wharf: &Wharf, env: u64, revision: u64) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let newest = wharf.get(&format!("/api/v1/environments/{env}/deployments")).json["deployments"][0].clone();
        if newest["revision"] == revision && matches!(newest["status"].as_str(), Some("completed" | "failed" | "rolled-back")) {
            return newest;
        }
        if std::time::Instant::now() > deadline {
            let environment = wharf.get(&format!("/api/v1/environments/{env}")).json;
            let logs: Vec<String> = environment["instances"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|i| {
                    let log = wharf.get(&format!("/api/v1/environments/{env}/instances/{}/log", id_number(&i["id"])));
                    format!("instance {} on node {}: {}", i["id"], i["node"], String::from_utf8_lossy(&log.bytes))
                })
                .collect();
            panic!("revision {revision} of environment {env} did not finish within 120 s; newest deployment: {newest:#}; environment: {environment:#}; instance logs: {logs:#?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The instance a deployment event names as `instance N of revision R is unhealthy`.
fn unhealthy_instance(event: &str, revision: u64) -> Option<u64> {
    let (_, rest) = event.split_once("instance ")?;
    let (id, rest) = rest.split_once(' ')?;
    rest.starts_with(&format!("of revision {revision} is unhealthy")).then(|| id.parse().ok())?
}

fn status_of(wharf: &Wharf, deployment: u64) -> Value {
    wharf.get(&format!("/api/v1/deployments/status?deployment_id={deployment}")).json
}

#[test]
fn rolling_updates_roll_back_bad_releases_by_themselves_and_never_fail_a_request() {
    let data = tempfile::tempdir().unwrap();
    let wharf = Wharf::start(data.path());
    wharf.create_repo("acme/shop");
    let staging = create_environment(&wharf, "staging", false);
    let production = create_environment(&wharf, "production", true);
    assert_eq!(wharf.post("/api/v1/environments", json!({"project_id": "acme/shop", "env_name": "staging"})).status, 409);
    assert_eq!(wharf.post("/api/v1/environments", json!({"project_id": "acme/shop", "env_name": "../x"})).error_code(), "invalid_name");
    assert_eq!(wharf.post("/api/v1/environments", json!({"project_id": "acme/none", "env_name": "x"})).status, 404);

    let app = App::new("{ type: rolling, max_surge: 1, max_unavailable: 0, min_ready: 500ms }");
    app.push(&wharf, "v1");
    let first = settled(&wharf, staging, 1);
    assert_eq!(first["status"], "completed", "{first:#}");
    let url = format!("{}/apps/acme/shop/staging/hello", wharf.url);
    let answer = wharf.get("/apps/acme/shop/staging/hello");
    assert_eq!(String::from_utf8_lossy(&answer.bytes), "version v1 path /hello\n", "the prefix is stripped");
    let environment = wharf.get(&format!("/api/v1/environments/{staging}")).json;
    assert_eq!(environment["current_revision"], 1);
    assert_eq!(environment["instances"].as_array().unwrap().len(), 2);
    assert_eq!(
        wharf.get(&format!("/api/v1/environments/{production}/deployments")).json["deployments"],
        json!([]),
        "a protected environment does not deploy from a branch"
    );

    // v1 -> v2 under steady traffic.
    let traffic = Traffic::start(url);
    wait_until("traffic flows", Duration::from_secs(10), || traffic.failures().1 > 10);
    app.push(&wharf, "v2");
    let second = settled(&wharf, staging, 2);
    assert_eq!(second["status"], "completed", "{second:#}");
    let deployment = id_number(&second["id"]);
    let status = status_of(&wharf, deployment);
    assert_eq!(status["status"], "completed");
    assert_eq!(status["revision"], 2);
    assert_eq!(status["details"], "2 of 2 instances on revision 2");
    wait_until("traffic is on v2", Duration::from_secs(10), || traffic.last_versions(10).iter().all(|v| v == "v2"));
    let (failures, total) = traffic.failures();
    assert!(failures.is_empty(), "{} of {total} requests failed during the rolling update: {failures:?}", failures.len());

    // v3 fails its health check: rolled back to v2 by itself, still without a failed request.
    traffic.clear();
    app.push(&wharf, "bad");
    let third = settled(&wharf, staging, 3);
    assert_eq!(third["status"], "rolled-back", "{third:#}");
    assert!(third["details"].as_str().unwrap().contains("revision 2"), "{third:#}");
    let events: Vec<&str> = third["events"].as_array().unwrap().iter().map(|e| e["message"].as_str().unwrap()).collect();
    assert!(events.iter().any(|e| e.contains("unhealthy") && e.contains("rolling back to revision 2")), "{events:?}");
    assert_eq!(wharf.get(&format!("/api/v1/environments/{staging}")).json["current_revision"], 2);
    // The failed instance is gone, but its output stays readable (issue 13, point 8), through
    // the API and `wharf env logs`.
    let failed = events
        .iter()
        .find_map(|e| unhealthy_instance(e, 3))
        .unwrap_or_else(|| panic!("no failed instance named in {events:?}"));
    let live = wharf.get(&format!("/api/v1/environments/{staging}")).json["instances"].clone();
    assert!(live.as_array().unwrap().iter().all(|i| id_number(&i["id"]) != failed), "{live:#}");
    let log = wharf.get(&format!("/api/v1/environments/{staging}/instances/{failed}/log"));
    assert_eq!(log.status, 200, "{log:?}");
    assert!(String::from_utf8_lossy(&log.bytes).contains("version bad listening on"), "{log:?}");
    let cli = wharf.cli(&["env", "logs", &staging.to_string(), &failed.to_string()]);
    assert!(cli.status.success(), "{cli:?}");
    assert!(String::from_utf8_lossy(&cli.stdout).contains("version bad listening on"), "{cli:?}");
    let all = wharf.cli(&["env", "logs", &staging.to_string()]);
    let all = String::from_utf8_lossy(&all.stdout).into_owned();
    assert_eq!(all.matches("version v2 listening on").count(), 2, "{all}");
    assert!(all.contains("==> inst-"), "{all}");
    wait_until("traffic is on v2", Duration::from_secs(10), || traffic.last_versions(10).iter().all(|v| v == "v2"));
    let (failures, total) = traffic.failures();
    assert!(failures.is_empty(), "{} of {total} requests failed during the bad release: {failures:?}", failures.len());

    // A manual rollback to revision 1.
    traffic.clear();
    let rollback = wharf.post(&format!("/api/v1/environments/{staging}/rollback"), json!({"revision": 1}));
    assert_eq!(rollback.status, 201, "{rollback:?}");
    let fourth = settled(&wharf, staging, 4);
    assert_eq!(fourth["status"], "completed", "{fourth:#}");
    assert_eq!(fourth["kind"], json!({"rollback": {"to_revision": 1}}));
    wait_until("traffic is on v1", Duration::from_secs(10), || traffic.last_versions(10).iter().all(|v| v == "v1"));
    let (failures, total) = traffic.failures();
    assert!(failures.is_empty(), "{} of {total} requests failed during the rollback: {failures:?}", failures.len());
    assert_eq!(wharf.post(&format!("/api/v1/environments/{staging}/rollback"), json!({"revision": 3})).status, 400, "revision 3 never completed");
    assert_eq!(wharf.post(&format!("/api/v1/environments/{staging}/rollback"), json!({"revision": 99})).status, 404);
    drop(traffic);

    // The protected environment deploys on an explicit call.
    let started = wharf.post("/api/v1/deployments", json!({"repo_url": "acme/shop", "branch_name": "main", "env_id": production}));
    assert_eq!(started.status, 201, "{started:?}");
    assert_eq!(started.json["message"], "Deployment started");
    let explicit = settled(&wharf, production, 1);
    assert_eq!(explicit["status"], "failed", "the tip is the bad release and there is nothing to return to: {explicit:#}");
    assert_eq!(wharf.post("/api/v1/deployments", json!({"repo_url": "acme/shop", "branch_name": "nope", "env_id": production})).status, 404);
    assert!(status_of(&wharf, 999_999).get("error").is_some());

    // Deleting an environment stops its instances.
    let deleted = wharf.request("DELETE", "/api/v1/environments", Some(json!({"env_id": staging}).to_string().into_bytes()), Some(&wharf.token));
    assert_eq!(deleted.status, 200, "{deleted:?}");
    wait_until("the instances are gone", Duration::from_secs(30), || wharf.get("/apps/acme/shop/staging/").status == 404);
}

#[test]
fn blue_green_waits_for_promotion_and_a_killed_instance_is_replaced() {
    let data = tempfile::tempdir().unwrap();
    let wharf = Wharf::start(data.path());
    wharf.create_repo("acme/shop");
    let staging = create_environment(&wharf, "staging", false);
    let app = App::new("{ type: blue_green, auto_promote: false, scale_down_delay: 1s }");
    app.push(&wharf, "v1");
    // The first release has nothing to replace, but still waits for its promotion.
    let mut first = Value::Null;
    wait_until("revision 1 waits for promotion", Duration::from_secs(60), || {
        first = wharf.get(&format!("/api/v1/environments/{staging}/deployments")).json["deployments"][0].clone();
        first["status"] == "paused"
    });
    assert_eq!(wharf.post(&format!("/api/v1/deployments/{}/promote", first["id"].as_str().unwrap()), json!({})).status, 200);
    assert_eq!(settled(&wharf, staging, 1)["status"], "completed");

    let traffic = Traffic::start(format!("{}/apps/acme/shop/staging/", wharf.url));
    app.push(&wharf, "v2");
    let mut second = Value::Null;
    wait_until("revision 2 waits for promotion", Duration::from_secs(60), || {
        second = wharf.get(&format!("/api/v1/environments/{staging}/deployments")).json["deployments"][0].clone();
        second["revision"] == 2 && second["status"] == "paused"
    });
    assert_eq!(version_of(&String::from_utf8_lossy(&wharf.get("/preview/acme/shop/staging/").bytes)), "v2", "the new set is at the preview route");
    assert_eq!(traffic.last_versions(10), vec!["v1"; 10], "traffic stays on the old set until promotion");
    let status = status_of(&wharf, id_number(&second["id"]));
    assert_eq!(status["status"], "paused");
    assert!(status["details"].as_str().unwrap().contains("waiting for promotion"));
    wharf.post(&format!("/api/v1/deployments/{}/promote", id_number(&second["id"])), json!({}));
    assert_eq!(settled(&wharf, staging, 2)["status"], "completed");
    wait_until("traffic is on v2", Duration::from_secs(10), || traffic.last_versions(10).iter().all(|v| v == "v2"));

    // Host-based routing reaches the same environment.
    let by_host = reqwest::blocking::Client::new()
        .get(format!("{}/by-host", wharf.url))
        .header("host", "staging.shop.acme.localhost")
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert_eq!(by_host, "version v2 path /by-host\n");

    // An instance killed by hand is replaced.
    let instances = wharf.get(&format!("/api/v1/environments/{staging}")).json["instances"].clone();
    let victim = &instances[0];
    let pid = victim["pid"].as_u64().unwrap();
    std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
    wait_until("a replacement instance is healthy", Duration::from_secs(60), || {
        let instances = wharf.get(&format!("/api/v1/environments/{staging}")).json["instances"].clone();
        let healthy: Vec<&Value> = instances.as_array().unwrap().iter().filter(|i| i["health"] == "healthy").collect();
        healthy.len() == 2 && healthy.iter().all(|i| i["id"] != victim["id"])
    });
    let (failures, total) = traffic.failures();
    assert!(failures.is_empty(), "{} of {total} requests failed: {failures:?}", failures.len());
}

#[test]
fn a_canary_shifts_traffic_by_its_steps_and_a_failing_canary_is_aborted() {
    let data = tempfile::tempdir().unwrap();
    let wharf = Wharf::start(data.path());
    wharf.create_repo("acme/shop");
    let staging = create_environment(&wharf, "staging", false);
    let app = App::new("{ type: canary, steps: [25, 100], pause: 4s, max_error_rate: 0.05, max_latency: 200ms }");
    app.push(&wharf, "v1");
    assert_eq!(settled(&wharf, staging, 1)["status"], "completed");

    let traffic = Traffic::start(format!("{}/apps/acme/shop/staging/", wharf.url));
    app.push(&wharf, "v2");
    let at_step = |wharf: &Wharf| {
        let newest = wharf.get(&format!("/api/v1/environments/{staging}/deployments")).json["deployments"][0].clone();
        newest["status"] == "in-progress" && newest["details"] == "canary at 25%"
    };
    wait_until("the canary takes 25% of the traffic", Duration::from_secs(60), || at_step(&wharf));
    traffic.clear();
    wait_until("a hundred answers during the step", Duration::from_secs(10), || traffic.failures().1 >= 100);
    let versions = traffic.last_versions(100);
    assert!(at_step(&wharf), "the whole sample was taken during the 25% step");
    let share = versions.iter().filter(|v| *v == "v2").count();
    assert!((18..=32).contains(&share), "{share} of 100 answers came from the canary at 25%");
    let second = settled(&wharf, staging, 2);
    assert_eq!(second["status"], "completed", "{second:#}");
    wait_until("traffic is on v2", Duration::from_secs(10), || traffic.last_versions(10).iter().all(|v| v == "v2"));
    let (failures, total) = traffic.failures();
    assert!(failures.is_empty(), "{} of {total} requests failed during the canary: {failures:?}", failures.len());

    // A release that passes its health check but fails real requests is stopped by the check.
    app.push(&wharf, "flaky");
    let third = settled(&wharf, staging, 3);
    assert_eq!(third["status"], "rolled-back", "{third:#}");
    let events: Vec<&str> = third["events"].as_array().unwrap().iter().map(|e| e["message"].as_str().unwrap()).collect();
    assert!(events.iter().any(|e| e.starts_with("canary at 25%: ") && e.contains("requests failed") && e.contains("rolling back to revision 2")), "{events:?}");
    traffic.clear();
    wait_until("traffic is back on v2", Duration::from_secs(10), || {
        let last = traffic.last_versions(20);
        last.len() == 20 && last.iter().all(|v| v == "v2")
    });
    assert_eq!(wharf.get(&format!("/api/v1/environments/{staging}")).json["current_revision"], 2);

    // A release that answers, but slowly, is stopped by the latency check.
    app.push(&wharf, "slow");
    let fourth = settled(&wharf, staging, 4);
    assert_eq!(fourth["status"], "rolled-back", "{fourth:#}");
    let events: Vec<&str> = fourth["events"].as_array().unwrap().iter().map(|e| e["message"].as_str().unwrap()).collect();
    assert!(events.iter().any(|e| e.contains("ms on average, the most allowed is 200 ms")), "{events:?}");
}

#[test]
fn the_cli_and_the_event_stream_follow_a_deployment_and_instance_output_is_readable() {
    let data = tempfile::tempdir().unwrap();
    let wharf = Wharf::start(data.path());
    wharf.create_repo("acme/shop");
    let cli = |args: &[&str]| wharf.cli(args);
    let created = cli(&["env", "create", "acme/shop", "production", "--protected", "--memory", "1"]);
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let production: Value = serde_json::from_slice(&created.stdout).unwrap();
    let production = id_number(&production["env_id"]);
    let app = App::new("{ type: rolling, max_surge: 1, max_unavailable: 0 }");
    app.push(&wharf, "v1");
    wait_until("the pipeline passes", Duration::from_secs(60), || {
        wharf.get("/api/v1/repos/acme/shop/pipelines").json["pipelines"][0]["status"] == "passed"
    });

    // Start through the API and follow the event stream from the first event to the end.
    let started = wharf.post("/api/v1/deployments", json!({"repo_url": "acme/shop", "branch_name": "main", "env_id": production}));
    let id = id_number(&started.json["deployment_id"]);
    let stream = reqwest::blocking::Client::new()
        .get(format!("{}/api/v1/deployments/{id}/events", wharf.url))
        .send()
        .unwrap();
    let mut events = Vec::new();
    let mut end = Value::Null;
    let mut kind = String::new();
    for line in std::io::BufRead::lines(std::io::BufReader::new(stream)) {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("event:") {
            kind = rest.trim().to_owned();
        } else if let Some(data) = line.strip_prefix("data:") {
            let value: Value = serde_json::from_str(data.trim()).unwrap();
            match kind.as_str() {
                "event" => events.push(value["message"].as_str().unwrap().to_owned()),
                "end" => {
                    end = value;
                    break;
                }
                _ => {}
            }
        }
    }
    assert_eq!(end["status"], "completed", "{end:#}");
    assert_eq!(end["progress"], json!({"phase": "finished", "percent": 100}));
    assert_eq!(events.first().map(String::as_str), Some("revision 1 asked for"));
    assert_eq!(events.last().map(String::as_str), Some("revision 1 serves"), "{events:?}");

    // The instance's own output, read from the node that runs it.
    let instance = wharf.get(&format!("/api/v1/environments/{production}")).json["instances"][0].clone();
    let log = wharf.get(&format!("/api/v1/environments/{production}/instances/{}/log", instance["id"].as_str().unwrap()));
    assert_eq!(String::from_utf8_lossy(&log.bytes), format!("version v1 listening on {}\n", instance["port"]));
    assert_eq!(wharf.get(&format!("/api/v1/environments/{production}/instances/999/log")).status, 404);

    // The CLI deploys the next commit and follows it to the end.
    app.push(&wharf, "v2");
    wait_until("the pipeline passes", Duration::from_secs(60), || {
        wharf.get("/api/v1/repos/acme/shop/pipelines").json["pipelines"][0]["status"] == "passed"
    });
    // The environment named by its name (issue 13, point 3).
    let output = cli(&["deployment", "start", "acme/shop", "main", "--env", "production"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.starts_with(&format!("deploy-2: main of acme/shop to env-{production}\n")), "{stdout}");
    assert!(stdout.contains("  revision 2 serves\n"), "{stdout}");
    assert!(stdout.contains("[completed] revision 2: finished 100%"), "{stdout}");
    let listed = String::from_utf8(cli(&["env", "list", "acme/shop"]).stdout).unwrap();
    assert!(listed.lines().any(|l| l.contains(&format!("env-{production}")) && l.contains("production") && l.contains(" 2 ")), "{listed}");
    let rollback = cli(&["env", "rollback", &format!("env-{production}"), "1"]);
    assert!(rollback.status.success(), "{}", String::from_utf8_lossy(&rollback.stdout));
    assert_eq!(version_of(&String::from_utf8_lossy(&wharf.get("/apps/acme/shop/production/").bytes)), "v1");

    // Each kind has its own ids, shown with their kind; numbers are still accepted, and one kind
    // is never taken for another.
    let deployments = wharf.get("/api/v1/deployments");
    assert_eq!(deployments.status, 200, "{deployments:?}");
    let ids: Vec<&str> = deployments.json["deployments"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["deploy-3", "deploy-2", "deploy-1"]);
    let completed = wharf.get(&format!("/api/v1/deployments?environment=env-{production}&status=completed"));
    assert_eq!(completed.json["deployments"].as_array().unwrap().len(), 3, "{completed:?}");
    assert_eq!(completed.json["deployments"][0]["env"], format!("env-{production}"));
    assert_eq!(wharf.get("/api/v1/deployments?status=failed").json["deployments"], json!([]));
    assert_eq!(wharf.get("/api/v1/deployments?status=sideways").status, 400);
    assert_eq!(wharf.get("/api/v1/deployments/deploy-2").json["revision"], 2);
    assert_eq!(wharf.get("/api/v1/deployments/2").json["deployment_id"], "deploy-2");
    let confused = wharf.get("/api/v1/deployments/inst-1");
    assert_eq!(confused.status, 400);
    assert!(confused.json["error"]["message"].as_str().unwrap().contains("inst-1 is an instance id, not a deployment id"), "{confused:?}");
    let status = wharf.get("/api/v1/deployments/status?deployment_id=deploy-3");
    assert_eq!((status.json["deployment_id"].as_str(), status.json["status"].as_str()), (Some("deploy-3"), Some("completed")));
    let table = String::from_utf8(cli(&["deployment", "list", "--env", "production", "--status", "completed"]).stdout).unwrap();
    assert!(table.lines().nth(1).is_some_and(|l| l.contains("deploy-3") && l.contains(&format!("env-{production}"))), "{table}");
    let follow = cli(&["deployment", "follow", "deploy-1"]);
    assert!(follow.status.success() && String::from_utf8_lossy(&follow.stdout).contains("[completed] revision 1"), "{follow:?}");

    // The pipeline follower says which deployment the pipeline started.
    let staging = cli(&["env", "create", "acme/shop", "staging"]);
    assert!(staging.status.success(), "{staging:?}");
    app.push(&wharf, "v3");
    let mut pipeline = 0;
    wait_until("the third pipeline starts", Duration::from_secs(30), || {
        let listed = wharf.get("/api/v1/repos/acme/shop/pipelines").json;
        pipeline = listed["pipelines"][0]["id"].as_u64().unwrap_or_default();
        listed["pipelines"].as_array().unwrap().len() == 3
    });
    let followed = cli(&["pipeline", "follow", &pipeline.to_string()]);
    let stdout = String::from_utf8_lossy(&followed.stdout);
    assert!(followed.status.success(), "{stdout}");
    assert!(stdout.contains("deployment deploy-4 started: revision 1 of env-") && stdout.contains("(staging); follow it with: wharf deployment follow deploy-4"), "{stdout}");
}

/// Three nodes; node 1 owns the repository and runs the build, so the artifacts outlive the
/// node that is killed. Mid-rollout a node that runs the controller or an instance is killed:
/// the deployment still completes (its instances there are replaced elsewhere, its controller
/// is taken over), and no request through the front fails.
#[test]
fn a_deployment_goes_on_when_a_node_dies_mid_rollout() {
    use wharf_tests::cluster::{names_placed_on, LocalCluster};
    let mut cluster = LocalCluster::start_with(3, |id| if id == 1 { Vec::new() } else { vec!["--runner-slots".into(), "0".into()] });
    let repo = names_placed_on(1, 3, 1).remove(0);
    cluster.front.create_repo(&repo);
    let staging = create_environment_of(&cluster.front, &repo, "staging", false);
    let app = App::for_repo(&repo, "{ type: rolling, max_surge: 1, max_unavailable: 0, min_ready: 2s }");
    app.push(&cluster.front, "v1");
    let first = settled(&cluster.front, staging, 1);
    let environment = cluster.front.get(&format!("/api/v1/environments/{staging}")).json;
    assert_eq!(first["status"], "completed", "{first:#} {environment:#}");
    let (owner, name) = repo.split_once('/').unwrap();
    let traffic = Traffic::start(format!("{}/apps/{owner}/{name}/staging/", cluster.front.url));
    app.push(&cluster.front, "v2");

    let mut victim = None;
    wait_until("revision 2 rolls out with a new instance", Duration::from_secs(60), || {
        let newest = cluster.front.get(&format!("/api/v1/environments/{staging}/deployments")).json["deployments"][0].clone();
        let instances = cluster.front.get(&format!("/api/v1/environments/{staging}")).json["instances"].clone();
        let rolling = newest["revision"] == 2 && newest["status"] == "in-progress";
        let busy: Vec<u64> = instances.as_array().unwrap().iter().filter_map(|i| i["node"].as_u64()).collect();
        let controller = newest["controller"].as_u64();
        victim = controller.filter(|c| *c != 1).or_else(|| busy.iter().copied().find(|n| *n != 1));
        rolling && victim.is_some() && instances.as_array().unwrap().iter().any(|i| i["revision"] == 2)
    });
    let victim = victim.unwrap();
    cluster.kill_node(victim);

    let second = settled(&cluster.front, staging, 2);
    assert_eq!(second["status"], "completed", "{second:#}");
    // An instance the dead node ran may still count until its loss is noticed; then it is
    // replaced on a node in reach.
    let mut instances = Value::Null;
    wait_until("two healthy v2 instances on live nodes", Duration::from_secs(60), || {
        instances = cluster.front.get(&format!("/api/v1/environments/{staging}")).json["instances"].clone();
        let serving: Vec<&Value> = instances.as_array().unwrap().iter().filter(|i| i["health"] == "healthy").collect();
        serving.len() == 2 && serving.iter().all(|i| i["revision"] == 2 && i["node"] != victim)
    });
    wait_until("traffic is on v2", Duration::from_secs(10), || traffic.last_versions(10).iter().all(|v| v == "v2"));
    let (failures, total) = traffic.failures();
    assert!(failures.is_empty(), "{} of {total} requests failed when node {victim} died: {failures:?}", failures.len());
}

/// The canary check across processes: the controller runs on a storage node and asks the
/// front, another process, what its router saw of the new set.
#[test]
fn a_failing_canary_is_caught_when_the_router_is_another_process() {
    use wharf_tests::cluster::{names_placed_on, LocalCluster};
    let cluster = LocalCluster::start_with(2, |id| if id == 1 { Vec::new() } else { vec!["--runner-slots".into(), "0".into()] });
    let repo = names_placed_on(1, 2, 1).remove(0);
    cluster.front.create_repo(&repo);
    let staging = create_environment_of(&cluster.front, &repo, "staging", false);
    let app = App::for_repo(&repo, "{ type: canary, steps: [50, 100], pause: 3s, max_error_rate: 0.05 }");
    app.push(&cluster.front, "v1");
    let first = settled(&cluster.front, staging, 1);
    assert_eq!(first["status"], "completed", "{first:#}");
    let (owner, name) = repo.split_once('/').unwrap();
    let _traffic = Traffic::start(format!("{}/apps/{owner}/{name}/staging/", cluster.front.url));
    app.push(&cluster.front, "flaky");
    let second = settled(&cluster.front, staging, 2);
    assert_eq!(second["status"], "rolled-back", "{second:#}");
    let events: Vec<&str> = second["events"].as_array().unwrap().iter().map(|e| e["message"].as_str().unwrap()).collect();
    assert!(events.iter().any(|e| e.starts_with("canary at 50%: ") && e.contains("requests failed")), "{events:?}");
}

/// Deleting a repository takes everything of it along: its environments (their instances
/// stop), its deployments, pipelines and jobs, and, on the nodes, its jobs' logs and artifacts
/// and its mirror.
#[test]
fn deleting_a_repository_stops_its_instances_and_forgets_its_pipelines_and_files() {
    let data = tempfile::tempdir().unwrap();
    let mut wharf = Wharf::start(data.path());
    wharf.create_repo("acme/shop");
    let staging = create_environment(&wharf, "staging", false);
    let app = App::new("{ type: rolling, max_surge: 1, max_unavailable: 0 }");
    app.push(&wharf, "v1");
    assert_eq!(settled(&wharf, staging, 1)["status"], "completed");
    let ports: Vec<u64> = wharf.get(&format!("/api/v1/environments/{staging}")).json["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["port"].as_u64().unwrap())
        .collect();
    assert_eq!(ports.len(), 2);
    let answers = |port: u64| std::net::TcpStream::connect(("127.0.0.1", port as u16)).is_ok();
    assert!(ports.iter().all(|port| answers(*port)));
    let pipeline = wharf.get("/api/v1/repos/acme/shop/pipelines").json["pipelines"][0]["id"].as_u64().unwrap();
    let job = wharf.get(&format!("/api/v1/pipelines/{pipeline}")).json["jobs"][0]["id"].as_u64().unwrap();
    let ci = data.path().join("ci");
    let files = |dir: &str| std::fs::read_dir(ci.join(dir)).map(|entries| entries.count()).unwrap_or(0);
    assert!(files("logs") > 0 && files("artifacts") > 0 && files("mirrors") > 0);

    let deleted = wharf.delete("/api/v1/repos/acme/shop");
    assert!(deleted.status < 300, "{deleted:?}");
    for gone in [format!("/api/v1/environments/{staging}"), format!("/api/v1/pipelines/{pipeline}"), format!("/api/v1/jobs/{job}")] {
        assert_eq!(wharf.get(&gone).status, 404, "{gone} outlived its repository");
    }
    wait_until("the instances stop", Duration::from_secs(30), || ports.iter().all(|port| !answers(*port)));

    // The node's sweeper deletes the files at start and then every minute.
    wharf.stop();
    let wharf = Wharf::start(data.path());
    wait_until("the logs, artifacts and mirror are deleted", Duration::from_secs(30), || {
        files("logs") == 0 && files("artifacts") == 0 && files("mirrors") == 0
    });
    assert_eq!(wharf.get("/api/v1/repos/acme/shop").status, 404);
}
