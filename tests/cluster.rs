//! Wharf as a cluster: storage nodes and a front as separate processes, driven over HTTP and
//! with `git`.

use std::time::Duration;

use serde_json::json;
use wharf_placement::{key_of, owner, Member};
use wharf_tests::cluster::{names_placed_on, random_cookie, LocalCluster};
use wharf_tests::{files_under, git_ok, wait_until, Wharf};

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

    // A front killed and started again serves at once, from its own copy of the state.
    cluster.restart_front();
    let front = &cluster.front;
    // It serves at once from what it had; the last write before the kill may take one
    // replication round to reach it.
    wait_until("the restarted front sees every repository", Duration::from_secs(30), || {
        front.get("/api/v1/repos").json["repos"].as_array().map(Vec::len) == Some(5)
    });
    // Reads through it need its mesh session to node 3, which it dials again after the restart.
    wait_until("the restarted front reaches node 3", Duration::from_secs(30), || {
        front.get(&format!("/api/v1/repos/{on_three}/branches")).status == 200
    });
    let branches = front.get(&format!("/api/v1/repos/{on_three}/branches"));
    assert_eq!(branches.json["branches"][0]["commit"], *head_three);
}

#[test]
fn nodes_start_from_config_files_and_a_malformed_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let port = wharf_tests::cluster::free_port();
    let config = dir.path().join("node1.toml");
    std::fs::write(
        &config,
        format!(
            "id = 1\ndata_dir = \"{}\"\nlisten = \"127.0.0.1:{port}\"\ncookie_file = \"{}\"\nweight = 100\n",
            dir.path().join("data").display(),
            dir.path().join("cookie").display()
        ),
    )
    .unwrap();
    std::fs::write(dir.path().join("cookie"), random_cookie()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path().join("cookie"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut node = wharf_tests::Process::spawn("node1", &["node".into(), "--config".into(), config.display().to_string()]);
    node.wait_for_line("wharf: node 1 ready", Duration::from_secs(90));
    assert!(dir.path().join("data/admin-token").exists(), "the first node of a cluster writes the admin token");

    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "id = \"one\"\nlisten = [").unwrap();
    let mut refused = wharf_tests::Process::spawn("broken", &["node".into(), "--config".into(), broken.display().to_string()]);
    let message = refused.wait_for_line("wharf: ", Duration::from_secs(30));
    assert!(message.contains("not a valid config"), "{message}");
    assert!(!refused.wait_exit(Duration::from_secs(30)).success());
}

