//! Wharf as a cluster: storage nodes and a front as separate processes, driven over HTTP and
//! with `git`.

use std::time::Duration;

use serde_json::json;
use wharf_placement::{key_of, owner, Member};
use wharf_tests::cluster::{LocalCluster, COOKIE};
use wharf_tests::{files_under, git_ok, wait_until, Wharf};

/// Names of repositories that placement gives to node `node` in a cluster of `nodes`.
fn names_placed_on(node: u64, nodes: u64, count: usize) -> Vec<String> {
    let members: Vec<Member> = (1..=nodes).map(|id| Member { id, weight: 100 }).collect();
    (0..)
        .map(|i| format!("team/repo{i}"))
        .filter(|name| owner(&members, key_of(name)) == Some(node))
        .take(count)
        .collect()
}

fn push_project(wharf: &Wharf, repo: &str, work: &std::path::Path) -> String {
    std::fs::create_dir_all(work.join("src")).unwrap();
    std::fs::write(work.join("src/lib.rs"), format!("// {repo}\n")).unwrap();
    git_ok(work, &["init", "-q"]);
    git_ok(work, &["add", "."]);
    git_ok(work, &["commit", "-qm", "first"]);
    git_ok(work, &["push", "-q", &wharf.push_url(repo), "main"]);
    git_ok(work, &["rev-parse", "HEAD"]).trim().to_owned()
}

#[test]
fn repositories_spread_over_three_nodes_and_a_killed_node_only_takes_its_own_offline() {
    let mut cluster = LocalCluster::start(3);
    let front = &cluster.front;

    // Placement spreads repositories over every node, and the front serves them all.
    let mut pushed = Vec::new();
    for node in 1..=3 {
        let name = names_placed_on(node, 3, 1).remove(0);
        let created = front.create_repo(&name);
        assert_eq!(created["node"], node, "{name} goes where placement says");
        let work = tempfile::tempdir().unwrap();
        let head = push_project(front, &name, work.path());
        let clone = tempfile::tempdir().unwrap();
        git_ok(clone.path(), &["clone", "-q", &front.clone_url(&name), "copy"]);
        assert_eq!(files_under(&clone.path().join("copy")), files_under(work.path()));
        let events = front.get(&format!("/api/v1/repos/{name}/events"));
        assert_eq!(events.json["events"][0]["new"], head, "the push event was committed through the leader");
        pushed.push((node, name, head, work));
    }
    assert_eq!(front.get("/api/v1/repos").json["repos"].as_array().unwrap().len(), 3);

    // Node 3 dies: its repositories answer 503 with Retry-After; the others keep working,
    // and so does the metadata (two of three voters remain).
    cluster.kill_node(3);
    let front = &cluster.front;
    let (_, on_three, head_three, _) = &pushed[2];
    wait_until("node 3's repository is reported unavailable", Duration::from_secs(60), || {
        front.get(&format!("/api/v1/repos/{on_three}/branches")).status == 503
    });
    let answer = front.get(&format!("/api/v1/repos/{on_three}/branches"));
    assert_eq!(answer.error_code(), "unavailable");
    assert!(answer.headers.contains_key("retry-after"));
    for (_, name, head, _) in &pushed[..2] {
        let branches = front.get(&format!("/api/v1/repos/{name}/branches"));
        assert_eq!(branches.json["branches"][0]["commit"], *head);
    }
    let newcomer = names_placed_on(1, 3, 2).remove(1);
    assert_eq!(front.post("/api/v1/repos", json!({ "name": newcomer })).status, 201);

    // Node 3 comes back on its data: everything it held is there again.
    cluster.restart_node(3);
    let front = &cluster.front;
    wait_until("node 3's repository is served again", Duration::from_secs(60), || {
        front.get(&format!("/api/v1/repos/{on_three}/branches")).status == 200
    });
    let branches = front.get(&format!("/api/v1/repos/{on_three}/branches"));
    assert_eq!(branches.json["branches"][0]["commit"], *head_three);
    let clone = tempfile::tempdir().unwrap();
    git_ok(clone.path(), &["clone", "-q", &front.clone_url(on_three), "copy"]);
    assert_eq!(files_under(&clone.path().join("copy")), files_under(pushed[2].3.path()));
    // It learned what happened while it was away.
    let name = names_placed_on(3, 3, 2).remove(1);
    assert_eq!(front.create_repo(&name)["node"], 3);
}

#[test]
fn a_process_with_the_wrong_cookie_cannot_join() {
    let cluster = LocalCluster::start(1);
    let mut intruder = cluster.spawn_joiner(7, "not-the-cookie");
    let message = intruder.wait_for_line("wharf: ", Duration::from_secs(180));
    assert!(message.contains("cookie"), "the refusal names the likely cause: {message}");
    let status = intruder.wait_exit(Duration::from_secs(30));
    assert!(!status.success(), "joining with a wrong cookie must fail");
    assert_ne!(COOKIE, "not-the-cookie");
    let nodes = cluster.front.get("/api/v1/repos");
    assert_eq!(nodes.status, 200, "the cluster is unaffected");
}
