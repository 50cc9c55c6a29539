//! Tests of the pipeline file and the scheduling rules.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::{extract_coverage, parse_duration, pipeline_status, schedule, JobStatus, Pipeline, PipelineStatus, Step, Strategy};

/// The example of the issue, as a user would write it.
const EXAMPLE: &str = r#"stages: [build, test]
variables:
  GREETING: hello
jobs:
  build:
    stage: build
    script:
      - mkdir -p out && echo "$GREETING" > out/hello.txt
    artifacts: { paths: [out/], expire_in: 7d }
  unit:
    stage: test
    needs: [build]
    script: [./ci/unit.sh]
    reports: { junit: reports/junit.xml }
    coverage: 'Coverage: (\d+\.\d+)%'
    timeout: 60s
    retry: 1
    branches: [main, 'release/*']
  lint:
    stage: test
    script: cargo clippy
"#;

#[test]
fn the_example_file_parses_with_every_field() {
    let pipeline = Pipeline::parse(EXAMPLE).unwrap();
    assert_eq!(pipeline.stages, ["build", "test"]);
    assert_eq!(pipeline.variables["GREETING"], "hello");
    let build = &pipeline.jobs["build"];
    let artifacts = build.artifacts.as_ref().unwrap();
    assert_eq!(artifacts.paths, ["out/"]);
    assert_eq!(artifacts.expire_in, Some(Duration::from_secs(7 * 86_400)));
    let unit = &pipeline.jobs["unit"];
    assert_eq!(unit.needs.as_deref(), Some(&["build".to_owned()][..]));
    assert_eq!(unit.reports.junit.as_deref(), Some("reports/junit.xml"));
    assert_eq!((unit.timeout, unit.retry), (Duration::from_secs(60), 1));
    assert_eq!(pipeline.jobs["lint"].script, ["cargo clippy"], "a single command may be a plain string");
}

#[test]
fn branch_filters_pick_the_jobs_of_a_push() {
    let pipeline = Pipeline::parse(EXAMPLE).unwrap();
    let names = |branch: &str| pipeline.jobs_for_branch(branch).iter().map(|j| j.name.clone()).collect::<Vec<_>>();
    assert_eq!(names("main"), ["build", "lint", "unit"], "stage order, then name");
    assert_eq!(names("release/1.0"), ["build", "lint", "unit"]);
    assert_eq!(names("release/1.0/hotfix"), ["build", "lint"], "`*` does not cross a `/`");
    assert_eq!(names("feature/x"), ["build", "lint"]);
}

fn error_of(text: &str) -> (Option<usize>, String) {
    let error = Pipeline::parse(text).unwrap_err();
    (error.line, error.message)
}

#[test]
fn broken_files_name_the_line_and_the_reason() {
    let (line, message) = error_of("stages: [build]\njobs:\n  a:\n    stage: build\n    script: [x\n");
    assert!(line.is_some(), "a YAML syntax error has a line: {message}");

    let (line, message) = error_of("stages: [build]\njobs:\n  a:\n    stage: deploy\n    script: [x]\n");
    assert_eq!(line, Some(3));
    assert!(message.contains("\"deploy\" is not one of the stages"), "{message}");

    let (line, message) = error_of("stages: [build]\njobs:\n  a:\n    stage: build\n    script: [x]\n    needs: [ghost]\n");
    assert_eq!(line, Some(3));
    assert!(message.contains("needs \"ghost\""), "{message}");

    let cycle = "stages: [t]\njobs:\n  a:\n    stage: t\n    needs: [b]\n    script: [x]\n  b:\n    stage: t\n    needs: [a]\n    script: [x]\n";
    let (line, message) = error_of(cycle);
    assert!(message.contains("cycle: a -> b -> a"), "{message}");
    assert_eq!(line, Some(3));

    let (_, message) = error_of("stages: [b]\njobs:\n  a:\n    stage: b\n    script: [x]\n    timeout: soon\n");
    assert!(message.contains("not a duration"), "{message}");
    let (_, message) = error_of("stages: [b]\njobs:\n  a:\n    stage: b\n    script: [x]\n    colour: red\n");
    assert!(message.contains("unknown field"), "{message}");
    let (_, message) = error_of("stages: [b]\njobs:\n  a:\n    stage: b\n    script: []\n");
    assert!(message.contains("no commands"), "{message}");
    let (_, message) = error_of("stages: [b]\njobs:\n  a:\n    stage: b\n    script: [x]\n    image: --privileged\n");
    assert!(message.contains("is not an image name"), "an image cannot be an option of docker run: {message}");
    let (_, message) = error_of("stages: [b]\njobs:\n  a:\n    stage: b\n    script: [x]\n    artifacts: { paths: [../etc] }\n");
    assert!(message.contains("inside the workspace"), "{message}");
    let (_, message) = error_of("stages: [b]\njobs:\n  a:\n    stage: b\n    script: [x]\n    coverage: 'no group'\n");
    assert!(message.contains("needs a group"), "{message}");
    let (_, message) = error_of("stages: [build, test]\njobs:\n  a:\n    stage: build\n    needs: [b]\n    script: [x]\n  b:\n    stage: test\n    script: [x]\n");
    assert!(message.contains("later stage"), "{message}");
    let (_, message) = error_of("stages: []\njobs: {}\n");
    assert!(message.contains("at least one stage"), "{message}");
}

