//! Jobs attack the node that runs them, as someone who can push a `.wharf.yml` would: they
//! look for the admin token, the data directory, Wharf's environment and other jobs'
//! workspaces, plant links to leave the workspace through artifacts and reports, print
//! secrets in ways a line-by-line masker misses, and flood their log. Needs bubblewrap (the
//! default sandbox), which `.ci/run` installs.

use std::time::Duration;

use serde_json::Value;
use wharf_tests::{finished_pipeline, job, push, push_tree, rss_mib, wait_until, Wharf};

/// A secret of two lines, and a plain variable that tells the jobs where the data is.
const SECRET: &str = "first-line-of-the-key\nsecond-line-of-the-key";

const SPY_PIPELINE: &str = r#"stages: [spy]
jobs:
  spy:
    stage: spy
    script:
      - id
      - cat "$DATA_DIR/admin-token" || echo "no admin token"
      - ls "$DATA_DIR" || echo "no data directory"
      - cat /proc/$PPID/environ /proc/1/environ | tr '\0' '\n' || true
      - ls /proc | grep -c '^[0-9]' > procs.txt; echo "processes seen $(cat procs.txt)"
      - ls "$(dirname "$PWD")"
      - echo pwned > "$DATA_DIR/pwned" || echo "cannot write the data directory"
      - echo pwned > /usr/pwned || echo "cannot write the system"
      - printf '%s\n' "$THE_KEY"
      - printf '%s' "$THE_KEY" | base64 -w0; echo
      - mkdir -p reports && printf '<testsuite><testcase name="leak"><failure message="%s"/></testcase></testsuite>' "$THE_KEY" > reports/junit.xml
    reports: { junit: reports/junit.xml }
  neighbour:
    stage: spy
    script:
      - echo "neighbour secret file" > neighbour.txt
      - sleep 3
"#;

fn set_variable(wharf: &Wharf, repo: &str, name: &str, value: &str, secret: bool) {
    let answer = wharf.post(&format!("/api/v1/repos/{repo}/variables"), serde_json::json!({"name": name, "value": value, "secret": secret}));
    assert_eq!(answer.status, 201, "{answer:?}");
}

fn log_of(wharf: &Wharf, job: &Value) -> String {
    String::from_utf8(wharf.get(&format!("/api/v1/jobs/{}/log", job["id"])).bytes).unwrap()
}

#[test]
fn a_job_sees_only_its_workspace_and_leaks_nothing() {
    let data = tempfile::tempdir().unwrap();
    let wharf = Wharf::start(data.path());
    let cluster = wharf.request("GET", "/api/v1/cluster", None, Some(&wharf.token)).json;
    let sandbox = cluster["nodes"][0]["sandbox"].as_str().unwrap_or_default();
    assert!(sandbox.starts_with("bubblewrap"), "the node says what confines its jobs: {cluster:#}");

    wharf.create_repo("acme/spy");
    let data_dir = std::fs::canonicalize(data.path()).unwrap().display().to_string();
    set_variable(&wharf, "acme/spy", "DATA_DIR", &data_dir, false);
    set_variable(&wharf, "acme/spy", "THE_KEY", SECRET, true);
    push(&wharf, "acme/spy", &[(".wharf.yml", SPY_PIPELINE)]);
    let pipeline = finished_pipeline(&wharf, "acme/spy");
    let spy = job(&pipeline, "spy");
    let log = log_of(&wharf, spy);
    assert_eq!(spy["status"], "passed", "{log}");

    // Nothing of the node's is visible or writable.
    assert!(log.contains("uid=65534"), "the job runs as the sandbox user: {log}");
    assert!(!log.contains(&wharf.token), "the admin token leaked: {log}");
    // (Each step is echoed first, so outputs are matched as whole lines.)
    assert!(log.contains("\nno admin token\n"), "{log}");
    assert!(!log.contains("\nmeta\n") && !log.contains("\nrepos\n"), "the data directory's contents are visible: {log}");
    assert!(!log.contains("WHARF_COOKIE") && !log.contains("RUST_LOG"), "Wharf's environment leaked: {log}");
    assert!(log.contains("\ncannot write the data directory\n") && log.contains("\ncannot write the system\n"), "{log}");
    assert!(!data.path().join("pwned").exists() && !std::path::Path::new("/usr/pwned").exists());
    let seen: u32 = log.rsplit("processes seen ").next().unwrap().split_whitespace().next().unwrap().parse().unwrap();
    assert!(seen < 10, "the job sees only its own processes, not the node's: {seen}");
    let neighbour = format!("job-{}", job(&pipeline, "neighbour")["id"]);
    assert!(log.contains(&format!("job-{}", spy["id"])) && !log.contains(&neighbour), "another job's workspace is visible: {log}");

    // The secret, whole, by line, in base64 and in the test report, is masked.
    for line in SECRET.lines() {
        assert!(!log.contains(line), "a line of the secret leaked: {log}");
    }
    assert_eq!(log.matches("\n[MASKED]\n").count(), 2, "the secret and its base64 are masked: {log}");
    use base64::Engine;
    assert!(!log.contains(&base64::engine::general_purpose::STANDARD.encode(SECRET)), "{log}");
    let message = spy["tests"]["failures"][0]["message"].as_str().unwrap();
    assert!(!message.contains("line-of-the-key") && message.contains("[MASKED]"), "the report keeps the secret: {message}");
}

