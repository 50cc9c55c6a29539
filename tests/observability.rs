//! What an operator sees of Wharf: `/metrics`, request ids in replies and in the owning node's
//! log lines (in `wharf dev` and across processes), the Prometheus service-discovery list, a real Prometheus scraping a three-node
//! cluster through it, and the shipped alert rules passing `promtool`.
//!
//! The Prometheus tests need Debian's `prometheus` package (`prometheus` and `promtool` on the
//! PATH); `.ci/run` installs it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use wharf_tests::cluster::{free_port, LocalCluster};
use wharf_tests::{wait_until, Process, Wharf, START_DEADLINE};

/// How long Prometheus gets to discover, scrape and answer.
const PROMETHEUS_DEADLINE: Duration = Duration::from_secs(90);

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

fn get_text(url: &str) -> String {
    let response = http().get(url).send().unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(response.status(), 200, "GET {url}");
    response.text().expect("a text body")
}

fn get_json(url: &str) -> Value {
    serde_json::from_str(&get_text(url)).unwrap_or_else(|e| panic!("GET {url} is not JSON: {e}"))
}

/// `wharf dev` with info-level JSON logs, so a test can find the node's log lines.
fn start_dev_with_json_logs(data: &Path) -> Wharf {
    let args: Vec<String> = ["dev", "--listen", "127.0.0.1:0", "--log-format", "json", "--data-dir"]
        .iter()
        .map(|a| a.to_string())
        .chain([data.display().to_string()])
        .collect();
    let mut process = Process::spawn_logging("dev", &args, "info,openraft=warn");
    let url = process.wait_for_line("wharf: serving on ", START_DEADLINE);
    let token = std::fs::read_to_string(data.join("admin-token")).expect("admin-token written").trim().to_owned();
    Wharf::ready(process, url, token, data)
}

