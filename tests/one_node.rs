//! Wharf on one node, as a user sees it: the real binary, driven over HTTP and with `git`.

use std::path::Path;

use base64::Engine;
use rand::RngCore;
use serde_json::{json, Value};
use wharf_tests::{files_under, git, git_ok, Wharf};

/// A working tree with nested folders, an executable and a binary file, committed on `main`.
fn make_project(dir: &Path) -> String {
    std::fs::create_dir_all(dir.join("src/deep/er")).unwrap();
    std::fs::create_dir_all(dir.join("assets")).unwrap();
    std::fs::write(dir.join("README.md"), "# demo\n").unwrap();
    std::fs::write(dir.join("src/main.rs"), "fn main() {}\n").unwrap();
    std::fs::write(dir.join("src/deep/er/mod.rs"), "pub mod x;\n").unwrap();
    // Over git's 1 MiB post buffer, so the push travels as a chunked request body.
    let mut binary = vec![0u8; 1_500_000];
    rand::thread_rng().fill_bytes(&mut binary);
    std::fs::write(dir.join("assets/blob.bin"), &binary).unwrap();
    git_ok(dir, &["init", "-q"]);
    git_ok(dir, &["add", "."]);
    git_ok(dir, &["commit", "-q", "-m", "first"]);
    git_ok(dir, &["rev-parse", "HEAD"]).trim().to_owned()
}

#[test]
fn push_then_clone_gives_back_the_same_bytes_and_records_the_push() {
    let data = tempfile::tempdir().unwrap();
    let wharf = Wharf::start(data.path());
    let created = wharf.create_repo("acme/app");
    assert_eq!(created["node"], 1);

    let work = tempfile::tempdir().unwrap();
    let head = make_project(work.path());
    git_ok(work.path(), &["push", "-q", &wharf.push_url("acme/app"), "main"]);

    let clone = tempfile::tempdir().unwrap();
    git_ok(clone.path(), &["clone", "-q", &wharf.clone_url("acme/app"), "copy"]);
    let copy = clone.path().join("copy");
    assert_eq!(git_ok(&copy, &["rev-parse", "HEAD"]).trim(), head);
    assert_eq!(files_under(&copy), files_under(work.path()), "the clone has the same files, byte for byte");

    let shown = wharf.get("/api/v1/repos/acme/app");
    assert_eq!(shown.status, 200);
    assert_eq!(shown.json["default_branch"], "main");
    assert_eq!(shown.json["node"], 1);
    assert!(shown.json["size_bytes"].as_u64().unwrap() > 1_500_000);

    let events = wharf.get("/api/v1/repos/acme/app/events");
    let events = events.json["events"].as_array().unwrap().clone();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["ref_name"], "refs/heads/main");
    assert_eq!(events[0]["old"], serde_json::Value::Null);
    assert_eq!(events[0]["new"], head);
    assert_eq!(events[0]["pusher"], "admin");

    // A second push moves the branch; a fetch sees it.
    std::fs::write(work.path().join("src/main.rs"), "fn main() { println!(\"hi\"); }\n").unwrap();
    git_ok(work.path(), &["commit", "-qam", "second"]);
    git_ok(work.path(), &["push", "-q", &wharf.push_url("acme/app"), "main"]);
    git_ok(&copy, &["pull", "-q", "--ff-only"]);
    assert_eq!(files_under(&copy), files_under(work.path()));
    let events = wharf.get("/api/v1/repos/acme/app/events?after=1");
    assert_eq!(events.json["events"][0]["seq"], 2);
    assert_eq!(events.json["events"][0]["old"], head);
}

