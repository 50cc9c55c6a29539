//! A local cluster for tests: storage nodes and a front as separate `wharf` processes on
//! 127.0.0.1, each with its own data directory and cluster port.

use std::path::PathBuf;

use crate::{Process, Wharf, START_DEADLINE};

/// A new random cookie (64 hex digits), as `openssl rand -hex 32` makes one.
pub fn random_cookie() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

/// Storage nodes `1..=n` and one front (id 100).
pub struct LocalCluster {
    nodes: Vec<Option<Process>>,
    ports: Vec<u16>,
    /// Flags added to each node's command line, by node id.
    extra: Box<dyn Fn(u64) -> Vec<String>>,
    /// Every process's log filter (`WHARF_LOG`).
    log: String,
    /// The front.
    pub front: Wharf,
    front_args: Vec<String>,
    /// The cluster's cookie, given to every process as `WHARF_COOKIE`.
    pub cookie: String,
    dir: tempfile::TempDir,
}

impl LocalCluster {
    /// Starts node 1 (which creates the cluster), nodes `2..=n` joining it, and a front.
    pub fn start(n: usize) -> LocalCluster {
        LocalCluster::start_with(n, |_| Vec::new())
    }

    /// Like [`LocalCluster::start`], with `extra(id)` added to node `id`'s flags.
    pub fn start_with(n: usize, extra: impl Fn(u64) -> Vec<String> + 'static) -> LocalCluster {
        let log = std::env::var("WHARF_LOG").unwrap_or_else(|_| "warn".into());
        LocalCluster::start_logging(n, extra, &log)
    }

    /// Like [`LocalCluster::start_with`], every process logging with the filter `log`, for a
    /// test that reads the log lines.
    pub fn start_logging(n: usize, extra: impl Fn(u64) -> Vec<String> + 'static, log: &str) -> LocalCluster {
        let extra: Box<dyn Fn(u64) -> Vec<String>> = Box::new(extra);
        let dir = tempfile::tempdir().expect("temp dir");
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let cookie = random_cookie();
        let mut nodes = Vec::new();
        for id in 1..=n as u64 {
            let join = (id > 1).then(|| format!("127.0.0.1:{}", ports[0]));
            let mut args = node_args(&dir, &ports, id, join);
            args.extend(extra(id));
            let mut node = Process::spawn_with_env(&format!("node{id}"), &args, log, &[("WHARF_COOKIE", &cookie)]);
            node.wait_for_line(&format!("wharf: node {id} ready"), START_DEADLINE);
            nodes.push(Some(node));
        }
        let front_dir = dir.path().join("front");
        let args = [
            "front".to_owned(),
            "--id".into(),
            "100".into(),
            "--data-dir".into(),
            front_dir.display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{}", free_port()),
            "--http".into(),
            "127.0.0.1:0".into(),
            "--join".into(),
            format!("127.0.0.1:{}", ports[0]),
        ];
        let mut front = Process::spawn_with_env("front", &args, log, &[("WHARF_COOKIE", &cookie)]);
        let url = front.wait_for_line("wharf: serving on ", START_DEADLINE);
        let front_args = args.to_vec();
        let token = std::fs::read_to_string(dir.path().join("node1/admin-token"))
            .expect("node 1 wrote the admin token")
            .trim()
            .to_owned();
        let front = Wharf::ready(front, url, token, &front_dir);
        LocalCluster {
            nodes,
            ports,
            extra,
            log: log.to_owned(),
            front,
            front_args,
            cookie,
            dir,
        }
    }

    /// Starts `wharf ARGS` as a member of this cluster: with its cookie and log filter.
    pub fn spawn_member(&self, name: &str, args: &[String]) -> Process {
        Process::spawn_with_env(name, args, &self.log, &[("WHARF_COOKIE", &self.cookie)])
    }

    /// Node `id`'s cluster address.
    pub fn node_addr(&self, id: u64) -> String {
        format!("127.0.0.1:{}", self.ports[id as usize - 1])
    }