fn statuses(pairs: &[(&str, JobStatus)]) -> BTreeMap<String, JobStatus> {
    pairs.iter().map(|(name, status)| (name.to_string(), *status)).collect()
}

#[test]
fn jobs_start_in_stage_and_needs_order_and_are_skipped_after_a_failure() {
    let text = "stages: [build, test, deploy]\njobs:\n  build:\n    stage: build\n    script: [x]\n  \
                unit:\n    stage: test\n    needs: [build]\n    script: [x]\n  e2e:\n    stage: test\n    script: [x]\n  \
                ship:\n    stage: deploy\n    script: [x]\n";
    let pipeline = Pipeline::parse(text).unwrap();
    let plan = pipeline.plan("main", None);
    let needs: BTreeMap<String, Vec<String>> = plan.iter().map(|job| (job.name.clone(), job.needs.clone())).collect();
    assert_eq!(needs["unit"], ["build"]);
    assert_eq!(needs["ship"], ["build", "e2e", "unit"], "without needs, a job waits for every earlier stage");
    use JobStatus::*;
    let start = schedule(&statuses(&[("build", Created), ("unit", Created), ("e2e", Created), ("ship", Created)]), &needs);
    assert_eq!(start, [Step::Start("build".into())]);
    let next = schedule(&statuses(&[("build", Passed), ("unit", Created), ("e2e", Created), ("ship", Created)]), &needs);
    assert_eq!(next, [Step::Start("e2e".into()), Step::Start("unit".into())], "both test jobs run in parallel");
    let partial = schedule(&statuses(&[("build", Passed), ("unit", Passed), ("e2e", Running), ("ship", Created)]), &needs);
    assert!(partial.is_empty(), "without needs, deploy waits for the whole test stage");
    let after_failure = schedule(&statuses(&[("build", Passed), ("unit", Passed), ("e2e", Failed), ("ship", Created)]), &needs);
    assert_eq!(after_failure, [Step::Skip("ship".into())]);

    let only_unit: Vec<String> = pipeline.plan("main", Some("unit")).into_iter().map(|job| job.name).collect();
    assert_eq!(only_unit, ["build", "unit"], "a narrowed run brings what its jobs need");
    let only_test: Vec<String> = pipeline.plan("main", Some("test")).into_iter().map(|job| job.name).collect();
    assert_eq!(only_test, ["build", "e2e", "unit"], "a stage brings its jobs' needs too");

    assert_eq!(pipeline_status(&statuses(&[("build", Queued), ("unit", Created)])), PipelineStatus::Queued);
    assert_eq!(pipeline_status(&statuses(&[("build", Running), ("unit", Created)])), PipelineStatus::Running);
    assert_eq!(pipeline_status(&statuses(&[("build", Passed), ("unit", Passed)])), PipelineStatus::Passed);
    assert_eq!(pipeline_status(&statuses(&[("build", TimedOut), ("unit", Skipped)])), PipelineStatus::Failed);
    assert_eq!(pipeline_status(&statuses(&[("build", Passed), ("unit", Canceled)])), PipelineStatus::Canceled);
}

