//! `bench-one-node`: Wharf on one node against its baselines, measured in the same run.
//!
//! - Browsing reads (directory listing, file, history page) through the HTTP front and the
//!   repository actor, against the same reads done by direct gix in this process (`wharf-git`
//!   on the very repository Wharf stores) and by the `git` CLI (`ls-tree`, `cat-file`, `log`).
//! - Clone and push of the same repository through Wharf's smart HTTP, against `git clone` /
//!   `git push` over `file://`.
//!
//! Run it with `scripts/bench-one-node.sh` (release build). It prints a Markdown table.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use wharf_git::GitRepo;
use wharf_tests::{git_ok, Wharf};

/// Files in the synthetic repository, spread over directories.
const FILES: usize = 2_000;
/// Commits in its history, each changing a few files.
const COMMITS: usize = 300;
/// Timed repetitions of each browsing read.
const READS: usize = 300;
/// Timed repetitions of each clone and push.
const TRANSFERS: usize = 5;

fn main() {
    let work = tempfile::tempdir().expect("temp dir");
    let source = work.path().join("source");
    eprintln!("bench: building a repository of {FILES} files and {COMMITS} commits");
    build_repository(&source);
    let pack_size = dir_size(&source.join(".git/objects"));

    let data = work.path().join("wharf-data");
    let wharf = Wharf::start(&data);
    wharf.create_repo("bench/repo");
    git_ok(&source, &["push", "-q", &wharf.push_url("bench/repo"), "main"]);
    let stored = data.join("repos").join(format!("{:016x}.git", 1));
    assert!(stored.exists(), "Wharf stores repository 1 at {}", stored.display());

    let mut rows = Vec::new();
    let file = "dir07/file00147.txt";
    let http = reqwest::blocking::Client::new();
    let gix = GitRepo::open(&stored, "bench/repo").expect("open with gix");

    eprintln!("bench: browsing reads, {READS} each");
    rows.push(compare(
        "list root directory (tree)",
        || get(&http, &format!("{}/api/v1/repos/bench/repo/tree?ref=main", wharf.url)),
        || drop(gix.tree(Some("main"), "", 0, 100).expect("tree")),
        || drop(git_ok(&stored, &["ls-tree", "-l", "main"])),
    ));
    rows.push(compare(
        "read one file (blob)",
        || get(&http, &format!("{}/api/v1/repos/bench/repo/blob?ref=main&path={file}", wharf.url)),
        || drop(gix.blob(Some("main"), file).expect("blob")),
        || drop(git_ok(&stored, &["cat-file", "-p", &format!("main:{file}")])),
    ));
    rows.push(compare(
        "history page of 30 (log)",
        || get(&http, &format!("{}/api/v1/repos/bench/repo/commits?ref=main&limit=30", wharf.url)),
        || drop(gix.log(Some("main"), None, 30, None).expect("log")),
        || drop(git_ok(&stored, &["log", "-30", "--format=%H %P %an %ae %at %s", "main"])),
    ));

    eprintln!("bench: clone and push, {TRANSFERS} each");
    let bare = work.path().join("baseline.git");
    git_ok(work.path(), &["clone", "-q", "--bare", &format!("file://{}", source.display()), bare.to_str().unwrap()]);
    let mut n = 0;
    let clone_wharf = time_each(TRANSFERS, || {
        n += 1;
        let target = work.path().join(format!("wharf-clone-{n}"));
        git_ok(work.path(), &["clone", "-q", &wharf.clone_url("bench/repo"), target.to_str().unwrap()]);
    });
    let clone_git = time_each(TRANSFERS, || {
        n += 1;
        let target = work.path().join(format!("file-clone-{n}"));
        git_ok(work.path(), &["clone", "-q", &format!("file://{}", bare.display()), target.to_str().unwrap()]);
    });
    let push_wharf = time_each(TRANSFERS, || {
        n += 1;
        let name = format!("bench/push{n}");
        wharf.create_repo(&name);
        git_ok(&source, &["push", "-q", &wharf.push_url(&name), "main"]);
    });
    let push_git = time_each(TRANSFERS, || {
        n += 1;
        let target = work.path().join(format!("push-target-{n}.git"));
        git_ok(work.path(), &["init", "-q", "--bare", target.to_str().unwrap()]);
        git_ok(&source, &["push", "-q", &format!("file://{}", target.display()), "main"]);
    });

    println!();
    println!("Repository: {FILES} files, {COMMITS} commits, {:.1} MiB of objects. Two cores, release build.", pack_size as f64 / 1048576.0);
    println!();
    println!("| Read ({READS} sequential) | Wharf HTTP p50 | p99 | direct gix p50 | p99 | git CLI p50 | p99 |");
    println!("|---|---|---|---|---|---|---|");
    for (name, wharf, gix, cli) in &rows {
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} |",
            fmt(wharf.p50),
            fmt(wharf.p99),
            fmt(gix.p50),
            fmt(gix.p99),
            fmt(cli.p50),
            fmt(cli.p99)
        );
    }
    println!();
    println!("| Transfer ({TRANSFERS} runs) | Wharf smart HTTP p50 | git over file:// p50 |");
    println!("|---|---|---|");
    println!("| clone | {} | {} |", fmt(clone_wharf.p50), fmt(clone_git.p50));
    println!("| push (new repository) | {} | {} |", fmt(push_wharf.p50), fmt(push_git.p50));
}