/// Where every repository is, by name.
fn owners(front: &Wharf) -> std::collections::BTreeMap<String, u64> {
    front.get("/api/v1/repos").json["repos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["name"].as_str().unwrap().to_owned(), r["node"].as_u64().unwrap()))
        .collect()
}

fn desired(name: &str, active: &[u64]) -> u64 {
    let members: Vec<Member> = active.iter().map(|&id| Member { id, weight: 100 }).collect();
    owner(&members, key_of(name)).unwrap()
}

#[test]
fn a_joining_node_takes_only_its_share_and_a_drained_node_gives_everything_away_without_failed_reads() {
    let mut cluster = LocalCluster::start(3);
    let names: Vec<String> = (0..30).map(|i| format!("fleet/repo{i}")).collect();
    for name in &names {
        cluster.front.create_repo(name);
    }
    // Content in a few repositories on every node, to see that moves carry it.
    let mut heads = std::collections::BTreeMap::new();
    for name in names.iter().take(9) {
        let work = tempfile::tempdir().unwrap();
        heads.insert(name.clone(), push_project(&cluster.front, name, work.path()));
    }
    let before = owners(&cluster.front);

    // A fourth node joins: the repositories whose desired owner is now node 4 move to it, and
    // only those.
    let four = cluster.add_node();
    let front = &cluster.front;
    wait_until("every repository is where placement over 4 nodes wants it", Duration::from_secs(240), || {
        owners(front).iter().all(|(name, node)| *node == desired(name, &[1, 2, 3, 4]))
    });
    let after = owners(front);
    let moved: Vec<&String> = names.iter().filter(|n| before[*n] != after[*n]).collect();
    assert!(!moved.is_empty(), "node 4 received some repositories");
    assert!(moved.iter().all(|n| after[*n] == four), "every moved repository went to the new node");
    assert_eq!(moved.len(), names.iter().filter(|n| desired(n, &[1, 2, 3, 4]) == four).count());
    for (name, head) in &heads {
        let branches = front.get(&format!("/api/v1/repos/{name}/branches"));
        assert_eq!(branches.json["branches"][0]["commit"], *head, "{name} kept its content");
    }

    // Drain node 2 while a reader keeps reading every repository with content.
    let stop: Stop = Default::default();
    let names_with_content: Vec<String> = heads.keys().cloned().collect();
    let reader = spawn_reader(front.url.clone(), names_with_content, stop.clone());
    // And a pusher keeps pushing new commits to a repository that lives on node 2.
    let on_two = names
        .iter()
        .find(|n| after[*n] == 2 && !heads.contains_key(*n))
        .expect("node 2 owns a repository without content")
        .clone();
    let pusher = spawn_pusher(front.push_url(&on_two), stop.clone());
    let drain = front.post("/api/v1/cluster/nodes/2/drain", json!({}));
    assert_eq!(drain.status, 200, "{drain:?}");
    wait_until("node 2 is drained", Duration::from_secs(240), || {
        let status = front.get("/api/v1/cluster");
        status.json["nodes"].as_array().unwrap().iter().any(|n| n["id"] == 2 && n["state"] == "drained")
    });
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (reads, failures) = reader.join().unwrap();
    let (acknowledged, push_failures) = pusher.join().unwrap();
    assert!(push_failures.is_empty(), "pushes failed during the drain: {push_failures:?}");
    assert_pushes_kept(front, &on_two, &acknowledged);
    assert!(reads > 0);
    assert!(failures.is_empty(), "{} of {reads} reads failed during the drain: {failures:?}", failures.len());
    let owners_now = owners(front);
    assert!(owners_now.values().all(|node| *node != 2), "nothing is left on node 2");
    for (name, node) in &owners_now {
        assert_eq!(*node, desired(name, &[1, 3, 4]), "{name} is where placement without node 2 wants it");
    }
    for (name, head) in &heads {
        let branches = front.get(&format!("/api/v1/repos/{name}/branches"));
        assert_eq!(branches.json["branches"][0]["commit"], *head, "{name} kept its content through the drain");
    }
    // Writes work on moved repositories, and the status page shows the drained node.
    let (name, _) = heads.iter().next().unwrap();
    let branch = front.post(&format!("/api/v1/repos/{name}/branches"), json!({"name": "after-drain"}));
    assert_eq!(branch.status, 201, "{branch:?}");
    let status = front.get("/api/v1/cluster");
    let two = status.json["nodes"].as_array().unwrap().iter().find(|n| n["id"] == 2).unwrap().clone();
    assert_eq!((two["repos"].as_u64(), two["state"].as_str()), (Some(0), Some("drained")));

    // Only a drained node may leave; then it is gone from the records and the Raft group.
    let refused = front.delete("/api/v1/cluster/nodes/3");
    assert_eq!((refused.status, refused.error_code()), (400, "invalid_request"), "{refused:?}");
    let left = front.delete("/api/v1/cluster/nodes/2");
    assert_eq!(left.status, 204, "{left:?}");
    wait_until("node 2 is out of the Raft group", Duration::from_secs(60), || {
        let status = front.get("/api/v1/cluster");
        let listed = |list: &str| status.json[list].as_array().unwrap().iter().any(|n| n["id"] == 2);
        !listed("nodes") && !listed("other_members")
    });
    cluster.kill_node(2);
    let front = &cluster.front;
    assert_eq!(front.create_repo("fleet/after-leave")["name"], "fleet/after-leave");
}

type Stop = std::sync::Arc<std::sync::atomic::AtomicBool>;

/// Reads the tree of every repository in `names` over and over until `stop`; returns how many
/// reads it made and the failed ones.
fn spawn_reader(url: String, names: Vec<String>, stop: Stop) -> std::thread::JoinHandle<(u64, Vec<String>)> {
    std::thread::spawn(move || {
        let http = reqwest::blocking::Client::new();
        let (mut reads, mut failures) = (0u64, Vec::new());
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            for name in &names {
                let response = http.get(format!("{url}/api/v1/repos/{name}/tree")).send();
                reads += 1;
                match response {
                    Ok(r) if r.status().is_success() => {}
                    Ok(r) => failures.push(format!("{name}: {}", r.status())),
                    Err(e) => failures.push(format!("{name}: {e}")),
                }
            }
        }
        (reads, failures)
    })
}

