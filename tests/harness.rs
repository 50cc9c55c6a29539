//! The integration-test harness: starts the real `wharf` binary on a free port in a temporary
//! directory, and drives it with HTTP (reqwest) and the real `git` client.
//!
//! Everything waits on a condition with a deadline; nothing sleeps and hopes.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

#[path = "harness/cluster.rs"]
pub mod cluster;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a node gets to start or stop.
pub const START_DEADLINE: Duration = Duration::from_secs(90);

/// The `wharf` binary: `$WHARF_BIN`, or the one cargo built next to this test.
pub fn wharf_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("WHARF_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // A test runs from target/PROFILE/deps/, a benchmark binary from target/PROFILE/.
    let dirs = [exe.parent(), exe.parent().and_then(Path::parent)];
    let found = dirs.into_iter().flatten().map(|dir| dir.join("wharf")).find(|candidate| candidate.exists());
    found.unwrap_or_else(|| panic!("no wharf binary next to {}: build it first (cargo build -p wharf) or set WHARF_BIN", exe.display()))
}

/// A running `wharf` process whose standard output is read line by line.
pub struct Process {
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    /// What it is, for messages.
    pub name: String,
}

impl Process {
    /// Starts `wharf ARGS` (logging at `warn` unless `WHARF_LOG` says otherwise).
    pub fn spawn(name: &str, args: &[String]) -> Process {
        let log = std::env::var("WHARF_LOG").unwrap_or_else(|_| "warn".into());
        Process::spawn_logging(name, args, &log)
    }

    /// Starts `wharf ARGS` with the log filter `log` (`WHARF_LOG`), for a test that reads the
    /// log lines.
    pub fn spawn_logging(name: &str, args: &[String], log: &str) -> Process {
        Process::spawn_with_env(name, args, log, &[])
    }

    /// Starts `wharf ARGS` with the log filter `log` and the environment variables `env`
    /// added (settings such as `WHARF_HTTP_HEADER_TIMEOUT_SECS`).
    pub fn spawn_with_env(name: &str, args: &[String], log: &str, env: &[(&str, &str)]) -> Process {
        let mut child = Command::new(wharf_binary())
            .args(args)
            .envs(env.iter().copied())
            .env("WHARF_LOG", log)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start wharf");
        let (sender, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let to_stdout = sender.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = to_stdout.send(line);
            }
        });
        let label = name.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // Shown in the test's output, and searchable by the test.
                eprintln!("[{label}] {line}");
                let _ = sender.send(line);
            }
        });
        Process {
            child: Some(child),
            lines,
            name: name.to_owned(),
        }
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Waits for an output line starting with `prefix` and returns the rest of it.
    pub fn wait_for_line(&mut self, prefix: &str, deadline: Duration) -> String {
        self.try_wait_for_line(prefix, deadline)
            .unwrap_or_else(|| panic!("{} did not print {prefix:?} within {deadline:?}", self.name))
    }

    /// Like [`Process::wait_for_line`], but `None` if the line did not come.
    pub fn try_wait_for_line(&mut self, prefix: &str, deadline: Duration) -> Option<String> {
        let end = Instant::now() + deadline;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return Some(rest.trim().to_owned());
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// Waits for an output line that contains every one of `needles` and returns it.
    pub fn wait_for_line_containing(&mut self, needles: &[&str], deadline: Duration) -> String {
        let end = Instant::now() + deadline;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if needles.iter().all(|needle| line.contains(needle)) => return line,
                Ok(_) => {}
                Err(_) => panic!("{} printed no line with {needles:?} within {deadline:?}", self.name),
            }
        }
    }

    /// Waits for the process to exit by itself; its status.
    pub fn wait_exit(&mut self, deadline: Duration) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("running");
        let end = Instant::now() + deadline;
        while Instant::now() < end {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{} did not exit within {deadline:?}", self.name);
    }

    /// Kills it with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops it with SIGTERM and checks that it exits cleanly.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let deadline = Instant::now() + START_DEADLINE;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                assert!(status.success(), "{} exited with {status} on SIGTERM", self.name);
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        panic!("{} did not stop within {START_DEADLINE:?} of SIGTERM", self.name);
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running `wharf dev`, or the front of a cluster: an HTTP endpoint and its admin token.
pub struct Wharf {
    process: Option<Process>,
    /// The front's base URL (`http://127.0.0.1:PORT`).
    pub url: String,
    /// The admin token.
    pub token: String,
    /// The data directory.
    pub data_dir: PathBuf,
    http: reqwest::blocking::Client,
}

/// An HTTP answer: status and JSON body (`Null` when empty or not JSON).
#[derive(Debug)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The body as JSON.
    pub json: Value,
    /// The raw body.
    pub bytes: Vec<u8>,
    /// The response headers.
    pub headers: reqwest::header::HeaderMap,
}

