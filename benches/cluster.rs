//! `bench-cluster`: Wharf as a three-node cluster against a one-node Wharf, measured in the
//! same run, and the cost of rebalancing.
//!
//! - Browsing reads through the front when the repository lives on another process (front →
//!   owner over `ractor_cluster`) against the same reads on `wharf dev` (front and actor in one
//!   process).
//! - A fourth node joining a cluster holding many repositories: how many move, how long until
//!   placement is satisfied; then draining a node.
//!
//! Run it with `scripts/bench-cluster.sh` (release build). It prints Markdown tables.

use std::time::{Duration, Instant};

use wharf_tests::cluster::LocalCluster;
use wharf_tests::{git_ok, Wharf};

/// Timed repetitions of each read.
const READS: usize = 300;
/// Repositories in the rebalancing runs.
const REPOS: usize = 300;

fn main() {
    let work = tempfile::tempdir().expect("temp dir");
    let source = work.path().join("source");
    make_source(&source);

    eprintln!("bench: one-node baseline");
    let dev_dir = work.path().join("dev");
    let dev = Wharf::start(&dev_dir);
    dev.create_repo("bench/repo");
    git_ok(&source, &["push", "-q", &dev.push_url("bench/repo"), "main"]);

    eprintln!("bench: three-node cluster");
    let mut cluster = LocalCluster::start(3);
    let created = cluster.front.create_repo("bench/repo");
    git_ok(&source, &["push", "-q", &cluster.front.push_url("bench/repo"), "main"]);

    let http = reqwest::blocking::Client::new();
    let reads = [
        ("list a directory (tree)", "/api/v1/repos/bench/repo/tree?ref=main&path=dir03"),
        ("read a file (blob)", "/api/v1/repos/bench/repo/blob?ref=main&path=dir03/file00023.txt"),
        ("history page of 30 (log)", "/api/v1/repos/bench/repo/commits?limit=30"),
        ("list branches", "/api/v1/repos/bench/repo/branches"),
    ];
    println!();
    println!("Reads through the front, {READS} sequential each; in the cluster the repository is on node {} and the front is a separate process.", created["node"]);
    println!();
    println!("| Read | one node p50 | p99 | 3-node cluster p50 | p99 |");
    println!("|---|---|---|---|---|");
    for (name, path) in reads {
        let one = time_each(READS, || get(&http, &format!("{}{path}", dev.url)));
        let three = time_each(READS, || get(&http, &format!("{}{path}", cluster.front.url)));
        println!("| {name} | {} | {} | {} | {} |", fmt(one.0), fmt(one.1), fmt(three.0), fmt(three.1));
    }

    eprintln!("bench: rebalancing {REPOS} repositories");
    let small = work.path().join("small");
    std::fs::create_dir_all(&small).unwrap();
    std::fs::write(small.join("README.md"), "small\n").unwrap();
    git_ok(&small, &["init", "-q"]);
    git_ok(&small, &["add", "."]);
    git_ok(&small, &["commit", "-qm", "small"]);
    for i in 0..REPOS {
        let name = format!("fleet/r{i}");
        cluster.front.create_repo(&name);
        git_ok(&small, &["push", "-q", &cluster.front.push_url(&name), "main"]);
    }
    let before = owners(&cluster.front);
    let started = Instant::now();
    let four = cluster.add_node();
    wait_balanced(&cluster.front);
    let join_time = started.elapsed();
    let after = owners(&cluster.front);
    let moved = before.iter().filter(|(name, node)| after.get(*name) != Some(node)).count();
    let to_new = before.iter().filter(|(name, node)| after.get(*name) != Some(node) && after[*name] == four).count();
    let counts: Vec<usize> = (1..=4).map(|n| after.values().filter(|v| **v == n).count()).collect();
    let mean = after.len() as f64 / 4.0;
    let max = *counts.iter().max().unwrap() as f64;

    let started = Instant::now();
    let drain = cluster.front.post("/api/v1/cluster/nodes/2/drain", serde_json::json!({}));
    assert_eq!(drain.status, 200);
    let on_two = after.values().filter(|v| **v == 2).count();
    wharf_tests::wait_until("node 2 drained", Duration::from_secs(600), || {
        let status = cluster.front.get("/api/v1/cluster");
        status.json["nodes"].as_array().unwrap().iter().any(|n| n["id"] == 2 && n["state"] == "drained")
    });
    let drain_time = started.elapsed();

    println!();
    println!("| Rebalancing ({} repositories, each with one small commit; 3 nodes, then 4) | figure |", after.len());
    println!("|---|---|");
    println!("| node 4 joins: repositories moved | {moved} ({:.1}%), {to_new} of them to node 4 |", moved as f64 * 100.0 / after.len() as f64);
    println!("| node 4 joins: time until placement is satisfied | {:.1} s ({:.0} ms per move) |", join_time.as_secs_f64(), join_time.as_millis() as f64 / moved.max(1) as f64);
    println!("| after the join: largest node / mean | {:.2} (counts {counts:?}) |", max / mean);
    println!("| drain node 2: {on_two} repositories moved in | {:.1} s ({:.0} ms per move) |", drain_time.as_secs_f64(), drain_time.as_millis() as f64 / on_two.max(1) as f64);
}

fn owners(front: &Wharf) -> std::collections::BTreeMap<String, u64> {
    front.get("/api/v1/repos").json["repos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["name"].as_str().unwrap().to_owned(), r["node"].as_u64().unwrap()))
        .collect()
}

fn wait_balanced(front: &Wharf) {
    wharf_tests::wait_until("the cluster is balanced", Duration::from_secs(600), || {
        front.get("/api/v1/cluster").json["balanced"] == true
    });
}

fn get(http: &reqwest::blocking::Client, url: &str) {
    let response = http.get(url).send().expect("request");
    assert!(response.status().is_success(), "{url}: {}", response.status());
    drop(response.bytes().expect("body"));
}

/// p50 and p99 of `times` runs of `work`.
fn time_each(times: usize, mut work: impl FnMut()) -> (Duration, Duration) {
    work();
    let mut samples: Vec<Duration> = (0..times)
        .map(|_| {
            let start = Instant::now();
            work();
            start.elapsed()
        })
        .collect();
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    (at(0.5), at(0.99))
}

fn fmt(duration: Duration) -> String {
    format!("{} µs", duration.as_micros())
}

/// A small repository: 40 directories of 25 files, one commit.
fn make_source(dir: &std::path::Path) {
    for d in 0..40 {
        let sub = dir.join(format!("dir{d:02}"));
        std::fs::create_dir_all(&sub).unwrap();
        for f in 0..25 {
            std::fs::write(sub.join(format!("file{f:05}.txt")), format!("file {f} in {d}\n").repeat(20)).unwrap();
        }
    }
    git_ok(dir, &["init", "-q"]);
    git_ok(dir, &["add", "."]);
    git_ok(dir, &["commit", "-qm", "bench"]);
}