/// Pushes a new commit to `push_url` over and over until `stop` (at least three times);
/// returns the acknowledged heads and the failed pushes.
fn spawn_pusher(push_url: String, stop: Stop) -> std::thread::JoinHandle<(Vec<String>, Vec<String>)> {
    std::thread::spawn(move || {
        let work = tempfile::tempdir().unwrap();
        git_ok(work.path(), &["init", "-q"]);
        let (mut acknowledged, mut failures) = (Vec::new(), Vec::new());
        let mut n = 0;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) || n < 3 {
            n += 1;
            std::fs::write(work.path().join("counter.txt"), format!("{n}\n")).unwrap();
            git_ok(work.path(), &["add", "."]);
            git_ok(work.path(), &["commit", "-qm", &format!("push {n}")]);
            let output = wharf_tests::git(work.path(), &["push", "-q", "--force", &push_url, "main"]);
            if output.status.success() {
                acknowledged.push(git_ok(work.path(), &["rev-parse", "HEAD"]).trim().to_owned());
            } else {
                failures.push(String::from_utf8_lossy(&output.stderr).into_owned());
            }
        }
        (acknowledged, failures)
    })
}

/// Checks that every acknowledged push is in the repository: the last one is its tip, and
/// each has its push event.
fn assert_pushes_kept(front: &Wharf, repo: &str, acknowledged: &[String]) {
    let last = acknowledged.last().expect("some pushes were acknowledged");
    let branches = front.get(&format!("/api/v1/repos/{repo}/branches"));
    assert_eq!(branches.json["branches"][0]["commit"], *last, "the last acknowledged push is there");
    // Every event, a page of 1000 at a time: a long run (four nodes restarted) pushes more.
    let (mut recorded, mut after) = (Vec::new(), 0);
    loop {
        let page = front.get(&format!("/api/v1/repos/{repo}/events?after={after}&limit=1000")).json["events"].as_array().unwrap().clone();
        recorded.extend(page.iter().filter_map(|e| e["new"].as_str().map(str::to_owned)));
        match page.last() {
            Some(last) if page.len() == 1000 => after = last["seq"].as_u64().unwrap(),
            _ => break,
        }
    }
    eprintln!("{repo}: {} acknowledged pushes, {} events", acknowledged.len(), recorded.len());
    for head in acknowledged {
        assert!(recorded.contains(head), "acknowledged push {head} has its event");
    }
}

/// A cluster started with `scripts/cluster.sh`, stopped with it when dropped.
struct ScriptCluster {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl ScriptCluster {
    fn up(nodes: usize) -> ScriptCluster {
        let dir = tempfile::tempdir().unwrap();
        let base = loop {
            let base = wharf_tests::cluster::free_port().min(60_000);
            let free = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
            if (1..=nodes as u16).chain([100]).all(|offset| free(base + offset)) {
                break base;
            }
        };
        let env = vec![
            ("WHARF_CLUSTER_DIR".to_owned(), dir.path().display().to_string()),
            ("WHARF_BASE_PORT".to_owned(), base.to_string()),
            ("WHARF_HTTP_PORT".to_owned(), wharf_tests::cluster::free_port().to_string()),
            ("WHARF_BIN".to_owned(), wharf_tests::wharf_binary().display().to_string()),
            ("WHARF_LOG".to_owned(), "warn".to_owned()),
        ];
        let cluster = ScriptCluster { dir, env };
        cluster.run("cluster.sh", &["up", &nodes.to_string()]);
        cluster
    }