#[test]
fn dev_serves_metrics_by_route_template_and_echoes_request_ids() {
    let data = tempfile::tempdir().unwrap();
    let mut wharf = start_dev_with_json_logs(data.path());

    // A request id the client chose comes back as it was, and reaches the node that owns the
    // repository: its log line for the creation is inside the router's `call` span with the id.
    let created = http()
        .post(format!("{}/api/v1/repos", wharf.url))
        .bearer_auth(&wharf.token)
        .header("x-request-id", "obs-test-create-1")
        .json(&json!({"name": "acme/metrics"}))
        .send()
        .expect("create sent");
    assert_eq!(created.status(), 201);
    assert_eq!(created.headers()["x-request-id"], "obs-test-create-1");
    let line = wharf.process().expect("dev runs").wait_for_line_containing(
        &["repository created", "obs-test-create-1"],
        Duration::from_secs(10),
    );
    let logged: Value = serde_json::from_str(&line).expect("a JSON log line");
    let spans = logged["spans"].as_array().expect("the line lists its spans");
    assert!(
        spans.iter().any(|span| span["name"] == "call" && span["request_id"] == "obs-test-create-1"),
        "the node's log line is in a call span with the request id: {line}"
    );

    // Without one, or with one that is not usable, the reply carries a new id.
    let plain = http().get(format!("{}/api/v1/repos/acme/metrics", wharf.url)).send().expect("sent");
    assert_eq!(plain.status(), 200);
    let generated = plain.headers()["x-request-id"].to_str().expect("ascii").to_owned();
    assert!(generated.len() >= 16, "a generated id: {generated:?}");
    let other = http().get(format!("{}/api/v1/repos/acme/metrics", wharf.url)).send().expect("sent");
    assert_ne!(other.headers()["x-request-id"].to_str().expect("ascii"), generated, "each request gets its own id");
    let garbled = http()
        .get(format!("{}/api/v1/repos/acme/metrics", wharf.url))
        .header("x-request-id", "two words")
        .send()
        .expect("sent");
    let replaced = garbled.headers()["x-request-id"].to_str().expect("ascii");
    assert!(replaced != "two words" && !replaced.is_empty(), "an unusable id is replaced: {replaced:?}");
    let missing = http().get(format!("{}/api/v1/repos/acme/nothing-here", wharf.url)).send().expect("sent");
    assert_eq!(missing.status(), 404);

    let text = get_text(&format!("{}/metrics", wharf.url));
    let route = r#"route="/api/v1/repos/{owner}/{name}""#;
    let requests = text
        .lines()
        .find(|l| l.starts_with("wharf_http_requests_total{") && l.contains(route) && l.contains(r#"status="200""#))
        .unwrap_or_else(|| panic!("no request count for the route template in:\n{text}"));
    let count: f64 = requests.rsplit(' ').next().and_then(|v| v.parse().ok()).expect("a count");
    assert!(count >= 3.0, "three reads of the repository counted: {requests}");
    assert!(
        text.lines().any(|l| l.starts_with("wharf_http_requests_total{") && l.contains(route) && l.contains(r#"status="404""#)),
        "the 404 is counted under the same template"
    );
    assert!(!text.contains("acme/metrics"), "raw paths never become labels");
    assert!(
        text.lines().any(|l| l.starts_with("wharf_http_request_duration_seconds_bucket{") && l.contains(route) && l.contains("le=")),
        "latency is a histogram with buckets:\n{text}"
    );
    for series in [
        "wharf_actor_calls_total{",
        "wharf_actor_call_duration_seconds_bucket{",
        "wharf_raft_term ",
        "wharf_raft_applied_index ",
        r#"wharf_repositories{state="active"}"#,
        "wharf_runner_slots_busy ",
        r#"wharf_ci_jobs{status="queued"}"#,
        r#"wharf_background_tasks{task="rebalancer"} 1"#,
        r#"wharf_background_tasks{task="raft-metrics"} 1"#,
    ] {
        assert!(text.contains(series), "/metrics has {series}:\n{text}");
    }

    // `wharf dev` is one process on one port: one target.
    let targets = get_json(&format!("{}/api/v1/cluster/metrics-targets", wharf.url));
    let address = wharf.url.trim_start_matches("http://");
    assert_eq!(targets, json!([{"targets": [address], "labels": {"wharf_role": "node", "wharf_node": "1"}}]));
    wharf.stop();
}

#[test]
fn shipped_alert_rules_pass_promtool() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cluster-config/prometheus");
    for args in [
        vec!["check", "rules", "alerts.yml"],
        vec!["check", "config", "prometheus.yml"],
        vec!["test", "rules", "alerts_test.yml"],
    ] {
        let output = Command::new("promtool")
            .args(&args)
            .current_dir(&dir)
            .output()
            .expect("promtool runs (Debian package `prometheus`; .ci/run installs it)");
        assert!(
            output.status.success(),
            "promtool {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// A `prometheus` server on a free loopback port, killed on drop.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping every second whatever `sd_url` lists.
    fn start(sd_url: &str) -> Prometheus {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: wharf\n    \
             http_sd_configs:\n      - url: {sd_url}\n        refresh_interval: 1s\n"
        );
        let config_path: PathBuf = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("config written");
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus runs (Debian package `prometheus`; .ci/run installs it)");
        let prometheus = Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        wait_until("Prometheus is ready", PROMETHEUS_DEADLINE, || {
            http().get(format!("{}/-/ready", prometheus.url)).send().is_ok_and(|r| r.status() == 200)
        });
        prometheus
    }

    fn query(&self, query: &str) -> Vec<Value> {
        let answer: Value = http()
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", query)])
            .send()
            .and_then(|r| r.json())
            .expect("a query answer");
        answer["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn prometheus_scrapes_every_node_and_the_front_through_service_discovery() {
    let mut cluster = LocalCluster::start_logging(3, |_| Vec::new(), "info,openraft=warn");

    // A request id given to the front shows in the log line of the node that owns the
    // repository, another process: it travelled inside the actor message.
    let created = http()
        .post(format!("{}/api/v1/repos", cluster.front.url))
        .bearer_auth(&cluster.front.token)
        .header("x-request-id", "obs-cluster-create-1")
        .json(&json!({"name": "acme/traced"}))
        .send()
        .expect("create sent");
    assert_eq!(created.status(), 201);
    assert_eq!(created.headers()["x-request-id"], "obs-cluster-create-1");
    let owner = created.json::<Value>().expect("the record")["node"].as_u64().expect("an owner");
    cluster.node_process(owner).expect("the owner runs").wait_for_line_containing(
        &["call{request_id=\"obs-cluster-create-1\"", "repository created"],
        Duration::from_secs(10),
    );

    let sd_url = format!("{}/api/v1/cluster/metrics-targets", cluster.front.url);
    let front = &cluster.front;

    let targets = get_json(&sd_url);
    let groups = targets.as_array().expect("an http_sd list");
    let nodes: Vec<&str> = groups
        .iter()
        .filter(|g| g["labels"]["wharf_role"] == "node")
        .filter_map(|g| g["labels"]["wharf_node"].as_str())
        .collect();
    assert_eq!(nodes.len(), 3, "three storage nodes listed: {targets}");
    let fronts: Vec<&Value> = groups.iter().filter(|g| g["labels"]["wharf_role"] == "front").collect();
    assert_eq!(fronts.len(), 1, "the front lists itself: {targets}");
    assert_eq!(fronts[0]["targets"], json!([front.url.trim_start_matches("http://")]));
    for group in groups {
        let target = group["targets"][0].as_str().expect("a host:port");
        assert!(get_text(&format!("http://{target}/metrics")).contains("wharf_raft_term "), "{target} serves /metrics");
    }

    // Traffic, so that the front has request series to show.
    assert_eq!(front.get("/api/v1/cluster").status, 200);

    let prometheus = Prometheus::start(&sd_url);
    wait_until("Prometheus reports four targets up", PROMETHEUS_DEADLINE, || {
        let answer: Value = http()
            .get(format!("{}/api/v1/targets", prometheus.url))
            .send()
            .and_then(|r| r.json())
            .unwrap_or(Value::Null);
        let active = answer["data"]["activeTargets"].as_array().cloned().unwrap_or_default();
        active.len() == 4 && active.iter().all(|t| t["health"] == "up")
    });

    wait_until("Prometheus has the Raft term of every member", PROMETHEUS_DEADLINE, || {
        prometheus.query(r#"wharf_raft_term{job="wharf"}"#).len() == 4
    });
    let terms = prometheus.query(r#"wharf_raft_term{job="wharf"}"#);
    assert!(
        terms.iter().all(|series| series["value"][1].as_str().and_then(|v| v.parse::<f64>().ok()).is_some_and(|t| t >= 1.0)),
        "every member is past term 0: {terms:?}"
    );
    wait_until("Prometheus sees one leader", PROMETHEUS_DEADLINE, || {
        prometheus.query(r#"sum(wharf_raft_is_leader{job="wharf"})"#).first().and_then(|s| s["value"][1].as_str().map(str::to_owned))
            == Some("1".to_owned())
    });
    wait_until("Prometheus has the front's request counts", PROMETHEUS_DEADLINE, || {
        !prometheus
            .query(r#"wharf_http_requests_total{job="wharf", wharf_role="front", route="/api/v1/cluster"}"#)
            .is_empty()
    });

    // A restarted node gets a new free port; its record follows, and so does Prometheus.
    let node3_target = |targets: &Value| {
        targets
            .as_array()
            .and_then(|groups| groups.iter().find(|g| g["labels"]["wharf_node"] == "3"))
            .and_then(|g| g["targets"][0].as_str().map(str::to_owned))
    };
    let before = node3_target(&get_json(&sd_url)).expect("node 3 listed");
    cluster.restart_node(3);
    wait_until("node 3's record names its new metrics port", START_DEADLINE, || {
        node3_target(&get_json(&sd_url)).is_some_and(|now| now != before)
    });
    let after = node3_target(&get_json(&sd_url)).expect("node 3 listed");
    wait_until("Prometheus scrapes node 3 at its new address", PROMETHEUS_DEADLINE, || {
        let up = prometheus.query(&format!(r#"up{{job="wharf", instance="{after}"}}"#));
        up.first().and_then(|s| s["value"][1].as_str().map(str::to_owned)) == Some("1".to_owned())
    });
}
