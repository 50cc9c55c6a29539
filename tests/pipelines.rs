//! Pipelines on one node: a push of a repository with `.wharf.yml` runs its jobs for real.

use std::time::Duration;

use serde_json::Value;
use wharf_tests::{finished_pipeline, job, marks_dir, process_running, push, wait_until, Wharf};

const PIPELINE: &str = r#"stages: [build, test, deploy]
variables:
  GREETING: hello
jobs:
  build:
    stage: build
    script:
      - mkdir -p out && echo "$GREETING from $WHARF_BRANCH" > out/hello.txt
      - cat out/hello.txt
  unit:
    stage: test
    needs: [build]
    script: [sh ci/unit.sh]
    coverage: 'Coverage: (\d+\.\d+)%'
  lint:
    stage: test
    script:
      - echo "lint finds a problem"
      - exit 3
  ship:
    stage: deploy
    script: [echo shipping]
  slow:
    stage: test
    script: [sleep 30]
    timeout: 2s
"#;

const UNIT: &str = r#"test "$CI" = true || { echo "CI is not set"; exit 1; }
test -n "$WHARF_COMMIT_SHA" || exit 1
echo "running unit tests at $WHARF_COMMIT_SHA"
echo "Coverage: 87.50%"
"#;

#[test]
fn a_push_runs_its_pipeline_in_order_with_logs_coverage_failures_and_timeouts() {
    let data = tempfile::tempdir().unwrap();
    let wharf = Wharf::start(data.path());
    wharf.create_repo("acme/ci");
    let sha = push(&wharf, "acme/ci", &[(".wharf.yml", PIPELINE), ("ci/unit.sh", UNIT)]);

    let pipeline = finished_pipeline(&wharf, "acme/ci");
    assert_eq!(pipeline["sha"], sha);
    assert_eq!(pipeline["ref_name"], "refs/heads/main");
    assert_eq!(pipeline["status"], "failed", "{pipeline:#}");
    assert_eq!(job(&pipeline, "build")["status"], "passed");
    assert_eq!(job(&pipeline, "unit")["status"], "passed");
    assert_eq!(job(&pipeline, "unit")["coverage"], 87.5);
    assert_eq!(job(&pipeline, "lint")["status"], "failed");
    assert_eq!(job(&pipeline, "lint")["exit_code"], 3);
    assert_eq!(job(&pipeline, "slow")["status"], "timed_out");
    assert_eq!(job(&pipeline, "ship")["status"], "skipped", "deploy waits for the whole test stage");

    let log = |name: &str| {
        let id = job(&pipeline, name)["id"].as_u64().unwrap();
        String::from_utf8(wharf.get(&format!("/api/v1/jobs/{id}/log")).bytes).unwrap()
    };
    assert!(log("build").contains("hello from main"), "{}", log("build"));
    assert!(log("unit").contains(&format!("running unit tests at {sha}")));
    assert!(log("lint").contains("lint finds a problem"));
    assert!(log("slow").contains("killed at its timeout"));
    // The unit job started after build finished: needs are honoured.
    assert!(job(&pipeline, "unit")["started_ms"].as_u64() >= job(&pipeline, "build")["finished_ms"].as_u64());
}

#[test]
fn a_broken_pipeline_file_fails_at_once_with_the_line_and_runs_nothing() {
    let data = tempfile::tempdir().unwrap();
    let wharf = Wharf::start(data.path());
    wharf.create_repo("acme/broken");
    push(&wharf, "acme/broken", &[(".wharf.yml", "stages: [build]\njobs:\n  a:\n    stage: nowhere\n    script: [touch ran]\n")]);
    let pipeline = finished_pipeline(&wharf, "acme/broken");
    assert_eq!(pipeline["status"], "failed");
    let error = pipeline["error"].as_str().unwrap();
    assert!(error.contains("line 3") && error.contains("\"nowhere\""), "{error}");
    assert_eq!(pipeline["jobs"], serde_json::json!([]));

    // A repository without a pipeline file gets no pipeline.
    wharf.create_repo("acme/plain");
    push(&wharf, "acme/plain", &[("README.md", "no ci here\n")]);
    let listed = wharf.get("/api/v1/repos/acme/plain/pipelines");
    assert_eq!(listed.json["pipelines"], serde_json::json!([]));
    assert_eq!(wharf.get("/api/v1/pipelines/999").status, 404);
}