impl Answer {
    /// The error code of a JSON error body.
    pub fn error_code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or("")
    }
}

impl Wharf {
    /// Starts `wharf dev` on a free port with its data in `data_dir`.
    pub fn start(data_dir: &Path) -> Wharf {
        Wharf::start_with(data_dir, &[])
    }

    /// Starts `wharf dev` with extra flags.
    pub fn start_with(data_dir: &Path, extra: &[&str]) -> Wharf {
        Wharf::start_with_env(data_dir, extra, &[])
    }

    /// Starts `wharf dev` with extra flags and environment variables.
    pub fn start_with_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Wharf {
        let args = ["dev", "--listen", "127.0.0.1:0", "--data-dir"].map(String::from);
        let mut args = args.to_vec();
        args.push(data_dir.display().to_string());
        args.extend(extra.iter().map(|a| a.to_string()));
        let log = std::env::var("WHARF_LOG").unwrap_or_else(|_| "warn".into());
        let mut process = Process::spawn_with_env("dev", &args, &log, env);
        let url = process.wait_for_line("wharf: serving on ", START_DEADLINE);
        let token = std::fs::read_to_string(data_dir.join("admin-token"))
            .expect("admin-token written")
            .trim()
            .to_owned();
        Wharf::ready(process, url, token, data_dir)
    }

    /// A front someone else runs (a script), once `/healthz` answers.
    pub fn attach(url: String, token: String, data_dir: &Path) -> Wharf {
        Wharf::wrap(None, url, token, data_dir)
    }

    /// Wraps a front that printed its URL, once `/healthz` answers.
    pub fn ready(process: Process, url: String, token: String, data_dir: &Path) -> Wharf {
        Wharf::wrap(Some(process), url, token, data_dir)
    }

    fn wrap(process: Option<Process>, url: String, token: String, data_dir: &Path) -> Wharf {
        let wharf = Wharf {
            process,
            url,
            token,
            data_dir: data_dir.to_owned(),
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .expect("http client"),
        };
        wait_until("GET /healthz answers 200", START_DEADLINE, || {
            wharf.http.get(format!("{}/healthz", wharf.url)).send().map(|r| r.status() == 200).unwrap_or(false)
        });
        wharf
    }

    /// The process id of the `wharf` this harness started, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(Process::pid)
    }

    /// The process, to read its output (`None` for a front someone else runs).
    pub fn process(&mut self) -> Option<&mut Process> {
        self.process.as_mut()
    }

    /// Stops the process with SIGTERM and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop();
        }
    }

    /// Kills the process with SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// Sends a request; `token` adds `Authorization: Bearer`.
    pub fn request(&self, method: &str, path: &str, body: Option<Vec<u8>>, token: Option<&str>) -> Answer {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self.http.request(method, format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body);
        }
        let response = request.send().expect("request sent");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().expect("body").to_vec();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer {
            status,
            json,
            bytes,
            headers,
        }
    }

    /// Sends only the head of a request (no body) over a raw connection and reads the
    /// answer: how a client learns that a body it announced is refused before sending it.
    pub fn head_only(&self, head: &str) -> Answer {
        use std::io::{Read, Write};
        let host = self.url.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(host).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
        stream.write_all(head.as_bytes()).expect("send head");
        let mut received = Vec::new();
        let mut buffer = [0u8; 4096];
        let (header_end, length) = loop {
            let n = stream.read(&mut buffer).expect("read answer");
            assert!(n > 0, "connection closed before a full answer: {}", String::from_utf8_lossy(&received));
            received.extend_from_slice(&buffer[..n]);
            if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&received[..end]).to_lowercase();
                let length = head
                    .lines()
                    .find_map(|line| line.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                break (end + 4, length);
            }
        };
        while received.len() < header_end + length {
            let n = stream.read(&mut buffer).expect("read body");
            assert!(n > 0, "connection closed in the middle of the answer");
            received.extend_from_slice(&buffer[..n]);
        }
        let head = String::from_utf8_lossy(&received[..header_end]).into_owned();
        let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status line");
        let bytes = received[header_end..header_end + length].to_vec();
        Answer {
            status,
            json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            bytes,
            headers: reqwest::header::HeaderMap::new(),
        }
    }

    /// GET without a token.
    pub fn get(&self, path: &str) -> Answer {
        self.request("GET", path, None, None)
    }

    /// POST of a JSON value with the admin token.
    pub fn post(&self, path: &str, body: Value) -> Answer {
        self.request("POST", path, Some(body.to_string().into_bytes()), Some(&self.token))
    }

    /// DELETE with the admin token.
    pub fn delete(&self, path: &str) -> Answer {
        self.request("DELETE", path, None, Some(&self.token))
    }

    /// Creates a repository and checks it was created.
    pub fn create_repo(&self, name: &str) -> Value {
        let answer = self.post("/api/v1/repos", serde_json::json!({ "name": name }));
        assert_eq!(answer.status, 201, "create {name}: {answer:?}");
        answer.json
    }

    /// The clone URL of a repository with the token as basic-auth password (what git sends).
    pub fn push_url(&self, repo: &str) -> String {
        let host = self.url.trim_start_matches("http://");
        format!("http://admin:{}@{host}/{repo}.git", self.token)
    }

    /// Runs the `wharf` CLI against this front with the admin token.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(wharf_binary())
            .args(args)
            .env("WHARF_URL", &self.url)
            .env("WHARF_TOKEN", &self.token)
            .output()
            .expect("run the wharf CLI")
    }

    /// The anonymous clone URL of a repository.
    pub fn clone_url(&self, repo: &str) -> String {
        format!("{}/{repo}.git", self.url)
    }
}


