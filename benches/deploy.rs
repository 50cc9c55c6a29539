//! `bench-deploy`: how long releases take and what the application router costs, on `wharf dev`.
//!
//! - a rolling update of 4 instances (max_surge 1, max_unavailable 0): from the deploy call to
//!   `completed`;
//! - a blue-green release of 4 instances: from the deploy call to the first answer of the new
//!   version through the router (the promotion), and to `completed` (after the scale-down delay);
//! - a release whose health check fails: from the first failing check (the `unhealthy` event)
//!   to the rollback complete;
//! - requests per second through the router against the same instance hit directly, same run.
//!
//! Run it with `scripts/bench-deploy.sh` (release build). It prints a Markdown table.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wharf_tests::{git_ok, wait_until, Wharf};

const APP: &str = r#"import http.server, os
VERSION = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "VERSION")).read().strip()
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def do_GET(self):
        if self.path == "/healthz" and VERSION == "bad":
            self.send_response(500); self.send_header("content-length", "0"); self.end_headers(); return
        body = ("version %s\n" % VERSION).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), Handler).serve_forever()
"#;

const FILE: &str = r#"stages: [build]
jobs:
  build:
    stage: build
    script: [mkdir -p out, cp app.py VERSION out/]
    artifacts: { paths: [out/] }
deploy:
  from: build
  command: python3 out/app.py
  health: { path: /healthz, interval: 200ms, timeout: 1s, healthy_threshold: 2, unhealthy_threshold: 2 }
  environments:
    rolling:
      instances: 4
      strategy: { type: rolling, max_surge: 1, max_unavailable: 0 }
    bluegreen:
      instances: 4
      strategy: { type: blue_green, auto_promote: true, scale_down_delay: 2s }
    revert:
      instances: 2
      strategy: { type: rolling, max_surge: 1, max_unavailable: 0 }
"#;

/// Requests per client thread in the throughput runs.
const REQUESTS: usize = 500;
/// Client threads in the throughput runs.
const CLIENTS: usize = 4;

fn main() {
    let work = tempfile::tempdir().expect("temp dir");
    let wharf = Wharf::start(&work.path().join("data"));
    wharf.create_repo("bench/app");
    let source = work.path().join("source");
    std::fs::create_dir_all(&source).unwrap();
    std::fs::write(source.join("app.py"), APP).unwrap();
    std::fs::write(source.join(".wharf.yml"), FILE).unwrap();
    git_ok(&source, &["init", "-q"]);
    let envs: Vec<u64> = ["rolling", "bluegreen", "revert"]
        .iter()
        .map(|name| {
            let created = wharf.post("/api/v1/environments", json!({"project_id": "bench/app", "env_name": name}));
            wharf_tests::id_number(&created.json["env_id"])
        })
        .collect();
    let (rolling, bluegreen, revert) = (envs[0], envs[1], envs[2]);

    push_and_build(&wharf, &source, "v1");
    for env in &envs {
        deploy(&wharf, *env);
    }
    for env in &envs {
        finished(&wharf, *env, 1);
    }

    push_and_build(&wharf, &source, "v2");
    let started = Instant::now();
    deploy(&wharf, rolling);
    let rolled = finished(&wharf, rolling, 2);
    assert_eq!(rolled["status"], "completed", "{rolled:#}");
    let rolling_time = started.elapsed();

    let started = Instant::now();
    deploy(&wharf, bluegreen);
    let http = reqwest::blocking::Client::new();
    let url = format!("{}/apps/bench/app/bluegreen/", wharf.url);
    wait_until("the blue-green release takes the traffic", Duration::from_secs(120), || {
        http.get(&url).send().and_then(|r| r.text()).is_ok_and(|text| text.contains("v2"))
    });
    let promote_time = started.elapsed();
    finished(&wharf, bluegreen, 2);
    let blue_green_time = started.elapsed();

    push_and_build(&wharf, &source, "bad");
    deploy(&wharf, revert);
    let reverted = finished(&wharf, revert, 2);
    assert_eq!(reverted["status"], "rolled-back", "{reverted:#}");
    let unhealthy_at = reverted["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["message"].as_str().unwrap_or("").contains("unhealthy"))
        .and_then(|e| e["time_ms"].as_u64())
        .expect("an unhealthy event");
    let rollback_ms = reverted["finished_ms"].as_u64().unwrap().saturating_sub(unhealthy_at);

    let instance = wharf.get(&format!("/api/v1/environments/{rolling}")).json["instances"][0].clone();
    let direct = format!("http://127.0.0.1:{}/", instance["port"]);
    let routed = format!("{}/apps/bench/app/rolling/", wharf.url);
    let direct_rps = throughput(&direct);
    let routed_rps = throughput(&routed);

    println!();
    println!("| Measure (one node, release build) | Result |");
    println!("|---|---|");
    println!("| rolling update of 4 instances (surge 1, unavailable 0): deploy call → completed | {:.1} s |", rolling_time.as_secs_f64());
    println!("| blue-green release of 4 instances: deploy call → traffic on the new set | {:.1} s |", promote_time.as_secs_f64());
    println!("| blue-green release of 4 instances: deploy call → completed (2 s scale-down delay) | {:.1} s |", blue_green_time.as_secs_f64());
    println!("| failing health check → rollback complete (2 instances) | {:.1} s |", rollback_ms as f64 / 1000.0);
    println!("| requests/s through the router ({CLIENTS} clients) | {routed_rps:.0} |");
    println!("| requests/s to one instance directly ({CLIENTS} clients) | {direct_rps:.0} |");
}

fn push_and_build(wharf: &Wharf, source: &std::path::Path, version: &str) {
    std::fs::write(source.join("VERSION"), format!("{version}\n")).unwrap();
    git_ok(source, &["add", "."]);
    git_ok(source, &["commit", "-qm", version]);
    git_ok(source, &["push", "-q", &wharf.push_url("bench/app"), "HEAD:main"]);
    let sha = git_ok(source, &["rev-parse", "HEAD"]).trim().to_owned();
    wait_until("the pipeline passes", Duration::from_secs(120), || {
        let listed = wharf.get("/api/v1/repos/bench/app/pipelines").json;
        listed["pipelines"].as_array().into_iter().flatten().any(|p| p["sha"] == sha && p["status"] == "passed")
    });
}

fn deploy(wharf: &Wharf, env: u64) {
    let started = wharf.post("/api/v1/deployments", json!({"repo_url": "bench/app", "branch_name": "main", "env_id": env}));
    assert_eq!(started.status, 201, "{started:?}");
}

fn finished(wharf: &Wharf, env: u64, revision: u64) -> Value {
    let mut newest = Value::Null;
    wait_until("the deployment finishes", Duration::from_secs(300), || {
        newest = wharf.get(&format!("/api/v1/environments/{env}/deployments")).json["deployments"][0].clone();
        newest["revision"] == revision && matches!(newest["status"].as_str(), Some("completed" | "failed" | "rolled-back"))
    });
    newest
}

/// Requests per second from [`CLIENTS`] threads, each sending [`REQUESTS`] GETs in turn.
fn throughput(url: &str) -> f64 {
    let started = Instant::now();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let url = url.to_owned();
            std::thread::spawn(move || {
                let http = reqwest::blocking::Client::new();
                for _ in 0..REQUESTS {
                    let answer = http.get(&url).send().expect("request");
                    assert!(answer.status().is_success());
                    answer.bytes().expect("body");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("client thread");
    }
    (CLIENTS * REQUESTS) as f64 / started.elapsed().as_secs_f64()
}