/// A small Python project: a module, its tests (one of which finds a real bug), and a runner
/// that writes a JUnit report the way pytest would.
const CALC: &str = "def add(a, b):\n    return a + b\n\ndef divide(a, b):\n    return a * b  # the bug the tests find\n";
const RUN_TESTS: &str = r#"import sys, time, traceback
sys.path.insert(0, ".")
import calc
from xml.sax.saxutils import quoteattr

def test_add():
    assert calc.add(2, 3) == 5

def test_add_negative():
    assert calc.add(-2, -3) == -5

def test_divide():
    assert calc.divide(6, 3) == 2, "divide(6, 3) gave %r" % calc.divide(6, 3)

NOT_RUN = ["test_power"]
cases, failed = [], 0
for test in [test_add, test_add_negative, test_divide]:
    start = time.time()
    try:
        test()
        cases.append('<testcase classname="test_calc" name="%s" time="%.3f"/>' % (test.__name__, time.time() - start))
        print("PASS", test.__name__)
    except AssertionError as error:
        failed += 1
        cases.append('<testcase classname="test_calc" name="%s" time="%.3f"><failure message=%s/></testcase>'
                     % (test.__name__, time.time() - start, quoteattr(str(error))))
        print("FAIL", test.__name__, error)
for name in NOT_RUN:
    cases.append('<testcase classname="test_calc" name="%s"><skipped/></testcase>' % name)
import os
os.makedirs("reports", exist_ok=True)
with open("reports/junit.xml", "w") as out:
    out.write('<?xml version="1.0"?><testsuites><testsuite name="calc">%s</testsuite></testsuites>' % "".join(cases))
sys.exit(1 if failed else 0)
"#;

const REPORTS_PIPELINE: &str = r#"stages: [build, test]
jobs:
  build:
    stage: build
    script:
      - mkdir -p out/docs && echo "artifact body" > out/app.txt && echo "read me" > out/docs/README
      - echo "token is $API_TOKEN"
      - echo "marker dir is $MARK_DIR"
    artifacts: { paths: [out/], expire_in: 1h }
  unit:
    stage: test
    script: [python3 ci/run_tests.py]
    reports: { junit: reports/junit.xml }
  cover:
    stage: test
    script:
      - echo '<?xml version="1.0"?><coverage line-rate="0.8731" branch-rate="0.5"></coverage>' > coverage.xml
    reports: { cobertura: coverage.xml }
    artifacts: { paths: [coverage.xml], expire_in: 1s }
  live:
    stage: test
    script:
      - echo first line
      - while [ ! -e "$MARK_DIR/go" ]; do sleep 0.1; done
      - echo second line
"#;

fn pipeline_of_job(wharf: &Wharf, pipeline: u64) -> Value {
    wharf.get(&format!("/api/v1/pipelines/{pipeline}")).json
}

/// Reads Server-Sent Events from `response` until `end`, calling `on_log` for each `log`
/// event's id and data.
fn read_events(response: reqwest::blocking::Response, mut on_log: impl FnMut(&str, &Value)) -> Value {
    use std::io::BufRead;
    let mut reader = std::io::BufReader::new(response);
    let (mut event, mut id, mut data) = (String::new(), String::new(), String::new());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0, "the event stream ended without an end event");
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            let value: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
            match event.as_str() {
                "log" => on_log(&id, &value),
                "end" => return value,
                _ => {}
            }
            (event, id, data) = (String::new(), String::new(), String::new());
        } else if let Some(rest) = line.strip_prefix("event:") {
            event = rest.trim().to_owned();
        } else if let Some(rest) = line.strip_prefix("id:") {
            id = rest.trim().to_owned();
        } else if let Some(rest) = line.strip_prefix("data:") {
            data.push_str(rest.strip_prefix(' ').unwrap_or(rest));
        }
    }
}