#[test]
fn durations_and_coverage_are_read_as_written() {
    assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
    assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
    assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(604_800));
    assert!(parse_duration("10x").is_err());
    assert!(parse_duration("m").is_err());
    assert!(parse_duration("5m3").is_err());
    let pattern = regex::Regex::new(r"Coverage: (\d+\.\d+)%").unwrap();
    let log = "Coverage: 12.5%\nmore tests\nCoverage: 87.25%\n";
    assert_eq!(extract_coverage(&pattern, log), Some(87.25), "the last report wins");
    assert_eq!(extract_coverage(&pattern, "no figure"), None);
}

const DEPLOYED: &str = "stages: [build]\njobs:\n  build:\n    stage: build\n    script: [x]\n    artifacts: { paths: [out/] }\n";

#[test]
fn the_deploy_section_is_checked_and_defaults_apply() {
    let text = format!(
        "{DEPLOYED}deploy:\n  from: build\n  command: python3 out/app.py\n  health: {{ path: /healthz, interval: 500ms, healthy_threshold: 1 }}\n  \
         environments:\n    staging:\n      branch: main\n      instances: 2\n      strategy: {{ type: rolling, max_surge: 1, max_unavailable: 0, min_ready: 1s }}\n    \
         production:\n      instances: 4\n      strategy: {{ type: canary, steps: [25, 50, 100], pause: 30s, max_error_rate: 0.01, max_latency: 250ms }}\n"
    );
    let deploy = Pipeline::parse(&text).unwrap().deploy.unwrap();
    assert_eq!(deploy.health.path, "/healthz");
    assert_eq!(deploy.health.interval_ms, 500);
    assert_eq!(deploy.health.unhealthy_threshold, 3, "a default");
    let staging = deploy.environment("staging");
    assert_eq!(staging.branch.as_deref(), Some("main"));
    assert_eq!(staging.strategy, Strategy::Rolling { max_surge: 1, max_unavailable: 0, min_ready_ms: 1000 });
    assert!(matches!(deploy.environment("production").strategy, Strategy::Canary { ref steps, pause_ms: 30_000, max_latency_ms: Some(250), .. } if steps == &[25, 50, 100]));
    let unnamed = deploy.environment("testing");
    assert_eq!((unnamed.instances, unnamed.strategy), (1, Strategy::default()), "an environment the file does not name rolls");

    let refuse = |deploy: &str, expected: &str| {
        let error = Pipeline::parse(&format!("{DEPLOYED}deploy:\n{deploy}")).unwrap_err();
        assert!(error.message.contains(expected), "{deploy}: {error}");
        assert_eq!(error.line, Some(7), "the deploy line");
    };
    refuse("  from: nothing\n  command: x\n", "must name a job of this file that keeps artifacts");
    refuse("  from: build\n  command: x\n  environments:\n    p:\n      instances: 0\n", "instances must be 1 to 64");
    refuse("  from: build\n  command: x\n  environments:\n    p:\n      strategy: { type: canary, steps: [50, 10] }\n", "must rise");
    refuse("  from: build\n  command: x\n  environments:\n    p:\n      strategy: { type: rolling, max_surge: 0, max_unavailable: 0 }\n", "cannot both be 0");
    refuse("  from: build\n  command: x\n  health: { path: healthz }\n", "must start with /");
    refuse("  from: build\n  command: x\n  health: { path: \"/h\\r\\nX-Injected: 1\" }\n", "control characters");
    refuse("  from: build\n  command: x\n  health: { path: \"/a b\" }\n", "control characters");
    refuse("  from: build\n  command: x\n  environments:\n    p:\n      driver: docker\n", "needs an image");
    refuse("  from: build\n  command: x\n  environments:\n    p:\n      driver: vm\n", "not one of process, docker");
    let docker = Pipeline::parse(&format!("{DEPLOYED}deploy:\n  from: build\n  command: x\n  environments:\n    p:\n      driver: docker\n      image: app:1\n")).unwrap();
    assert_eq!(docker.deploy.unwrap().environment("p").driver, crate::DriverSpec::Docker { image: "app:1".into() });
    let unknown = Pipeline::parse(&format!("{DEPLOYED}deploy:\n  from: build\n  command: x\n  environments:\n    p:\n      strategy: {{ type: yolo }}\n")).unwrap_err();
    assert!(unknown.message.contains("yolo"), "{unknown}");
}