#[test]
fn browsing_api_reads_what_was_pushed() {
    let data = tempfile::tempdir().unwrap();
    let wharf = Wharf::start(data.path());
    wharf.create_repo("acme/browse");
    let work = tempfile::tempdir().unwrap();
    let head = make_project(work.path());
    git_ok(work.path(), &["push", "-q", &wharf.push_url("acme/browse"), "main"]);

    let root = wharf.get("/api/v1/repos/acme/browse/tree?ref=main");
    assert_eq!(root.status, 200, "{root:?}");
    let names: Vec<_> = root.json["entries"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap().to_owned()).collect();
    assert_eq!(names, ["assets", "src", "README.md"]);
    let page = wharf.get("/api/v1/repos/acme/browse/tree?path=src&limit=1");
    assert_eq!(page.json["entries"].as_array().unwrap().len(), 1);
    assert_eq!(page.json["total"], 2);
    assert_eq!(page.json["next_offset"], 1);

    let text = wharf.get("/api/v1/repos/acme/browse/blob?path=src/deep/er/mod.rs");
    assert_eq!((text.json["encoding"].as_str(), text.json["content"].as_str()), (Some("utf-8"), Some("pub mod x;\n")));
    let binary = wharf.get("/api/v1/repos/acme/browse/blob?path=assets/blob.bin");
    assert_eq!(binary.json["encoding"], "base64");
    let decoded = base64::engine::general_purpose::STANDARD.decode(binary.json["content"].as_str().unwrap()).unwrap();
    assert_eq!(decoded, std::fs::read(work.path().join("assets/blob.bin")).unwrap());
    let raw = wharf.get("/api/v1/repos/acme/browse/raw?path=assets/blob.bin");
    assert_eq!(raw.bytes, decoded);

    let log = wharf.get("/api/v1/repos/acme/browse/commits?ref=main&limit=10");
    assert_eq!(log.json["commits"][0]["id"], head);
    let commit = wharf.get(&format!("/api/v1/repos/acme/browse/commits/{head}"));
    assert_eq!(commit.json["files"].as_array().unwrap().len(), 4);
    assert_eq!(commit.json["additions"], 3, "three one-line text files; the binary counts no lines");

    // The seed API, with query parameters and with a JSON body.
    let details = wharf.get("/api/v1/repo/details?repo_url=http://example.com/acme/browse.git");
    assert_eq!(details.status, 200, "{details:?}");
    assert_eq!(details.json, json!({"repo_name": "browse", "owner": "acme", "branches": ["main"]}));
    let details = wharf.request("GET", "/api/v1/repo/details", Some(br#"{"repo_url":"acme/browse"}"#.to_vec()), None);
    assert_eq!(details.json["branches"], json!(["main"]));
    let branch = wharf.post("/api/v1/repo/branch", json!({"repo_url": "acme/browse", "branch_name": "dev"}));
    assert_eq!(branch.status, 201, "{branch:?}");
    assert_eq!(branch.json["message"], "Branch created successfully");
    assert_eq!(branch.json["branch_name"], "dev");
    let again = wharf.post("/api/v1/repo/branch", json!({"repo_url": "acme/browse", "branch_name": "dev"}));
    assert_eq!((again.status, again.error_code()), (409, "ref_exists"));

    // The branch is visible to git too.
    let remote = git_ok(work.path(), &["ls-remote", &wharf.clone_url("acme/browse")]);
    assert!(remote.contains(&format!("{head}\trefs/heads/dev")), "{remote}");
}

fn commit_via_api(wharf: &Wharf, repo: &str, branch: &str, parent: Option<&str>, actions: serde_json::Value) -> wharf_tests::Answer {
    wharf.post(
        &format!("/api/v1/repos/{repo}/commits"),
        json!({"branch": branch, "expected_parent": parent, "message": format!("edit {branch}"), "actions": actions}),
    )
}

fn branch_tip(wharf: &Wharf, repo: &str, branch: &str) -> String {
    let branches = wharf.get(&format!("/api/v1/repos/{repo}/branches"));
    branches.json["branches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == branch)
        .map(|b| b["commit"].as_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[test]
fn commits_merges_and_comparisons_through_the_api() {
    let data = tempfile::tempdir().unwrap();
    let wharf = Wharf::start(data.path());
    let repo = "acme/merge";
    wharf.create_repo(repo);

    let first = commit_via_api(&wharf, repo, "main", None, json!([
        {"action": "create", "path": "doc/a.txt", "content": "1\n2\n3\n"},
        {"action": "create", "path": "bin/tool", "content": "IyEvYmluL3NoCg==", "encoding": "base64", "executable": true}
    ]));
    assert_eq!(first.status, 201, "{first:?}");
    let first_sha = first.json["commit"]["id"].as_str().unwrap().to_owned();
    let tool = wharf.get(&format!("/api/v1/repos/{repo}/tree?path=bin"));
    assert_eq!(tool.json["entries"][0]["mode"], "100755");

    // A stale parent is refused and changes nothing.
    let second = commit_via_api(&wharf, repo, "main", Some(&first_sha), json!([{"action": "update", "path": "doc/a.txt", "content": "1\n2\n3\n4\n"}]));
    assert_eq!(second.status, 201);
    let stale = commit_via_api(&wharf, repo, "main", Some(&first_sha), json!([{"action": "delete", "path": "doc/a.txt"}]));
    assert_eq!((stale.status, stale.error_code()), (409, "stale_parent"));
    assert_eq!(wharf.get(&format!("/api/v1/repos/{repo}/raw?path=doc/a.txt")).bytes, b"1\n2\n3\n4\n");

    // Fast-forward.
    assert_eq!(wharf.post(&format!("/api/v1/repos/{repo}/branches"), json!({"name": "ff"})).status, 201);
    let ff_tip = commit_via_api(&wharf, repo, "ff", None, json!([{"action": "create", "path": "ff.txt", "content": "ff\n"}]));
    let ff_sha = ff_tip.json["commit"]["id"].as_str().unwrap().to_owned();
    let merged = wharf.post(&format!("/api/v1/repos/{repo}/merges"), json!({"base": "main", "head": "ff", "strategy": "fast-forward"}));
    assert_eq!(merged.status, 200, "{merged:?}");
    assert_eq!(merged.json["commit"], ff_sha);

    // Merge commit and squash from diverged branches.
    assert_eq!(wharf.post(&format!("/api/v1/repos/{repo}/branches"), json!({"name": "side", "from": first_sha})).status, 201);
    commit_via_api(&wharf, repo, "side", None, json!([{"action": "create", "path": "side.txt", "content": "side\n"}]));
    let not_ff = wharf.post(&format!("/api/v1/repos/{repo}/merges"), json!({"base": "main", "head": "side", "strategy": "fast-forward"}));
    assert_eq!(not_ff.status, 409);
    let compare = wharf.get(&format!("/api/v1/repos/{repo}/compare?base=main&head=side"));
    assert_eq!((compare.json["ahead_by"].as_u64(), compare.json["behind_by"].as_u64()), (Some(1), Some(2)));
    assert_eq!(compare.json["files"][0]["path"], "side.txt");
    let merge = wharf.post(&format!("/api/v1/repos/{repo}/merges"), json!({"base": "main", "head": "side", "strategy": "merge"}));
    assert_eq!(merge.status, 200, "{merge:?}");
    let merge_sha = merge.json["commit"].as_str().unwrap().to_owned();
    let detail = wharf.get(&format!("/api/v1/repos/{repo}/commits/{merge_sha}"));
    assert_eq!(detail.json["commit"]["parents"].as_array().unwrap().len(), 2);

    assert_eq!(wharf.post(&format!("/api/v1/repos/{repo}/branches"), json!({"name": "sq"})).status, 201);
    commit_via_api(&wharf, repo, "sq", None, json!([{"action": "create", "path": "s1.txt", "content": "1\n"}]));
    commit_via_api(&wharf, repo, "sq", None, json!([{"action": "create", "path": "s2.txt", "content": "2\n"}]));
    let squash = wharf.post(&format!("/api/v1/repos/{repo}/merges"), json!({"base": "main", "head": "sq", "strategy": "squash"}));
    assert_eq!(squash.status, 200, "{squash:?}");
    let squash_sha = squash.json["commit"].as_str().unwrap();
    let detail = wharf.get(&format!("/api/v1/repos/{repo}/commits/{squash_sha}"));
    assert_eq!(detail.json["commit"]["parents"], json!([merge_sha]));
    assert_eq!(detail.json["files"].as_array().unwrap().len(), 2);

    // A conflict names the paths and changes nothing.
    assert_eq!(wharf.post(&format!("/api/v1/repos/{repo}/branches"), json!({"name": "clash"})).status, 201);
    commit_via_api(&wharf, repo, "clash", None, json!([{"action": "update", "path": "doc/a.txt", "content": "1\nclash\n3\n4\n"}]));
    commit_via_api(&wharf, repo, "main", None, json!([{"action": "update", "path": "doc/a.txt", "content": "1\nmain\n3\n4\n"}]));
    let before = branch_tip(&wharf, repo, "main");
    let conflict = wharf.post(&format!("/api/v1/repos/{repo}/merges"), json!({"base": "main", "head": "clash", "strategy": "merge"}));
    assert_eq!((conflict.status, conflict.error_code()), (409, "merge_conflict"), "{conflict:?}");
    assert_eq!(conflict.json["error"]["paths"], json!(["doc/a.txt"]));
    assert_eq!(branch_tip(&wharf, repo, "main"), before);

    // Log with a path filter, newest first, paged.
    let history = wharf.get(&format!("/api/v1/repos/{repo}/commits?path=doc/a.txt&limit=2"));
    assert_eq!(history.json["commits"].as_array().unwrap().len(), 2);
    let cursor = history.json["next_cursor"].as_str().unwrap().to_owned();
    let rest = wharf.get(&format!("/api/v1/repos/{repo}/commits?path=doc/a.txt&limit=10&cursor={cursor}"));
    assert_eq!(rest.json["commits"].as_array().unwrap().last().unwrap()["id"], first_sha);

    // Deleting a branch, then the repository.
    assert_eq!(wharf.delete(&format!("/api/v1/repos/{repo}/branches/clash")).status, 204);
    assert_eq!(wharf.delete(&format!("/api/v1/repos/{repo}")).status, 204);
    assert_eq!(wharf.get(&format!("/api/v1/repos/{repo}")).status, 404);
}

#[test]
fn bad_input_is_refused_with_a_json_error_and_changes_nothing() {
    let data = tempfile::tempdir().unwrap();
    let wharf = Wharf::start(data.path());
    wharf.create_repo("acme/app");

    for name in ["../etc", "acme/../x", "acme/a/b", "acme/\u{1}x", "/acme", &format!("acme/{}", "x".repeat(101))] {
        let answer = wharf.post("/api/v1/repos", json!({ "name": name }));
        assert_eq!(answer.status, 400, "{name:?}: {answer:?}");
        assert_eq!(answer.error_code(), "invalid_name", "{name:?}");
    }
    let duplicate = wharf.post("/api/v1/repos", json!({"name": "acme/app"}));
    assert_eq!((duplicate.status, duplicate.error_code()), (409, "repo_exists"));
    let malformed = wharf.request("POST", "/api/v1/repos", Some(b"{\"name\":".to_vec()), Some(&wharf.token));
    assert_eq!((malformed.status, malformed.error_code()), (400, "invalid_request"));
    // A body over the 32 MiB limit is refused from its announced length, before it is sent.
    let huge = wharf.head_only(&format!(
        "POST /api/v1/repos HTTP/1.1\r\nHost: wharf\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        wharf.token,
        33 << 20
    ));
    assert_eq!((huge.status, huge.error_code()), (413, "too_large"), "{huge:?}");

    let no_token = wharf.request("POST", "/api/v1/repos", Some(br#"{"name":"acme/b"}"#.to_vec()), None);
    assert_eq!((no_token.status, no_token.error_code()), (401, "unauthorized"));
    let wrong_token = wharf.request("POST", "/api/v1/repos", Some(br#"{"name":"acme/b"}"#.to_vec()), Some("nope"));
    assert_eq!(wrong_token.status, 401);

    assert_eq!(wharf.get("/api/v1/repos/acme/missing").status, 404);
    let empty_tree = wharf.get("/api/v1/repos/acme/app/tree");
    assert_eq!((empty_tree.status, empty_tree.error_code()), (404, "revision_not_found"));
    let first = commit_via_api(&wharf, "acme/app", "main", None, json!([{"action": "create", "path": "a.txt", "content": "a"}]));
    assert_eq!(first.status, 201);
    assert_eq!(wharf.get("/api/v1/repos/acme/app/tree?ref=nope").error_code(), "revision_not_found");
    assert_eq!(wharf.get("/api/v1/repos/acme/app/blob?path=missing").status, 404);
    assert_eq!(wharf.get("/api/v1/repos/acme/app/blob?path=../../etc/passwd").status, 400);
    let escape = commit_via_api(&wharf, "acme/app", "main", None, json!([{"action": "create", "path": "../x", "content": "x"}]));
    assert_eq!(escape.status, 400);
    let bad_branch = wharf.post("/api/v1/repos/acme/app/branches", json!({"name": "a..b"}));
    assert_eq!((bad_branch.status, bad_branch.error_code()), (400, "invalid_name"));
    assert_eq!(wharf.get("/api/v1/repos").json["repos"].as_array().unwrap().len(), 1, "nothing was created");

    // A push without a token is refused with a challenge, so git would ask for credentials.
    let challenge = wharf.get("/acme/app.git/info/refs?service=git-receive-pack");
    assert_eq!(challenge.status, 401);
    assert!(challenge.headers.contains_key("www-authenticate"));
    let work = tempfile::tempdir().unwrap();
    make_project(work.path());
    let refused = git(work.path(), &["push", &wharf.clone_url("acme/app"), "main:refs/heads/other"]);
    assert!(!refused.status.success());
    assert_eq!(wharf.get("/api/v1/repos/acme/app/branches").json["branches"].as_array().unwrap().len(), 1);
    assert_eq!(wharf.get("/acme/missing.git/info/refs?service=git-upload-pack").status, 404);
    assert_eq!(wharf.get("/acme/app.git/info/refs").status, 400, "the dumb protocol is not served");
}

#[test]
fn a_truncated_push_leaves_the_repository_as_it_was() {
    let data = tempfile::tempdir().unwrap();
    let wharf = Wharf::start(data.path());
    wharf.create_repo("acme/app");
    let work = tempfile::tempdir().unwrap();
    let head = make_project(work.path());

    // A receive-pack request by hand: one ref update, then half of the pack.
    let pack = std::process::Command::new("git")
        .args(["pack-objects", "--stdout", "--revs", "-q"])
        .current_dir(work.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(format!("{head}\n").as_bytes())?;
            child.wait_with_output()
        })
        .unwrap()
        .stdout;
    let command = format!("{} {head} refs/heads/main\0report-status\n", "0".repeat(40));
    let mut body = format!("{:04x}{command}0000", command.len() + 4).into_bytes();
    body.extend_from_slice(&pack[..pack.len() / 2]);
    let objects = wharf.data_dir.join("repos").join(format!("{:016x}.git", 1)).join("objects");
    let files_before = count_files(&objects);
    let answer = wharf.request("POST", "/acme/app.git/git-receive-pack", Some(body), Some(&wharf.token));
    let report = String::from_utf8_lossy(&answer.bytes);
    assert!(!report.contains("ok refs/heads/main"), "a broken pack must not update refs: {report}");

    assert_eq!(wharf.get("/api/v1/repos/acme/app/branches").json["branches"], json!([]));
    assert_eq!(wharf.get("/api/v1/repos/acme/app/events").json["events"], json!([]));
    assert_eq!(count_files(&objects), files_before, "the broken pack left no objects behind");
    // The repository still takes a good push afterwards.
    git_ok(work.path(), &["push", "-q", &wharf.push_url("acme/app"), "main"]);
    assert_eq!(branch_tip(&wharf, "acme/app", "main"), head);
}

#[test]
fn a_restart_keeps_repositories_branches_events_and_tokens() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let head = make_project(work.path());
    let token = {
        let mut wharf = Wharf::start(data.path());
        wharf.create_repo("acme/keep");
        git_ok(work.path(), &["push", "-q", &wharf.push_url("acme/keep"), "main"]);
        assert_eq!(wharf.post("/api/v1/repos/acme/keep/branches", json!({"name": "dev"})).status, 201);
        wharf.stop();
        wharf.token.clone()
    };

    let wharf = Wharf::start(data.path());
    assert_eq!(wharf.token, token, "the admin token survives a restart");
    let repos = wharf.get("/api/v1/repos");
    assert_eq!(repos.json["repos"][0]["name"], "acme/keep");
    assert_eq!(branch_tip(&wharf, "acme/keep", "dev"), head);
    assert_eq!(wharf.get("/api/v1/repos/acme/keep/events").json["events"][0]["new"], head);

    let clone = tempfile::tempdir().unwrap();
    git_ok(clone.path(), &["clone", "-q", &wharf.clone_url("acme/keep"), "copy"]);
    assert_eq!(files_under(&clone.path().join("copy")), files_under(work.path()));
    // New writes continue the records: a new repository gets a new id, a push gets event 2.
    let second = wharf.create_repo("acme/second");
    assert_ne!(second["id"], repos.json["repos"][0]["id"]);
    std::fs::write(work.path().join("README.md"), "changed\n").unwrap();
    git_ok(work.path(), &["commit", "-qam", "again"]);
    git_ok(work.path(), &["push", "-q", &wharf.push_url("acme/keep"), "main"]);
    assert_eq!(wharf.get("/api/v1/repos/acme/keep/events?after=1").json["events"][0]["seq"], 2);
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| if e.path().is_dir() { count_files(&e.path()) } else { 1 })
                .sum()
        })
        .unwrap_or(0)
}

/// A request body that sends `first`, then waits until told to go on, then fails: a client
/// that stalls in the middle of a push and then goes away.
struct StallingBody {
    first: std::io::Cursor<Vec<u8>>,
    stalled: std::sync::mpsc::Sender<()>,
    give_up: std::sync::mpsc::Receiver<()>,
}

impl std::io::Read for StallingBody {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.first.read(buf)?;
        if n > 0 {
            return Ok(n);
        }
        let _ = self.stalled.send(());
        let _ = self.give_up.recv();
        Err(std::io::Error::other("the client went away"))
    }
}

#[test]
fn reads_go_on_during_a_stalled_push_and_a_vanished_pusher_leaves_nothing() {
    let data = tempfile::tempdir().unwrap();
    let wharf = Wharf::start(data.path());
    wharf.create_repo("acme/app");
    let work = tempfile::tempdir().unwrap();
    let head = make_project(work.path());
    git_ok(work.path(), &["push", "-q", &wharf.push_url("acme/app"), "main"]);

    // A second commit with 24 MiB of incompressible data: more than loopback socket buffers
    // hold, so when the client has handed over the first part, Wharf has read most of it and
    // git is in the middle of receiving the pack, with the repository's write turn held.
    let mut big = vec![0u8; 24 << 20];
    rand::thread_rng().fill_bytes(&mut big);
    std::fs::write(work.path().join("big.bin"), &big).unwrap();
    git_ok(work.path(), &["add", "big.bin"]);
    git_ok(work.path(), &["commit", "-qm", "big"]);
    let new_head = git_ok(work.path(), &["rev-parse", "HEAD"]).trim().to_owned();
    let pack = std::process::Command::new("git")
        .args(["pack-objects", "--stdout", "--revs", "-q"])
        .current_dir(work.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(format!("{new_head}\n^{head}\n").as_bytes())?;
            child.wait_with_output()
        })
        .unwrap()
        .stdout;
    let command = format!("{head} {new_head} refs/heads/main\0report-status\n");
    let mut first = format!("{:04x}{command}0000", command.len() + 4).into_bytes();
    first.extend_from_slice(&pack[..pack.len() - 1024]);

    let (stalled_tx, stalled) = std::sync::mpsc::channel();
    let (give_up, give_up_rx) = std::sync::mpsc::channel();
    let body = StallingBody {
        first: std::io::Cursor::new(first),
        stalled: stalled_tx,
        give_up: give_up_rx,
    };
    let url = format!("{}/acme/app.git/git-receive-pack", wharf.url);
    let token = wharf.token.clone();
    let pusher = std::thread::spawn(move || {
        reqwest::blocking::Client::new()
            .post(url)
            .bearer_auth(token)
            .header("content-type", "application/x-git-receive-pack-request")
            .body(reqwest::blocking::Body::new(body))
            .send()
    });
    stalled
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("the push body was consumed up to the stall");

    // Reads do not wait for the push.
    assert_eq!(wharf.get("/api/v1/repos/acme/app/tree").status, 200);
    assert_eq!(wharf.get("/api/v1/repos/acme/app/commits").json["commits"][0]["id"], head);
    let clone = tempfile::tempdir().unwrap();
    git_ok(clone.path(), &["clone", "-q", &wharf.clone_url("acme/app"), "copy"]);
    assert!(!pusher.is_finished(), "the push is still open while the reads were served");

    // The pusher vanishes: nothing of its push remains, and the write turn is free again.
    give_up.send(()).unwrap();
    let _ = pusher.join();
    let objects = wharf.data_dir.join("repos").join(format!("{:016x}.git", 1)).join("objects");
    wharf_tests::wait_until("the aborted push's quarantine is gone", std::time::Duration::from_secs(60), || {
        std::fs::read_dir(&objects)
            .unwrap()
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().starts_with("tmp_objdir"))
    });
    assert_eq!(branch_tip(&wharf, "acme/app", "main"), head);
    assert_eq!(wharf.get("/api/v1/repos/acme/app/events").json["events"].as_array().unwrap().len(), 1);
    let branch = wharf.post("/api/v1/repos/acme/app/branches", json!({"name": "after"}));
    assert_eq!(branch.status, 201, "API writes go on after the aborted push: {branch:?}");
    git_ok(work.path(), &["push", "-q", &wharf.push_url("acme/app"), "main"]);
    assert_eq!(branch_tip(&wharf, "acme/app", "main"), new_head);
}

#[test]
fn a_gzip_compressed_request_is_understood() {
    use std::io::Write;
    let data = tempfile::tempdir().unwrap();
    let wharf = Wharf::start(data.path());
    wharf.create_repo("acme/app");
    let work = tempfile::tempdir().unwrap();
    let head = make_project(work.path());
    git_ok(work.path(), &["push", "-q", &wharf.push_url("acme/app"), "main"]);

    let pkt = |s: &str| format!("{:04x}{s}", s.len() + 4);
    let request = format!("{}0000{}", pkt(&format!("want {head}\n")), pkt("done\n"));
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gzip.write_all(request.as_bytes()).unwrap();
    let body = gzip.finish().unwrap();
    let response = reqwest::blocking::Client::new()
        .post(format!("{}/acme/app.git/git-upload-pack", wharf.url))
        .header("content-type", "application/x-git-upload-pack-request")
        .header("content-encoding", "gzip")
        .header("git-protocol", "version=2")
        .body(body)
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer = response.bytes().unwrap();
    assert!(answer.starts_with(b"0008NAK\n") && answer.windows(4).any(|w| w == b"PACK"), "{answer:?}");

    let broken = reqwest::blocking::Client::new()
        .post(format!("{}/acme/app.git/git-upload-pack", wharf.url))
        .header("content-encoding", "gzip")
        .header("git-protocol", "version=2")
        .body(b"not gzip at all".to_vec())
        .send()
        .unwrap();
    assert_eq!(broken.status(), 400, "a malformed gzip body is a client error");
}

#[test]
fn repository_actors_activate_on_demand_and_passivate_when_idle() {
    let data = tempfile::tempdir().unwrap();
    let wharf = Wharf::start_with(data.path(), &["--actor-idle-secs", "1"]);
    wharf.create_repo("acme/idle");
    let work = tempfile::tempdir().unwrap();
    let head = make_project(work.path());
    git_ok(work.path(), &["push", "-q", &wharf.push_url("acme/idle"), "main"]);
    let actors = || wharf.get("/api/v1/cluster").json["nodes"][0]["actors"].as_u64();
    assert_eq!(actors(), Some(1), "the push activated the repository's actor");
    wharf_tests::wait_until("the idle actor is passivated", std::time::Duration::from_secs(60), || actors() == Some(0));
    // The next request activates it again, with everything in place.
    assert_eq!(branch_tip(&wharf, "acme/idle", "main"), head);
    assert_eq!(actors(), Some(1));
}

/// A data directory written by Wharf before the metadata moved to sled key spaces (format 0:
/// a JSON snapshot and JSON log entries, made by `tests/fixtures/make-format0-data.sh`) starts
/// and serves everything it held after the upgrade, keeps numbering where it left off, and
/// starts again in the new format.
#[test]
fn a_format_0_data_directory_is_migrated_on_start() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/format0-data.tar.gz");
    let untar = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(&fixture)
        .arg("-C")
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(untar.success(), "cannot unpack {}", fixture.display());
    let data = dir.path().join("data");
    let old_token = std::fs::read_to_string(data.join("admin-token")).unwrap();

    let check = |wharf: &Wharf| {
        assert_eq!(wharf.token, old_token.trim(), "the admin token of format 0 still works");
        let names: Vec<Value> = wharf.get("/api/v1/repos").json["repos"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].clone())
            .collect();
        assert!(names.contains(&json!("acme/app")), "{names:?}");
        assert!(names.contains(&json!("acme/after-snapshot")), "written after the snapshot: {names:?}");
        let variables = wharf.request("GET", "/api/v1/repos/acme/app/variables", None, Some(&wharf.token));
        let variables = variables.json["variables"].as_array().unwrap().clone();
        assert_eq!(variables.len(), 5101, "5,100 variables in the snapshot and one in the log after it");
        let secret = variables.iter().find(|v| v["name"] == "API_KEY").unwrap();
        assert_eq!((secret["secret"].clone(), secret["value"].clone()), (json!(true), Value::Null));
        let pipelines = wharf.get("/api/v1/repos/acme/app/pipelines").json["pipelines"].clone();
        assert_eq!(pipelines[0]["status"], "passed", "{pipelines}");
        assert_eq!(wharf.get("/api/v1/repos/acme/app/events").json["events"].as_array().unwrap().len(), 1);
        let environments = wharf.get("/api/v1/environments?project_id=acme/app").json["environments"].clone();
        assert_eq!(environments[0]["name"], "staging", "{environments}");
    };

    let mut wharf = Wharf::start(&data);
    check(&wharf);
    assert!(data.join("meta/snapshots/current.snap").is_file(), "format 0's snapshot became a snapshot file");
    let clone = tempfile::tempdir().unwrap();
    git_ok(clone.path(), &["clone", "-q", &wharf.clone_url("acme/app"), "copy"]);
    assert_eq!(std::fs::read_to_string(clone.path().join("copy/README.md")).unwrap(), "format 0\n");
    let created = wharf.create_repo("acme/new");
    assert_eq!(created["id"], 3, "repository ids continue after format 0's");
    wharf.stop();

    let wharf = Wharf::start(&data);
    check(&wharf);
    assert_eq!(wharf.get("/api/v1/repos/acme/new").status, 200);
}

