//! Pipelines on one node: a push of a repository with `.wharf.yml` runs its jobs for real.

use std::time::Duration;

use serde_json::Value;
use wharf_tests::{git_ok, wait_until, Wharf};

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

fn push(wharf: &Wharf, repo: &str, files: &[(&str, &str)]) -> String {
    let work = tempfile::tempdir().unwrap();
    for (path, content) in files {
        let path = work.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    git_ok(work.path(), &["init", "-q"]);
    git_ok(work.path(), &["add", "."]);
    git_ok(work.path(), &["commit", "-qm", "pipeline"]);
    git_ok(work.path(), &["push", "-q", &wharf.push_url(repo), "main"]);
    git_ok(work.path(), &["rev-parse", "HEAD"]).trim().to_owned()
}

/// Waits for the repository's first pipeline to finish and returns it with its jobs.
fn finished_pipeline(wharf: &Wharf, repo: &str) -> Value {
    let mut id = None;
    wait_until("a pipeline is created", Duration::from_secs(30), || {
        id = wharf.get(&format!("/api/v1/repos/{repo}/pipelines")).json["pipelines"][0]["id"].as_u64();
        id.is_some()
    });
    let id = id.unwrap();
    let mut pipeline = Value::Null;
    wait_until("the pipeline finishes", Duration::from_secs(120), || {
        pipeline = wharf.get(&format!("/api/v1/pipelines/{id}")).json;
        !matches!(pipeline["status"].as_str(), Some("queued" | "running"))
    });
    pipeline
}

fn job<'a>(pipeline: &'a Value, name: &str) -> &'a Value {
    pipeline["jobs"].as_array().unwrap().iter().find(|j| j["name"] == name).unwrap()
}

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