/// Polls `condition` until it holds, or panics naming `what` after `deadline`.
pub fn wait_until(what: &str, deadline: Duration, mut condition: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if condition() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {deadline:?} waiting until {what}");
}

/// Runs the real `git` in `dir` with a clean configuration, and returns its output.
pub fn git(dir: &Path, args: &[&str]) -> Output {
    Command::new("git")
        .args(["-c", "user.name=Test", "-c", "user.email=test@example.com", "-c", "init.defaultBranch=main"])
        .args(["-c", "protocol.version=2", "-c", "credential.helper="])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env_remove("GIT_DIR")
        .output()
        .expect("run git")
}

/// Runs git and panics with its stderr unless it succeeds; returns stdout.
pub fn git_ok(dir: &Path, args: &[&str]) -> String {
    let output = git(dir, args);
    assert!(
        output.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Every file under `root` (except `.git`) with its content, by relative path.
pub fn files_under(root: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut std::collections::BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
            let path = entry.path();
            if entry.file_name() == ".git" {
                continue;
            }
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let relative = path.strip_prefix(root).expect("under root").to_string_lossy().into_owned();
                out.insert(relative, std::fs::read(&path).expect("read file"));
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// A directory that jobs share with the test (through `--sandbox-volume`), where they leave
/// marks and the test answers: writable by the sandbox user, as a volume must be.
pub fn marks_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let marks = tempfile::tempdir().unwrap();
    std::fs::set_permissions(marks.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    marks
}

/// Whether a process whose command line contains `needle` runs on this machine (a sandboxed
/// job's processes have other ids in their own PID namespace, so they are found by name).
pub fn process_running(needle: &str) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else { return false };
    entries.flatten().any(|entry| {
        std::fs::read(entry.path().join("cmdline")).is_ok_and(|cmdline| {
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            text.contains(needle)
        })
    })
}

/// Commits `files` in a new repository and pushes them to `repo`; returns the commit.
pub fn push(wharf: &Wharf, repo: &str, files: &[(&str, &str)]) -> String {
    push_tree(wharf, repo, |dir| {
        for (path, content) in files {
            let path = dir.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
    })
}

/// Commits what `setup` makes in a new repository's work tree (links included) and pushes it
/// to `repo`; returns the commit.
pub fn push_tree(wharf: &Wharf, repo: &str, setup: impl FnOnce(&Path)) -> String {
    let work = tempfile::tempdir().unwrap();
    setup(work.path());
    git_ok(work.path(), &["init", "-q"]);
    git_ok(work.path(), &["add", "."]);
    git_ok(work.path(), &["commit", "-qm", "pipeline"]);
    git_ok(work.path(), &["push", "-q", &wharf.push_url(repo), "main"]);
    git_ok(work.path(), &["rev-parse", "HEAD"]).trim().to_owned()
}

/// Waits for the repository's first pipeline to finish and returns it with its jobs.
pub fn finished_pipeline(wharf: &Wharf, repo: &str) -> Value {
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

/// The job `name` of a pipeline as the API shows it.
pub fn job<'a>(pipeline: &'a Value, name: &str) -> &'a Value {
    pipeline["jobs"].as_array().unwrap().iter().find(|j| j["name"] == name).unwrap()
}

/// The number in an id the deployment API shows with its kind (`env-3`, `deploy-7`,
/// `inst-12`), or in a bare number.
pub fn id_number(value: &Value) -> u64 {
    value
        .as_u64()
        .or_else(|| value.as_str()?.rsplit('-').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{value} is not an id"))
}

/// Resident memory of a process in MiB, from `/proc` (0 if it cannot be read).
pub fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}
