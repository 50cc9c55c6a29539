//! `bench-meta`: what the metadata store costs as its history grows.
//!
//! Two measurements, each against its own baseline from the same run:
//!
//! 1. **The store alone.** A fresh process opens an empty store (baseline), another writes
//!    1,000 repositories and then 1,000,000 small records (push events in pushes of 500 ref
//!    updates, and jobs in pipelines of 50), and a third reopens the store (the restart). Each
//!    prints its resident memory; the writer prints the apply rate, and every phase the p50 and
//!    p99 of a lookup by id (a job, a repository) and by name (a repository).
//! 2. **`wharf dev` from outside**, as the issue measured it: resident memory of an empty
//!    `wharf dev`, after 10,000 CI variables of 4 KiB (40 MB) through the API, and after a
//!    restart.
//!
//! Run it with `scripts/bench-meta.sh` (release build). It prints Markdown tables.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use wharf_meta::{CiCommand, Command, Meta, MetaConfig, RefUpdate};
use wharf_proto::{NodeId, RepoId, RepoName};
use wharf_tests::{rss_mib, Wharf};

const REPOS: u64 = 1_000;
const EVENTS: u64 = 700_000;
const UPDATES_PER_PUSH: u64 = 500;
const JOBS: u64 = 300_000;
const JOBS_PER_PIPELINE: u64 = 50;
/// Writes in flight at once: Raft batches them into fewer log flushes.
const IN_FLIGHT: usize = 16;
const LOOKUPS: usize = 2_000;
const VARIABLES: usize = 10_000;

fn main() {
    let mut args = std::env::args().skip(1);
    match (args.next().as_deref(), args.next()) {
        (Some("open"), Some(dir)) => child(Path::new(&dir), false),
        (Some("write"), Some(dir)) => child(Path::new(&dir), true),
        (None, _) => parent(),
        _ => {
            eprintln!("usage: bench-meta [open DIR | write DIR]");
            std::process::exit(2);
        }
    }
}

fn parent() {
    let work = tempfile::tempdir().expect("temp dir");
    let store = work.path().join("store");
    let me = std::env::current_exe().expect("own path");
    let run = |mode: &str| -> serde_json::Value {
        eprintln!("bench: {mode}");
        let out = std::process::Command::new(&me).arg(mode).arg(&store).output().expect("run child");
        assert!(out.status.success(), "{mode}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("child's report")
    };
    let empty = run("open");
    let written = run("write");
    let restarted = run("open");

    println!("### The metadata store: {REPOS} repositories, {EVENTS} push events, {JOBS} jobs\n");
    println!("| phase | resident memory | lookup by id p50 / p99 | lookup by name p50 / p99 |");
    println!("|---|---|---|---|");
    for (phase, report) in [
        ("empty store (baseline)", &empty),
        ("after the repositories, before the records", &written["start"]),
        ("after the records", &written["end"]),
        ("after a restart", &restarted),
    ] {
        println!(
            "| {phase} | {:.1} MiB | {} | {} |",
            report["rss_mib"].as_f64().unwrap_or(0.0),
            pair(&report["by_id"]),
            pair(&report["by_name"]),
        );
    }
    println!(
        "\nApply rate: {:.0} records/s ({} records in {:.1} s, {IN_FLIGHT} writes in flight). Memory after the restart: {:+.1} MiB against the empty store.\n",
        written["records_per_s"].as_f64().unwrap_or(0.0),
        EVENTS + JOBS,
        written["write_s"].as_f64().unwrap_or(0.0),
        restarted["rss_mib"].as_f64().unwrap_or(0.0) - empty["rss_mib"].as_f64().unwrap_or(0.0),
    );

    dev_variables(work.path());
}

fn pair(value: &serde_json::Value) -> String {
    match (value["p50_us"].as_f64(), value["p99_us"].as_f64()) {
        (Some(p50), Some(p99)) => format!("{p50:.0} µs / {p99:.0} µs"),
        _ => "–".into(),
    }
}

/// One phase in a process of its own, so its memory is its own: opens the store, writes if
/// asked, looks records up, and prints a JSON report.
fn child(dir: &Path, write: bool) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let report = runtime.block_on(async {
        let meta = Meta::open(dir, NodeId(1), "127.0.0.1:1".into(), MetaConfig::default(), None)
            .await
            .expect("open the store");
        meta.bootstrap_single().await.expect("lead");
        let report = if write { write_history(&meta).await } else { lookups(&meta) };
        meta.shutdown().await.expect("shut down");
        report
    });
    println!("{report}");
}