const ESCAPE_PIPELINE: &str = r#"stages: [escape]
jobs:
  made-link:
    stage: escape
    script: [ln -s "$DATA_DIR" dlink]
    artifacts: { paths: [dlink/admin-token] }
  committed-link:
    stage: escape
    script: [echo reports through a committed link]
    reports: { junit: committed/admin-token }
  absolute:
    stage: escape
    script: [echo an absolute report path]
    reports: { cobertura: /etc/passwd }
  honest:
    stage: escape
    script: [mkdir -p out, echo fine > out/ok.txt, ln -s /etc/passwd out/passwd]
    artifacts: { paths: [out/] }
"#;

#[test]
fn artifacts_and_reports_never_leave_the_workspace() {
    let data = tempfile::tempdir().unwrap();
    let wharf = Wharf::start(data.path());
    wharf.create_repo("acme/escape");
    let data_dir = std::fs::canonicalize(data.path()).unwrap().display().to_string();
    set_variable(&wharf, "acme/escape", "DATA_DIR", &data_dir, false);
    let target = data_dir.clone();
    push_tree(&wharf, "acme/escape", move |dir| {
        std::fs::write(dir.join(".wharf.yml"), ESCAPE_PIPELINE).unwrap();
        std::os::unix::fs::symlink(&target, dir.join("committed")).unwrap();
    });
    let pipeline = finished_pipeline(&wharf, "acme/escape");
    for name in ["made-link", "committed-link", "absolute"] {
        let escaped = job(&pipeline, name);
        assert_eq!(escaped["status"], "failed", "{name}: {escaped:#}");
        let message = escaped["message"].as_str().unwrap_or_default();
        assert!(message.contains("leaves the workspace"), "{name}: {message}");
        assert!(escaped["artifacts"].as_array().is_none_or(Vec::is_empty), "{name} kept artifacts: {escaped:#}");
        assert!(escaped["tests"].is_null(), "{name} read a report: {escaped:#}");
        assert!(!log_of(&wharf, escaped).contains(&wharf.token));
    }
    // Links inside an artifact directory are skipped; the rest is kept.
    let honest = job(&pipeline, "honest");
    assert_eq!(honest["status"], "passed", "{honest:#}");
    let listed = wharf.get(&format!("/api/v1/jobs/{}/artifacts", honest["id"])).json;
    let paths: Vec<&str> = listed["artifacts"].as_array().unwrap().iter().map(|a| a["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["out/ok.txt"]);
}

#[test]
fn a_flood_of_output_is_capped_and_read_in_chunks() {
    let data = tempfile::tempdir().unwrap();
    let wharf = Wharf::start(data.path());
    wharf.create_repo("acme/flood");
    let file = "stages: [flood]\njobs:\n  flood:\n    stage: flood\n    script: [\"head -c 100000000 /dev/zero | tr '\\\\0' x\", echo after the flood]\n";
    push(&wharf, "acme/flood", &[(".wharf.yml", file)]);
    let pipeline = finished_pipeline(&wharf, "acme/flood");
    let flood = job(&pipeline, "flood");
    assert_eq!(flood["status"], "passed", "{flood:#}");
    let before = rss_mib(wharf.pid().unwrap());
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let url = format!("{}/api/v1/jobs/{}/log", wharf.url, flood["id"]);
            std::thread::spawn(move || reqwest::blocking::get(url).unwrap().bytes().unwrap().len())
        })
        .collect();
    let sizes: Vec<usize> = readers.into_iter().map(|reader| reader.join().unwrap()).collect();
    let after = rss_mib(wharf.pid().unwrap());
    let log = log_of(&wharf, flood);
    let cap = 4 << 20;
    assert!(log.len() > cap && log.len() < cap + 4096, "the log is cut at 4 MiB: {} bytes", log.len());
    assert!(sizes.iter().all(|size| *size == log.len()), "{sizes:?}");
    assert!(log.contains("wharf: the log was truncated at 4194304 bytes"), "{}", &log[log.len() - 300..]);
    assert!(!log.contains("after the flood"), "output after the cap is dropped");
    assert!(after < before + 50.0, "four readers took the server from {before:.1} to {after:.1} MiB");
    wait_until("the workspace is removed", Duration::from_secs(10), || {
        std::fs::read_dir(data.path().join("ci/work")).is_ok_and(|mut entries| entries.next().is_none())
    });
}

const NETWORK_PIPELINE: &str = r#"stages: [net]
jobs:
  online:
    stage: net
    script: [python3 ci/dial.py]
  offline:
    stage: net
    network: false
    script: [python3 ci/dial.py]
"#;

/// Connects to the Wharf front whose port is in `FRONT_PORT`.
const DIAL: &str = r#"import os, socket
try:
    socket.create_connection(("127.0.0.1", int(os.environ["FRONT_PORT"])), 2).close()
    print("reached the front")
except OSError as error:
    print("no network:", error)
"#;

#[test]
fn a_job_without_network_reaches_nothing() {
    let data = tempfile::tempdir().unwrap();
    let wharf = Wharf::start(data.path());
    wharf.create_repo("acme/net");
    let port = wharf.url.rsplit(':').next().unwrap().to_owned();
    set_variable(&wharf, "acme/net", "FRONT_PORT", &port, false);
    push(&wharf, "acme/net", &[(".wharf.yml", NETWORK_PIPELINE), ("ci/dial.py", DIAL)]);
    let pipeline = finished_pipeline(&wharf, "acme/net");
    let online = log_of(&wharf, job(&pipeline, "online"));
    let offline = log_of(&wharf, job(&pipeline, "offline"));
    assert!(online.contains("\nreached the front\n"), "{online}");
    assert!(offline.contains("\nno network:") && !offline.contains("reached the front"), "{offline}");
}