type Row = (&'static str, Stats, Stats, Stats);

fn compare(name: &'static str, mut wharf: impl FnMut(), mut gix: impl FnMut(), mut cli: impl FnMut()) -> Row {
    // One untimed round warms caches and activates the repository actor.
    wharf();
    gix();
    cli();
    (name, time_each(READS, wharf), time_each(READS, gix), time_each(READS, cli))
}

fn get(http: &reqwest::blocking::Client, url: &str) {
    let response = http.get(url).send().expect("request");
    assert!(response.status().is_success(), "{url}: {}", response.status());
    drop(response.bytes().expect("body"));
}

struct Stats {
    p50: Duration,
    p99: Duration,
}

fn time_each(times: usize, mut work: impl FnMut()) -> Stats {
    let mut samples: Vec<Duration> = (0..times)
        .map(|_| {
            let start = Instant::now();
            work();
            start.elapsed()
        })
        .collect();
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    Stats {
        p50: at(0.50),
        p99: at(0.99),
    }
}

fn fmt(duration: Duration) -> String {
    let micros = duration.as_micros();
    if micros < 10_000 {
        format!("{micros} µs")
    } else {
        format!("{:.1} ms", duration.as_secs_f64() * 1000.0)
    }
}

/// A repository of text files in 20 directories, built with `git fast-import` for speed.
fn build_repository(dir: &Path) {
    std::fs::create_dir_all(dir).expect("source dir");
    git_ok(dir, &["init", "-q"]);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut stream = String::new();
    let path = |i: usize| format!("dir{:02}/file{:05}.txt", i % 20, i);
    for commit in 0..COMMITS {
        let message = format!("change {commit}");
        stream.push_str(&format!(
            "commit refs/heads/main\ncommitter Bench <bench@example.com> {} +0000\ndata {}\n{message}\n",
            1_700_000_000 + commit * 60,
            message.len()
        ));
        let files: Vec<usize> = if commit == 0 { (0..FILES).collect() } else { (0..5).map(|_| rng.gen_range(0..FILES)).collect() };
        for file in files {
            let lines: String = (0..40).map(|line| format!("line {line} of file {file} at commit {commit}\n")).collect();
            stream.push_str(&format!("M 100644 inline {}\ndata {}\n{lines}\n", path(file), lines.len()));
        }
    }
    let mut child = Command::new("git")
        .args(["fast-import", "--quiet"])
        .current_dir(dir)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("git fast-import");
    {
        use std::io::Write;
        child.stdin.take().expect("stdin").write_all(stream.as_bytes()).expect("feed fast-import");
    }
    assert!(child.wait().expect("fast-import").success());
    git_ok(dir, &["checkout", "-q", "main"]);
    git_ok(dir, &["gc", "-q"]);
}

fn dir_size(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| if e.path().is_dir() { dir_size(&e.path()) } else { e.metadata().map(|m| m.len()).unwrap_or(0) })
                .sum()
        })
        .unwrap_or(0)
}