#[test]
fn test_reports_artifacts_secrets_and_live_logs() {
    let data = tempfile::tempdir().unwrap();
    let marks = marks_dir();
    let wharf = Wharf::start_with(data.path(), &["--sandbox-volume", &marks.path().display().to_string()]);
    wharf.create_repo("acme/calc");
    let set = |name: &str, value: &str, secret: bool| {
        wharf.post("/api/v1/repos/acme/calc/variables", serde_json::json!({"name": name, "value": value, "secret": secret}))
    };
    assert_eq!(set("API_TOKEN", "s3cr3t-value", true).status, 201);
    assert_eq!(set("MARK_DIR", &marks.path().display().to_string(), false).status, 201);
    assert_eq!(set("WHARF_BRANCH", "x", false).status, 400, "Wharf's own variables cannot be overridden");
    assert_eq!(set("../x", "x", false).error_code(), "invalid_name");
    let listed = wharf.request("GET", "/api/v1/repos/acme/calc/variables", None, Some(&wharf.token)).json;
    let token = listed["variables"].as_array().unwrap().iter().find(|v| v["name"] == "API_TOKEN").unwrap();
    assert_eq!(token["value"], Value::Null, "a secret's value is never shown");
    assert_eq!(wharf.get("/api/v1/repos/acme/calc/variables").status, 401);

    push(&wharf, "acme/calc", &[(".wharf.yml", REPORTS_PIPELINE), ("calc.py", CALC), ("ci/run_tests.py", RUN_TESTS)]);
    let mut pipeline_id = None;
    wait_until("a pipeline is created", Duration::from_secs(30), || {
        pipeline_id = wharf.get("/api/v1/repos/acme/calc/pipelines").json["pipelines"][0]["id"].as_u64();
        pipeline_id.is_some()
    });
    let pipeline_id = pipeline_id.unwrap();
    let live_id = job(&pipeline_of_job(&wharf, pipeline_id), "live")["id"].as_u64().unwrap();

    // Follow the live job's log: its first line arrives while it still runs (it waits for a
    // file only this test writes), and the streamed text is the stored log exactly.
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(120)).build().unwrap();
    let response = http
        .get(format!("{}/api/v1/jobs/{live_id}/log", wharf.url))
        .header("accept", "text/event-stream")
        .send()
        .unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut streamed = String::new();
    let mut first_event_id = None;
    let end = read_events(response, |id, value| {
        let text = value["text"].as_str().unwrap();
        assert_eq!(value["offset"].as_u64().unwrap() as usize, streamed.len(), "chunks follow each other");
        streamed.push_str(text);
        if streamed.contains("first line\n") && first_event_id.is_none() {
            first_event_id = Some(id.to_owned());
            let status = wharf.get(&format!("/api/v1/jobs/{live_id}")).json["status"].clone();
            assert_eq!(status, "running", "the first line is seen while the job runs");
            std::fs::write(marks.path().join("go"), "").unwrap();
        }
    });
    assert_eq!(end["status"], "passed");
    let stored = String::from_utf8(wharf.get(&format!("/api/v1/jobs/{live_id}/log")).bytes).unwrap();
    assert_eq!(streamed, stored, "no line lost or doubled");
    assert!(stored.contains("$ echo first line\nfirst line\n") && stored.contains("second line"), "{stored}");

    // A client that reconnects with the last event id gets the rest and nothing before it.
    let first_event_id = first_event_id.unwrap();
    let resumed = http
        .get(format!("{}/api/v1/jobs/{live_id}/log", wharf.url))
        .header("accept", "text/event-stream")
        .header("last-event-id", &first_event_id)
        .send()
        .unwrap();
    let mut rest = String::new();
    read_events(resumed, |_, value| rest.push_str(value["text"].as_str().unwrap()));
    let offset: usize = first_event_id.parse().unwrap();
    assert_eq!(rest, stored[offset..]);
    let tail = wharf.get(&format!("/api/v1/jobs/{live_id}/log?offset={offset}"));
    assert_eq!(String::from_utf8(tail.bytes).unwrap(), stored[offset..]);
    assert_eq!(tail.headers["x-wharf-log-complete"], "true");

    let pipeline = finished_pipeline(&wharf, "acme/calc");
    assert_eq!(pipeline["status"], "failed", "{pipeline:#}");

    // JUnit: counts and the failing case with its message.
    let unit = job(&pipeline, "unit");
    assert_eq!(unit["status"], "failed");
    assert_eq!(unit["tests"]["passed"], 2);
    assert_eq!(unit["tests"]["failed"], 1);
    assert_eq!(unit["tests"]["skipped"], 1);
    assert_eq!(unit["tests"]["failures"][0]["name"], "test_divide");
    assert_eq!(unit["tests"]["failures"][0]["message"], "divide(6, 3) gave 18");

    // Coverage from a Cobertura report; its artifact expires after a second.
    let cover = job(&pipeline, "cover");
    assert_eq!(cover["coverage"], 87.31);
    let expiring = format!("/api/v1/jobs/{}/artifacts/coverage.xml", cover["id"]);
    wait_until("the artifact expires", Duration::from_secs(10), || {
        let answer = wharf.get(&expiring);
        answer.status == 404 && answer.json["error"]["message"].as_str().unwrap_or("").contains("expired")
    });

    // Secrets are masked in the log; plain variables are not.
    let build = job(&pipeline, "build");
    let build_id = build["id"].as_u64().unwrap();
    let build_log = String::from_utf8(wharf.get(&format!("/api/v1/jobs/{build_id}/log")).bytes).unwrap();
    assert!(build_log.contains("token is [MASKED]"), "{build_log}");
    assert!(!build_log.contains("s3cr3t-value"));
    assert!(build_log.contains(&format!("marker dir is {}", marks.path().display())));

    // Artifacts: listed, downloadable, nothing outside them.
    let artifacts = wharf.get(&format!("/api/v1/jobs/{build_id}/artifacts")).json;
    let paths: Vec<&str> = artifacts["artifacts"].as_array().unwrap().iter().map(|a| a["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["out/app.txt", "out/docs/README"]);
    assert!(artifacts["expire_ms"].as_u64().unwrap() > build["finished_ms"].as_u64().unwrap() + 3_500_000);
    let file = wharf.get(&format!("/api/v1/jobs/{build_id}/artifacts/out/app.txt"));
    assert_eq!((file.status, file.bytes.as_slice()), (200, &b"artifact body\n"[..]));
    for bad in ["out/../.wharf.yml", "calc.py", "out", "..%2f.wharf.yml", "12x"] {
        let answer = wharf.get(&format!("/api/v1/jobs/{build_id}/artifacts/{bad}"));
        assert_eq!(answer.status, 404, "{bad}: {answer:?}");
    }
    assert_eq!(wharf.get("/api/v1/jobs/abc").error_code(), "invalid_request", "a malformed id is a JSON 400");

    // The seed's test API: only the unit tests, then their results.
    let trigger = |body: Value| wharf.post("/api/v1/tests/trigger", body);
    let started = trigger(serde_json::json!({"repo_url": "acme/calc", "branch_name": "main", "test_type": "unit"}));
    assert_eq!(started.status, 201, "{started:?}");
    assert_eq!(started.json["message"], "Tests triggered successfully");
    let test_id = started.json["test_id"].as_u64().unwrap();
    let mut results = Value::Null;
    wait_until("the unit tests finish", Duration::from_secs(60), || {
        results = wharf.get(&format!("/api/v1/tests/results?test_id={test_id}")).json;
        !matches!(results["status"].as_str(), Some("queued" | "running"))
    });
    assert_eq!(results["test_id"], test_id);
    assert_eq!(results["status"], "failed");
    assert_eq!(results["coverage"], Value::Null);
    assert_eq!(results["details"]["tests"], serde_json::json!({"passed": 2, "failed": 1, "skipped": 1}));
    assert_eq!(results["details"]["jobs"].as_array().unwrap().len(), 1, "only the unit job ran");
    let by_body = wharf.request("GET", "/api/v1/tests/results", Some(format!("{{\"test_id\":{test_id}}}").into_bytes()), None);
    assert_eq!(by_body.json["status"], "failed");
    assert_eq!(trigger(serde_json::json!({"repo_url": "acme/calc", "branch_name": "main", "test_type": "nope"})).status, 400);
    assert_eq!(trigger(serde_json::json!({"repo_url": "acme/calc", "branch_name": "gone"})).status, 404);
    assert_eq!(trigger(serde_json::json!({"repo_url": "acme/none", "branch_name": "main"})).status, 404);
    assert_eq!(wharf.get("/api/v1/tests/results?test_id=999").status, 404);
    assert_eq!(wharf.get("/api/v1/tests/results").status, 400);
}

const CANCEL_PIPELINE: &str = r#"stages: [test, after]
jobs:
  sleeper:
    stage: test
    script:
      - sleep 3017 & echo $! > "$MARK_DIR/child.pid"; wait
  flaky:
    stage: test
    script:
      - if [ ! -e "$MARK_DIR/flaky" ]; then touch "$MARK_DIR/flaky"; echo failing once; exit 1; fi
      - echo passing now
  report:
    stage: after
    needs: [flaky]
    script: [echo reporting]
"#;

#[test]
fn cancel_kills_the_whole_job_and_retry_runs_a_job_again() {
    let data = tempfile::tempdir().unwrap();
    let marks = marks_dir();
    let wharf = Wharf::start_with(data.path(), &["--sandbox-volume", &marks.path().display().to_string()]);
    wharf.create_repo("acme/flow");
    let mark_dir = marks.path().display().to_string();
    assert_eq!(wharf.post("/api/v1/repos/acme/flow/variables", serde_json::json!({"name": "MARK_DIR", "value": mark_dir})).status, 201);
    push(&wharf, "acme/flow", &[(".wharf.yml", CANCEL_PIPELINE)]);

    let pid_file = marks.path().join("child.pid");
    wait_until("the sleeper's child starts", Duration::from_secs(60), || {
        std::fs::read_to_string(&pid_file).is_ok_and(|pid| pid.ends_with('\n'))
    });
    // The pid is the sandbox's own; the sleeper is found by its unusual command line.
    assert!(process_running("sleep 3017"));
    let id = wharf.get("/api/v1/repos/acme/flow/pipelines").json["pipelines"][0]["id"].as_u64().unwrap();
    // The flaky job failed on its own, so its follower was skipped.
    wait_until("flaky fails", Duration::from_secs(60), || job(&pipeline_of_job(&wharf, id), "flaky")["status"] == "failed");
    assert_eq!(job(&pipeline_of_job(&wharf, id), "report")["status"], "skipped");

    assert_eq!(wharf.request("POST", &format!("/api/v1/pipelines/{id}/cancel"), None, None).status, 401);
    let canceled = wharf.request("POST", &format!("/api/v1/pipelines/{id}/cancel"), None, Some(&wharf.token));
    assert_eq!(canceled.status, 200, "{canceled:?}");
    wait_until("the sleeper's whole process group is killed", Duration::from_secs(30), || !process_running("sleep 3017"));
    let pipeline = pipeline_of_job(&wharf, id);
    assert_eq!(job(&pipeline, "sleeper")["status"], "canceled");
    assert_eq!(pipeline["status"], "failed", "a failed job outweighs a canceled one");

    // Retrying flaky runs it again (it passes now) and brings back what waited for it; the
    // canceled sleeper, which does not wait for it, stays canceled.
    let flaky = job(&pipeline, "flaky")["id"].as_u64().unwrap();
    let sleeper = job(&pipeline, "sleeper")["id"].as_u64().unwrap();
    assert_eq!(wharf.request("POST", &format!("/api/v1/jobs/{sleeper}/retry"), None, Some(&wharf.token)).status, 200);
    assert_eq!(wharf.request("POST", "/api/v1/jobs/999/retry", None, Some(&wharf.token)).status, 404);
    // The sleeper was retried just above only to show a finished job can be; cancel it again.
    wharf.request("POST", &format!("/api/v1/pipelines/{id}/cancel"), None, Some(&wharf.token));
    let retried = wharf.request("POST", &format!("/api/v1/jobs/{flaky}/retry"), None, Some(&wharf.token));
    assert_eq!(retried.status, 200, "{retried:?}");
    let mut pipeline = Value::Null;
    wait_until("the retried job and its follower finish", Duration::from_secs(60), || {
        pipeline = pipeline_of_job(&wharf, id);
        job(&pipeline, "report")["status"] == "passed"
    });
    let flaky = job(&pipeline, "flaky");
    assert_eq!(flaky["status"], "passed");
    assert_eq!(flaky["attempt"], 2);
    assert_eq!(pipeline["status"], "canceled", "{pipeline:#}");
    let log = String::from_utf8(wharf.get(&format!("/api/v1/jobs/{}/log", flaky["id"])).bytes).unwrap();
    assert!(log.contains("\npassing now\n") && !log.contains("\nfailing once\n"), "the log is the new attempt's: {log}");
}

const LONG_JOB: &str = r#"stages: [test]
jobs:
  long:
    stage: test
    script:
      - echo "$WHARF_NODE_ID $WHARF_JOB_ATTEMPT" >> "$MARK_DIR/runs"
      - sleep 6
      - echo "done on node $WHARF_NODE_ID"
"#;

/// Three nodes; node 1 owns the repository and runs no jobs, so the job runs on node 2 or 3.
/// That node is killed mid-job: the job's lease runs out, it runs again on the other node, and
/// it ends exactly once.
#[test]
fn a_job_whose_runner_is_killed_runs_again_elsewhere_and_ends_once() {
    use wharf_tests::cluster::{names_placed_on, LocalCluster};
    let marks = marks_dir();
    let volume = marks.path().display().to_string();
    let mut cluster = LocalCluster::start_with(3, move |id| {
        let slots = if id == 1 { "0" } else { "2" };
        ["--runner-slots", slots, "--job-lease-secs", "3", "--sandbox-volume", &volume].map(String::from).to_vec()
    });
    let repo = names_placed_on(1, 3, 1).remove(0);
    let front = &cluster.front;
    assert_eq!(front.create_repo(&repo)["node"], 1);
    let mark_dir = marks.path().display().to_string();
    let variable = front.post(&format!("/api/v1/repos/{repo}/variables"), serde_json::json!({"name": "MARK_DIR", "value": mark_dir}));
    assert_eq!(variable.status, 201);
    push(front, &repo, &[(".wharf.yml", LONG_JOB)]);

    let mut running = Value::Null;
    wait_until("the job runs", Duration::from_secs(60), || {
        let Some(id) = front.get(&format!("/api/v1/repos/{repo}/pipelines")).json["pipelines"][0]["id"].as_u64() else {
            return false;
        };
        running = job(&pipeline_of_job(front, id), "long").clone();
        running["status"] == "running" && std::fs::read_to_string(marks.path().join("runs")).is_ok_and(|runs| !runs.is_empty())
    });
    let victim = running["node"].as_u64().unwrap();
    assert_ne!(victim, 1, "node 1 has no runner slots");
    cluster.kill_node(victim);
    let front = &cluster.front;

    let pipeline_id = running["pipeline"].as_u64().unwrap();
    let mut pipeline = Value::Null;
    wait_until("the job ends on the other node", Duration::from_secs(90), || {
        pipeline = pipeline_of_job(front, pipeline_id);
        pipeline["status"] == "passed"
    });
    let ended = job(&pipeline, "long");
    let survivor = 5 - victim; // the other of nodes 2 and 3
    assert_eq!(ended["node"], survivor);
    assert_eq!(ended["attempt"], 2, "one attempt lost with its runner, one that ended");
    let runs = std::fs::read_to_string(marks.path().join("runs")).unwrap();
    assert_eq!(runs, format!("{victim} 1\n{survivor} 2\n"), "the script started once per attempt");
    let log = String::from_utf8(front.get(&format!("/api/v1/jobs/{}/log", ended["id"])).bytes).unwrap();
    assert!(log.contains(&format!("done on node {survivor}")), "{log}");
}

#[test]
fn the_cli_runs_and_follows_a_pipeline_with_live_logs_and_a_summary() {
    let data = tempfile::tempdir().unwrap();
    let wharf = Wharf::start(data.path());
    wharf.create_repo("acme/cli");
    let file = "stages: [build, test]\njobs:\n  build:\n    stage: build\n    script: [echo compiling]\n  unit:\n    stage: test\n    script: ['echo \"Coverage: 75.00%\"', exit 4]\n    coverage: 'Coverage: (\\d+\\.\\d+)%'\n";
    push(&wharf, "acme/cli", &[(".wharf.yml", file)]);
    finished_pipeline(&wharf, "acme/cli");
    let run = |args: &[&str]| wharf.cli(args);
    let output = run(&["pipeline", "run", "acme/cli", "main"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "a failed pipeline fails the command: {stdout}");
    assert!(stdout.contains("       build | compiling\n"), "{stdout}");
    assert!(stdout.contains("==> unit: failed on node 1"), "{stdout}");
    let summary = stdout.lines().find(|l| l.starts_with("unit ")).unwrap();
    assert!(summary.contains("failed") && summary.contains("75.00%"), "{summary}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("pipeline 2 failed"));

    let listed = String::from_utf8(run(&["pipeline", "list", "acme/cli"]).stdout).unwrap();
    assert_eq!(listed.lines().count(), 3, "a header and two pipelines: {listed}");
    let missing = run(&["pipeline", "follow", "999"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("pipeline 999 not found"));
}

/// Issue 13, point 7: a change made through the API (a commit, a branch, a merge, the seed's
/// branch endpoint, a deletion) records one event each in `/events` and runs the pipeline
/// rules, exactly as a push does.
#[test]
fn commits_branches_and_merges_through_the_api_record_events_and_run_pipelines() {
    let data = tempfile::tempdir().unwrap();
    let wharf = Wharf::start(data.path());
    let repo = "acme/apiflow";
    wharf.create_repo(repo);
    let file = "stages: [build]\njobs:\n  hello:\n    stage: build\n    script: [echo \"built $WHARF_BRANCH at $WHARF_COMMIT_SHA\"]\n";
    let commit = |branch: &str, path: &str, content: &str| {
        let answer = wharf.post(
            &format!("/api/v1/repos/{repo}/commits"),
            serde_json::json!({"branch": branch, "message": format!("add {path}"), "actions": [{"action": "create", "path": path, "content": content}]}),
        );
        assert_eq!(answer.status, 201, "{answer:?}");
        answer.json["commit"]["id"].as_str().unwrap().to_owned()
    };
    let pipelines = || wharf.get(&format!("/api/v1/repos/{repo}/pipelines")).json["pipelines"].as_array().unwrap().clone();
    let events = || wharf.get(&format!("/api/v1/repos/{repo}/events")).json["events"].as_array().unwrap().clone();

    // A commit through the API: one event, one pipeline, which runs.
    let first = commit("main", ".wharf.yml", file);
    let pipeline = finished_pipeline(&wharf, repo);
    assert_eq!((pipeline["sha"].as_str(), pipeline["status"].as_str()), (Some(first.as_str()), Some("passed")), "{pipeline:#}");
    let recorded = events();
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(recorded[0]["ref_name"], "refs/heads/main");
    assert_eq!(recorded[0]["new"], first.as_str());
    assert_eq!(recorded[0]["pusher"], "admin");

    // A branch through the seed's endpoint, a commit on it, a merge back: an event each, and
    // a pipeline for every branch tip they moved.
    let seeded = wharf.post("/api/v1/repo/branch", serde_json::json!({"repo_url": repo, "branch_name": "feature"}));
    assert_eq!(seeded.status, 201, "{seeded:?}");
    let feature = commit("feature", "feature.txt", "new\n");
    let merged = wharf.post(&format!("/api/v1/repos/{repo}/merges"), serde_json::json!({"base": "main", "head": "feature", "strategy": "merge"}));
    assert_eq!(merged.status, 200, "{merged:?}");
    let merge_sha = merged.json["commit"].as_str().unwrap().to_owned();
    let deleted = wharf.delete(&format!("/api/v1/repos/{repo}/branches/feature"));
    assert_eq!(deleted.status, 204, "{deleted:?}");

    let summary: Vec<(String, Option<String>)> = events()
        .iter()
        .map(|e| (e["ref_name"].as_str().unwrap().to_owned(), e["new"].as_str().map(str::to_owned)))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("refs/heads/main".to_owned(), Some(first.clone())),
            ("refs/heads/feature".to_owned(), Some(first.clone())),
            ("refs/heads/feature".to_owned(), Some(feature.clone())),
            ("refs/heads/main".to_owned(), Some(merge_sha.clone())),
            ("refs/heads/feature".to_owned(), None),
        ]
    );
    // Pipelines: the first commit, the new branch, its commit, the merge.
    let mut ran = Vec::new();
    wait_until("four pipelines finish", Duration::from_secs(90), || {
        ran = pipelines();
        ran.len() >= 4 && ran.iter().all(|p| !matches!(p["status"].as_str(), Some("queued" | "running")))
    });
    for (branch, sha) in [("main", &first), ("feature", &first), ("feature", &feature), ("main", &merge_sha)] {
        assert!(
            ran.iter().any(|p| p["sha"] == sha.as_str() && p["ref"] == format!("refs/heads/{branch}") && p["status"] == "passed"),
            "no passed pipeline for {branch} at {sha}: {ran:#?}"
        );
    }
}