    /// The directory the cluster's data directories are in.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Node `id`'s process, to read its output; `None` once it was killed.
    pub fn node_process(&mut self, id: u64) -> Option<&mut Process> {
        self.nodes.get_mut(id as usize - 1).and_then(Option::as_mut)
    }

    /// Kills the front and starts it again on its data: it rejoins from its own Raft state.
    pub fn restart_front(&mut self) {
        self.front.kill();
        let args: Vec<String> = self.front_args.iter().filter(|a| !a.starts_with("--join")).cloned().collect();
        // Drop the value that followed --join too.
        let join_at = self.front_args.iter().position(|a| a == "--join").expect("front joined");
        let joined = &self.front_args[join_at + 1];
        let args: Vec<String> = args.into_iter().filter(|a| a != joined).collect();
        let mut front = self.spawn_member("front", &args);
        let url = front.wait_for_line("wharf: serving on ", START_DEADLINE);
        let token = self.front.token.clone();
        let data_dir = self.front.data_dir.clone();
        self.front = Wharf::ready(front, url, token, &data_dir);
    }

    /// Node `id`'s data directory.
    pub fn node_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node{id}"))
    }

    /// Kills node `id` with SIGKILL.
    pub fn kill_node(&mut self, id: u64) {
        if let Some(mut node) = self.nodes[id as usize - 1].take() {
            node.kill();
        }
    }

    /// Starts node `id` again on its data directory (it finds its peers from its Raft state).
    pub fn restart_node(&mut self, id: u64) {
        self.kill_node(id);
        let mut args = node_args(&self.dir, &self.ports, id, None);
        args.extend((self.extra)(id));
        let mut node = self.spawn_member(&format!("node{id}"), &args);
        node.wait_for_line(&format!("wharf: node {id} ready"), START_DEADLINE);
        self.nodes[id as usize - 1] = Some(node);
    }

    /// Starts one more storage node, joining through node 1; returns its id.
    pub fn add_node(&mut self) -> u64 {
        self.ports.push(free_port());
        let id = self.ports.len() as u64;
        let join = Some(format!("127.0.0.1:{}", self.ports[0]));
        let mut args = node_args(&self.dir, &self.ports, id, join);
        args.extend((self.extra)(id));
        let mut node = self.spawn_member(&format!("node{id}"), &args);
        node.wait_for_line(&format!("wharf: node {id} ready"), START_DEADLINE);
        self.nodes.push(Some(node));
        id
    }

    /// Starts a process that tries to join with `cookie` (in `WHARF_COOKIE`); the caller
    /// watches what it does. Its data directory is [`LocalCluster::node_dir`]`(id)`.
    pub fn spawn_joiner(&self, id: u64, cookie: &str) -> Process {
        let mut args = node_args(&self.dir, &[free_port()], id, Some(format!("127.0.0.1:{}", self.ports[0])));
        let at = args.iter().position(|a| a == "--listen").expect("listen flag") + 1;
        args[at] = format!("127.0.0.1:{}", free_port());
        Process::spawn_with_env(&format!("joiner{id}"), &args, &self.log, &[("WHARF_COOKIE", cookie)])
    }
}

fn node_args(dir: &tempfile::TempDir, ports: &[u16], id: u64, join: Option<String>) -> Vec<String> {
    let port = ports.get(id as usize - 1).copied().unwrap_or(ports[0]);
    let mut args = vec![
        "node".to_owned(),
        "--id".into(),
        id.to_string(),
        "--data-dir".into(),
        dir.path().join(format!("node{id}")).display().to_string(),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
    ];
    if let Some(join) = join {
        args.push("--join".into());
        args.push(join);
    }
    args
}

/// Names of repositories that placement gives to node `node` among nodes `1..=nodes`.
pub fn names_placed_on(node: u64, nodes: u64, count: usize) -> Vec<String> {
    let members: Vec<wharf_placement::Member> =
        (1..=nodes).map(|id| wharf_placement::Member { id, weight: 100 }).collect();
    (0..)
        .map(|i| format!("team/repo{i}"))
        .filter(|name| wharf_placement::owner(&members, wharf_placement::key_of(name)) == Some(node))
        .take(count)
        .collect()
}