    fn run(&self, script: &str, args: &[&str]) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts").join(script);
        let output = std::process::Command::new("bash")
            .arg(&path)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("run script");
        assert!(
            output.status.success(),
            "{script} {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Starts node `id` by hand, as an operator would (not through cluster.sh): its own data
    /// directory and port, the script's cookie file, joined through node 1.
    fn spawn_by_hand(&self, id: u64) -> wharf_tests::Process {
        let env = |name: &str| self.env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).unwrap();
        let base: u16 = env("WHARF_BASE_PORT").parse().unwrap();
        let args: Vec<String> = [
            "node",
            "--id",
            &id.to_string(),
            "--data-dir",
            &self.dir.path().join(format!("by-hand-{id}")).display().to_string(),
            "--listen",
            &format!("127.0.0.1:{}", wharf_tests::cluster::free_port()),
            "--join",
            &format!("127.0.0.1:{}", base + 1),
        ]
        .map(str::to_owned)
        .to_vec();
        let cookie = self.dir.path().join("cookie").display().to_string();
        wharf_tests::Process::spawn_with_env(&format!("by-hand-{id}"), &args, "warn", &[("WHARF_COOKIE_FILE", &cookie)])
    }

    fn front(&self) -> Wharf {
        let url = std::fs::read_to_string(self.dir.path().join("front.url")).unwrap().trim().to_owned();
        let token = std::fs::read_to_string(self.dir.path().join("node1/admin-token")).unwrap().trim().to_owned();
        Wharf::attach(url, token, self.dir.path())
    }
}

impl Drop for ScriptCluster {
    fn drop(&mut self) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/cluster.sh");
        let _ = std::process::Command::new("bash")
            .arg(path)
            .arg("down")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output();
    }
}

#[test]
fn a_rolling_restart_with_the_script_fails_no_read_and_loses_no_push() {
    let cluster = ScriptCluster::up(3);
    let front = cluster.front();
    // A fourth node joined by hand is restarted too (issue 13, point 6).
    let mut by_hand = cluster.spawn_by_hand(4);
    by_hand.wait_for_line("wharf: node 4 ready", std::time::Duration::from_secs(60));
    let first_pid = by_hand.pid().unwrap();
    // 50 repositories with content, read in a loop; pushes go on to two more.
    let names: Vec<String> = (0..50).map(|i| format!("roll/repo{i}")).collect();
    let mut heads = std::collections::BTreeMap::new();
    for name in &names {
        front.create_repo(name);
        let work = tempfile::tempdir().unwrap();
        heads.insert(name.clone(), push_project(&front, name, work.path()));
    }
    let pushed_to = ["roll/pushed0".to_owned(), "roll/pushed1".to_owned()];
    for name in &pushed_to {
        front.create_repo(name);
    }
    let stop: Stop = Default::default();
    let reader = spawn_reader(front.url.clone(), heads.keys().cloned().collect(), stop.clone());
    let pushers: Vec<_> = pushed_to.iter().map(|name| spawn_pusher(front.push_url(name), stop.clone())).collect();

    let restarted = cluster.run("rolling-restart.sh", &[]);
    assert!(restarted.contains("== node 4: restart (local)"), "{restarted}");
    assert!(restarted.contains("rolling restart of 4 nodes done"), "{restarted}");
    let new_pid: u32 = std::fs::read_to_string(cluster.dir.path().join("node4.pid")).unwrap().trim().parse().unwrap();
    assert_ne!(new_pid, first_pid, "node 4 runs in a new process");
    by_hand.wait_exit(std::time::Duration::from_secs(5));

    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (reads, failures) = reader.join().unwrap();
    assert!(reads > 0);
    assert!(failures.is_empty(), "{} of {reads} reads failed during the rolling restart: {failures:?}", failures.len());
    for (pusher, name) in pushers.into_iter().zip(&pushed_to) {
        let (acknowledged, push_failures) = pusher.join().unwrap();
        assert!(push_failures.is_empty(), "pushes to {name} failed during the rolling restart: {push_failures:?}");
        assert_pushes_kept(&front, name, &acknowledged);
    }
    for (name, head) in &heads {
        let branches = front.get(&format!("/api/v1/repos/{name}/branches"));
        assert_eq!(branches.json["branches"][0]["commit"], *head, "{name} kept its content");
    }
    let status = front.get("/api/v1/cluster");
    assert_eq!(status.json["balanced"], true, "{:?}", status.json);
    let nodes = status.json["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 4, "{:?}", status.json);
    assert!(nodes.iter().all(|n| n["reachable"] == true), "{:?}", status.json);
}
