//! `bench-pipelines`: how fast pushes turn into running jobs, and how many trivial jobs the
//! runners get through, on one node (`wharf dev`) and on a three-node cluster, in the same run.
//!
//! - Push to first job: for each of [`PUSHES`] pushes, the time from the push's record (the
//!   `time_ms` of its event, taken when the node proposes it to Raft) to the `started_ms` of the
//!   pipeline's first job (both clocks are this machine's).
//! - Throughput: one pipeline of [`JOBS`] jobs in one stage, each `true`; jobs completed per
//!   minute from the first start to the last finish. Every node has the default two runner
//!   slots, so three nodes have three times the slots.
//! - The sandbox's cost: one node is measured twice, with jobs unconfined (`--sandbox none`,
//!   the baseline) and in bubblewrap (the default).
//!
//! Run it with `scripts/bench-pipelines.sh` (release build). It prints a Markdown table.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use wharf_tests::cluster::LocalCluster;
use wharf_tests::{git_ok, wait_until, Wharf};

/// Pushes timed for the push-to-first-job latency.
const PUSHES: usize = 50;
/// Trivial jobs in the throughput pipeline.
const JOBS: usize = 100;

fn main() {
    let work = tempfile::tempdir().expect("temp dir");
    eprintln!("bench: one node, jobs unconfined (the baseline of the sandbox's cost)");
    let bare = {
        let dev = Wharf::start_with(&work.path().join("bare"), &["--sandbox", "none"]);
        measure(&dev, &work.path().join("bare-work"))
    };
    eprintln!("bench: one node, jobs in bubblewrap");
    let one = {
        let dev = Wharf::start(&work.path().join("dev"));
        measure(&dev, &work.path().join("one"))
    };
    eprintln!("bench: three-node cluster");
    let cluster = LocalCluster::start(3);
    let three = measure(&cluster.front, &work.path().join("three"));

    println!();
    println!("| | one node, unconfined (baseline) | one node, bubblewrap | 3-node cluster, bubblewrap |");
    println!("|---|---|---|---|");
    let row = |what: String, value: &dyn Fn(&Figures) -> String| {
        println!("| {what} | {} | {} | {} |", value(&bare), value(&one), value(&three));
    };
    row(format!("push recorded → first job started, p50 ({PUSHES} pushes)"), &|f| format!("{} ms", f.latency_p50));
    row("push recorded → first job started, p99".into(), &|f| format!("{} ms", f.latency_p99));
    row(format!("{JOBS} trivial jobs: jobs completed per minute"), &|f| format!("{:.0}", f.jobs_per_minute));
    row(format!("{JOBS} trivial jobs: nodes that ran them"), &|f| f.nodes_used.to_string());
}

struct Figures {
    latency_p50: u64,
    latency_p99: u64,
    jobs_per_minute: f64,
    nodes_used: usize,
}

fn measure(wharf: &Wharf, work: &std::path::Path) -> Figures {
    wharf.create_repo("bench/latency");
    std::fs::create_dir_all(work).unwrap();
    git_ok(work, &["init", "-q"]);
    std::fs::write(work.join(".wharf.yml"), "stages: [test]\njobs:\n  quick:\n    stage: test\n    script: [\"true\"]\n").unwrap();
    let mut latencies = Vec::with_capacity(PUSHES);
    for i in 0..PUSHES {
        std::fs::write(work.join("counter"), i.to_string()).unwrap();
        git_ok(work, &["add", "."]);
        git_ok(work, &["commit", "-qm", &format!("push {i}")]);
        git_ok(work, &["push", "-q", &wharf.push_url("bench/latency"), "HEAD:main"]);
        let returned = now_ms();
        let sha = git_ok(work, &["rev-parse", "HEAD"]).trim().to_owned();
        let started = first_job_started(wharf, "bench/latency", &sha);
        // From the push's record (its Raft commit, before git's answer is released) to the job's
        // start: the job often starts before `git push` has returned, so that is no baseline.
        let recorded = wharf.get(&format!("/api/v1/repos/bench/latency/events?after={i}")).json["events"][0]["time_ms"]
            .as_u64()
            .unwrap_or(returned);
        latencies.push(started.saturating_sub(recorded));
    }
    latencies.sort_unstable();

    wharf.create_repo("bench/throughput");
    let many = work.join("many");
    std::fs::create_dir_all(&many).unwrap();
    let mut file = String::from("stages: [test]\njobs:\n");
    for j in 0..JOBS {
        file.push_str(&format!("  job{j:03}:\n    stage: test\n    script: [\"true\"]\n"));
    }
    std::fs::write(many.join(".wharf.yml"), file).unwrap();
    git_ok(&many, &["init", "-q"]);
    git_ok(&many, &["add", "."]);
    git_ok(&many, &["commit", "-qm", "many jobs"]);
    git_ok(&many, &["push", "-q", &wharf.push_url("bench/throughput"), "HEAD:main"]);
    let pipeline = finished(wharf, "bench/throughput");
    let jobs = pipeline["jobs"].as_array().unwrap();
    assert!(jobs.iter().all(|j| j["status"] == "passed"), "every trivial job passes");
    let first = jobs.iter().filter_map(|j| j["started_ms"].as_u64()).min().unwrap();
    let last = jobs.iter().filter_map(|j| j["finished_ms"].as_u64()).max().unwrap();
    let nodes: std::collections::BTreeSet<u64> = jobs.iter().filter_map(|j| j["node"].as_u64()).collect();
    Figures {
        latency_p50: latencies[latencies.len() / 2],
        latency_p99: latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)],
        jobs_per_minute: JOBS as f64 * 60_000.0 / (last - first).max(1) as f64,
        nodes_used: nodes.len(),
    }
}

/// When the first job of the pipeline for `sha` started.
fn first_job_started(wharf: &Wharf, repo: &str, sha: &str) -> u64 {
    let mut started = None;
    wait_until("the pushed commit's first job starts", Duration::from_secs(60), || {
        let listed = wharf.get(&format!("/api/v1/repos/{repo}/pipelines")).json;
        let Some(id) = listed["pipelines"].as_array().into_iter().flatten().find(|p| p["sha"] == sha).and_then(|p| p["id"].as_u64()) else {
            return false;
        };
        let pipeline = wharf.get(&format!("/api/v1/pipelines/{id}")).json;
        started = pipeline["jobs"].as_array().into_iter().flatten().filter_map(|j| j["started_ms"].as_u64()).min();
        started.is_some()
    });
    started.unwrap()
}

fn finished(wharf: &Wharf, repo: &str) -> Value {
    let mut pipeline = Value::Null;
    wait_until("the pipeline finishes", Duration::from_secs(600), || {
        let Some(id) = wharf.get(&format!("/api/v1/repos/{repo}/pipelines")).json["pipelines"][0]["id"].as_u64() else {
            return false;
        };
        pipeline = wharf.get(&format!("/api/v1/pipelines/{id}")).json;
        !matches!(pipeline["status"].as_str(), Some("queued" | "running"))
    });
    pipeline
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