/// Activating a repository never holds up the others. One repository's open is stuck on its
/// disk for two seconds (its `config` is a FIFO that nobody writes yet, so reading it blocks, as
/// a slow or hung disk would); meanwhile another repository answers as usual, and once the
/// disk answers the stuck one is served too.
#[test]
fn a_repository_slow_to_open_does_not_hold_up_the_others() {
    use std::os::unix::fs::OpenOptionsExt;
    use std::time::{Duration, Instant};

    let data = tempfile::tempdir().unwrap();
    let wharf = Wharf::start_with(data.path(), &["--actor-idle-secs", "1"]);
    let slow = wharf.create_repo("acme/slow");
    wharf.create_repo("acme/fast");
    let actors = || wharf.get("/api/v1/cluster").json["nodes"][0]["actors"].as_u64();
    wharf_tests::wait_until("both actors are passivated", Duration::from_secs(60), || actors() == Some(0));

    let config = data.path().join("repos").join(format!("{:016x}.git", slow["id"].as_u64().unwrap())).join("config");
    let contents = std::fs::read(&config).unwrap();
    std::fs::remove_file(&config).unwrap();
    let made = std::process::Command::new("mkfifo").arg(&config).status().unwrap();
    assert!(made.success(), "mkfifo");

    let url = wharf.url.clone();
    let stuck = std::thread::spawn(move || {
        let started = Instant::now();
        let status = reqwest::blocking::Client::new()
            .get(format!("{url}/api/v1/repos/acme/slow/branches"))
            .timeout(Duration::from_secs(60))
            .send()
            .map(|r| r.status().as_u16());
        (status, started.elapsed())
    });
    // A FIFO opens for writing without blocking only once a reader holds it: then the
    // repository's open is stuck reading it.
    const O_NONBLOCK: i32 = 0o4000;
    let mut writer = None;
    wharf_tests::wait_until("the slow repository's open reaches its config", Duration::from_secs(30), || {
        writer = std::fs::OpenOptions::new().write(true).custom_flags(O_NONBLOCK).open(&config).ok();
        writer.is_some()
    });

    let mut latencies = Vec::new();
    let held_since = Instant::now();
    while held_since.elapsed() < Duration::from_secs(2) {
        let started = Instant::now();
        let answer = wharf.get("/api/v1/repos/acme/fast/branches");
        latencies.push(started.elapsed());
        assert_eq!(answer.status, 200, "{:?}", answer.json);
        assert!(!stuck.is_finished(), "the slow repository is still opening");
    }
    latencies.sort();
    eprintln!(
        "reads of another repository while one is stuck opening: {} reads, p50 {:?}, max {:?}",
        latencies.len(),
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );

    use std::io::Write;
    let mut writer = writer.unwrap();
    writer.write_all(&contents).unwrap();
    drop(writer);
    let (status, waited) = stuck.join().unwrap();
    assert_eq!(status.ok(), Some(200), "the slow repository answers once its disk does");
    assert!(waited >= Duration::from_secs(2), "it was held for the whole time");
}