async fn write_history(meta: &Meta) -> serde_json::Value {
    let repos: Vec<Command> = (0..REPOS)
        .map(|i| Command::CreateRepo {
            name: RepoName::parse(&format!("bench/repo-{i:04}")).expect("name"),
            node: NodeId(1),
            now_ms: 1,
        })
        .collect();
    write_all(meta, repos).await;
    // One pipeline so that job lookups have something to find at the start.
    write_all(meta, pipelines(0..1)).await;
    let start = lookups(meta);

    let begun = Instant::now();
    let pushes = (0..EVENTS / UPDATES_PER_PUSH).map(|push| Command::RecordPush {
        push_id: format!("bench-{push}"),
        repo: RepoId(push % REPOS + 1),
        updates: (0..UPDATES_PER_PUSH)
            .map(|u| RefUpdate {
                ref_name: format!("refs/heads/b{u}"),
                old: None,
                new: Some(format!("{push:020}{u:020}")),
            })
            .collect(),
        pusher: "bench".into(),
        now_ms: push,
    });
    write_all(meta, pushes.chain(pipelines(1..JOBS / JOBS_PER_PIPELINE)).collect()).await;
    let write_s = begun.elapsed().as_secs_f64();
    let end = lookups(meta);
    json!({
        "start": start,
        "end": end,
        "write_s": write_s,
        "records_per_s": (EVENTS + JOBS) as f64 / write_s,
    })
}

fn pipelines(range: std::ops::Range<u64>) -> Vec<Command> {
    range
        .map(|p| {
            Command::Ci(CiCommand::CreatePipeline {
                repo: RepoId(p % REPOS + 1),
                ref_name: "refs/heads/main".into(),
                sha: format!("{p:040}"),
                jobs: (0..JOBS_PER_PIPELINE)
                    .map(|j| wharf_ci::PlannedJob {
                        name: format!("job-{j}"),
                        stage: "test".into(),
                        needs: Vec::new(),
                        retries: 0,
                    })
                    .collect(),
                error: None,
                now_ms: p,
            })
        })
        .collect()
}

async fn write_all(meta: &Meta, commands: Vec<Command>) {
    use futures::StreamExt;
    futures::stream::iter(commands)
        .map(|command| async move { meta.write(command).await.expect("write accepted") })
        .buffer_unordered(IN_FLIGHT)
        .for_each(|_| async {})
        .await;
}

/// Memory now, and lookup latencies by id and by name over what the store holds.
fn lookups(meta: &Meta) -> serde_json::Value {
    let directory = meta.directory();
    let repos = directory.repos().len() as u64;
    let mut by_id = Vec::new();
    let mut by_name = Vec::new();
    // Jobs are numbered from 1: either every pipeline was written, or only the first.
    let jobs = [JOBS, JOBS_PER_PIPELINE].into_iter().find(|n| directory.job(*n).is_some()).unwrap_or(1);
    for i in 0..LOOKUPS as u64 {
        if repos == 0 {
            break;
        }
        let job = (i * 7919) % jobs + 1;
        let repo = (i * 104_729) % repos;
        let started = Instant::now();
        let found = directory.job(job).is_some() && directory.repo_by_id(RepoId(repo + 1)).is_some();
        by_id.push(started.elapsed());
        assert!(found, "job {job} and repository {} exist", repo + 1);
        let name = RepoName::parse(&format!("bench/repo-{repo:04}")).expect("name");
        let started = Instant::now();
        assert!(directory.repo(&name).is_some(), "{name} exists");
        by_name.push(started.elapsed());
    }
    json!({
        "rss_mib": rss_mib(std::process::id()),
        "by_id": percentiles(by_id),
        "by_name": percentiles(by_name),
    })
}

fn percentiles(mut samples: Vec<Duration>) -> serde_json::Value {
    if samples.is_empty() {
        return serde_json::Value::Null;
    }
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    json!({ "p50_us": at(0.5), "p99_us": at(0.99) })
}

/// `wharf dev` measured from outside: 10,000 variables of 4 KiB through the API.
fn dev_variables(work: &Path) {
    let data = work.join("dev");
    let mut wharf = Wharf::start(&data);
    wharf.create_repo("bench/vars");
    let settle = |wharf: &Wharf| {
        // Let start-up work finish before reading memory.
        std::thread::sleep(Duration::from_secs(2));
        rss_mib(wharf.pid().expect("running"))
    };
    let empty = settle(&wharf);
    let value = "v".repeat(4096);
    let begun = Instant::now();
    for i in 0..VARIABLES {
        let answer = wharf.post(
            "/api/v1/repos/bench/vars/variables",
            json!({ "name": format!("V{i:05}"), "value": value }),
        );
        assert!(answer.status < 300, "variable {i}: {}", answer.status);
    }
    let write_s = begun.elapsed().as_secs_f64();
    let full = settle(&wharf);
    wharf.stop();
    let wharf = Wharf::start(&data);
    let restarted = settle(&wharf);
    let listed = wharf.request("GET", "/api/v1/repos/bench/vars/variables", None, Some(&wharf.token));
    assert_eq!(listed.json["variables"].as_array().map(Vec::len), Some(VARIABLES));

    println!("### `wharf dev`: {VARIABLES} variables of 4 KiB through the API\n");
    println!("| phase | resident memory |");
    println!("|---|---|");
    println!("| empty (baseline) | {empty:.1} MiB |");
    println!("| after the variables ({write_s:.1} s to write) | {full:.1} MiB |");
    println!("| after a restart | {restarted:.1} MiB ({:+.1} MiB against empty) |", restarted - empty);
}