/// The OpenAPI document lists every REST route, and each operation it lists is served: no
/// documented operation meets the no-route fallback or a 405. (That every `/api/v1` route is
/// in the document is checked in the front's unit tests, from its sources.)
#[test]
fn the_openapi_document_describes_routes_that_are_served() {
    let data = tempfile::tempdir().unwrap();
    let wharf = Wharf::start(data.path());
    let answer = wharf.get("/api/v1/openapi.json");
    assert_eq!(answer.status, 200, "{answer:?}");
    let document = &answer.json;
    assert!(document["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")), "{}", document["openapi"]);
    let paths = document["paths"].as_object().expect("paths");
    for required in ["/api/v1/repos", "/api/v1/repos/{owner}/{name}/tree", "/api/v1/jobs/{id}/artifacts/{path}", "/api/v1/deployments/{id}"] {
        assert!(paths.contains_key(required), "{required} is not documented");
    }
    // What the fallback answers to an API path no route serves.
    let unrouted = wharf.get("/api/v1/no-such-route");
    assert_eq!(unrouted.status, 404);
    let no_route = |answer: &wharf_tests::Answer| {
        answer.status == 404 && answer.json["error"]["message"].as_str().is_some_and(|m| m.contains("no route for"))
    };
    assert!(no_route(&unrouted), "{unrouted:?}");
    let mut checked = 0;
    for (template, item) in paths {
        // Ids that name nothing and names that exist nowhere: nothing is changed, and
        // without a token no change could be made anyway.
        let path = template
            .replace("{owner}", "nobody")
            .replace("{name}", "nothing")
            .replace("{path}", "dist/app.tar")
            .split('{')
            .enumerate()
            .map(|(i, part)| if i == 0 { part.to_owned() } else { format!("987654{}", part.split_once('}').map_or("", |(_, rest)| rest)) })
            .collect::<String>();
        for method in item.as_object().expect("a path item").keys() {
            let answer = wharf.request(&method.to_uppercase(), &path, None, None);
            assert!(!no_route(&answer), "{method} {template} ({path}) is documented but not routed: {answer:?}");
            assert_ne!(answer.status, 405, "{method} {template} ({path}) is documented but its method is not served");
            checked += 1;
        }
    }
    assert!(checked > 40, "{checked} operations checked");
}

/// A CLI whose reader goes away early (`wharf repo list | head`) ends quietly with success,
/// not with a panic and exit 101 (issue 13, point 10).
#[test]
fn the_cli_ends_quietly_when_its_reader_goes_away() {
    let data = tempfile::tempdir().unwrap();
    let wharf = Wharf::start(data.path());
    wharf.create_repo("acme/piped");
    let mut child = std::process::Command::new(wharf_tests::wharf_binary())
        .args(["repo", "list"])
        .env("WHARF_URL", &wharf.url)
        .env("WHARF_TOKEN", &wharf.token)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The reader is gone before the CLI has its answer to print.
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "exit {:?}: {stderr}", output.status.code());
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Issue 13, point 9: on git's routes Wharf speaks so that git prints it. A wrong token is
/// explained in plain text (`remote: Wharf: …` before git's `fatal: …`), and a push Wharf
/// refuses after git sent it rejects every ref with the reason in git's own report.
#[test]
fn git_prints_why_wharf_refused() {
    let data = tempfile::tempdir().unwrap();
    let wharf = Wharf::start_with_env(data.path(), &[], &[("WHARF_HTTP_MAX_PUSH_BYTES", "65536")]);
    wharf.create_repo("acme/refused");
    let work = tempfile::tempdir().unwrap();
    let stderr = |output: &std::process::Output| String::from_utf8_lossy(&output.stderr).into_owned();

    // A push with a wrong token: git shows Wharf's reason, not only "Authentication failed".
    make_project(work.path());
    let host = wharf.url.trim_start_matches("http://");
    let wrong = git(work.path(), &["push", &format!("http://admin:not-a-token@{host}/acme/refused.git"), "main"]);
    assert!(!wrong.status.success());
    let text = stderr(&wrong);
    assert!(text.contains("remote: Wharf: authentication required: the token is not valid"), "{text}");
    assert!(text.contains("fatal: Authentication failed"), "{text}");

    // A repository that does not exist.
    let missing = git(work.path(), &["ls-remote", &wharf.push_url("acme/nowhere")]);
    let text = stderr(&missing);
    assert!(!missing.status.success());
    assert!(text.contains("remote: Wharf: ") && text.contains("acme/nowhere"), "{text}");

    // A push over the limit (and over git's post buffer, so chunked): every ref is rejected
    // with the reason, and nothing lands.
    let pushed = git(work.path(), &["push", &wharf.push_url("acme/refused"), "main", "main:other"]);
    let text = stderr(&pushed);
    assert!(!pushed.status.success(), "{text}");
    assert!(text.contains("remote: Wharf: the git request body is larger than the limit of 65536 bytes"), "{text}");
    for branch in ["main", "other"] {
        assert!(
            text.contains(&format!("! [remote rejected] main -> {branch} (the git request body is larger than the limit of 65536 bytes)")),
            "{text}"
        );
    }
    let remote = git_ok(work.path(), &["ls-remote", &wharf.clone_url("acme/refused")]);
    assert_eq!(remote, "", "nothing landed");
    assert_eq!(wharf.get("/api/v1/repos/acme/refused/events").json["events"], json!([]));

    // Errors elsewhere stay JSON.
    let api = wharf.request("GET", "/api/v1/repos/acme/nowhere", None, Some("not-a-token"));
    assert_eq!(api.status, 401);
    assert_eq!(api.error_code(), "unauthorized");
}
