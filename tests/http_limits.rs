//! The HTTP front probed as an attacker would (issue 14): large anonymous bodies, slow-loris
//! connections, bodies of the wrong type, bursts of writes and of bad tokens, made-up methods,
//! and names that git cannot store or that disguise themselves. Each test asserts what a
//! client sees.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;
use wharf_tests::{git, git_ok, rss_mib, Wharf};

fn host(wharf: &Wharf) -> String {
    wharf.url.trim_start_matches("http://").to_owned()
}

fn connect(host: &str) -> TcpStream {
    let stream = TcpStream::connect(host).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(60))).expect("read timeout");
    stream
}

/// Sends `head`, then `body_bytes` of body (chunked when `chunked`) from another thread while
/// this one reads the answer's status line. The status, or `None` when the connection ended
/// without one.
fn send_big(host: &str, head: &str, body_bytes: usize, chunked: bool) -> Option<u16> {
    let mut stream = connect(host);
    stream.write_all(head.as_bytes()).expect("send head");
    let mut writer = stream.try_clone().expect("clone stream");
    let sender = std::thread::spawn(move || {
        let block = vec![b'x'; 64 << 10];
        let mut sent = 0;
        while sent < body_bytes {
            let n = block.len().min(body_bytes - sent);
            let result = if chunked {
                writer
                    .write_all(format!("{n:x}\r\n").as_bytes())
                    .and_then(|()| writer.write_all(&block[..n]))
                    .and_then(|()| writer.write_all(b"\r\n"))
            } else {
                writer.write_all(&block[..n])
            };
            if result.is_err() {
                // The server closed the connection: it wants no more of this body.
                return;
            }
            sent += n;
        }
        if chunked {
            let _ = writer.write_all(b"0\r\n\r\n");
        }
    });
    let mut received = Vec::new();
    let mut buffer = [0u8; 1024];
    let status = loop {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break None,
            Ok(n) => received.extend_from_slice(&buffer[..n]),
        }
        if let Some(line_end) = received.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&received[..line_end]).into_owned();
            break line.split_whitespace().nth(1).and_then(|s| s.parse().ok());
        }
    };
    let _ = stream.shutdown(std::net::Shutdown::Both);
    let _ = sender.join();
    status
}

/// Eight anonymous 30 MB bodies to API writes and to git-receive-pack, with and without a
/// `Content-Length`, are refused with 401 before they are read: the server's memory stays
/// flat. An authenticated body over a route's limit is refused with 413 in both forms.
#[test]
fn anonymous_bodies_are_refused_before_they_are_read() {
    let data = tempfile::tempdir().unwrap();
    let wharf = Wharf::start(data.path());
    wharf.create_repo("acme/app");
    let pid = wharf.pid().expect("running");
    let before = rss_mib(pid);
    let size = 30 << 20;
    let started = Instant::now();
    let targets = [
        ("POST", "/api/v1/repos", "application/json"),
        ("POST", "/api/v1/repos/acme/app/commits", "application/json"),
        ("PUT", "/api/v1/repos/acme/app/variables", "application/json"),
        ("POST", "/acme/app.git/git-receive-pack", "application/x-git-receive-pack-request"),
    ];
    let probes: Vec<_> = targets
        .iter()
        .flat_map(|target| [(*target, false), (*target, true)])
        .map(|((method, path, content_type), chunked)| {
            let framing = if chunked {
                "Transfer-Encoding: chunked".to_owned()
            } else {
                format!("Content-Length: {size}")
            };
            let head = format!("{method} {path} HTTP/1.1\r\nHost: wharf\r\nContent-Type: {content_type}\r\n{framing}\r\n\r\n");
            let host = host(&wharf);
            std::thread::spawn(move || (method, path, chunked, send_big(&host, &head, size, chunked)))
        })
        .collect();
    for probe in probes {
        let (method, path, chunked, status) = probe.join().unwrap();
        assert_eq!(status, Some(401), "{method} {path} (chunked: {chunked})");
    }
    let elapsed = started.elapsed();
    let after = rss_mib(pid);
    eprintln!("8 anonymous 30 MB bodies refused in {elapsed:?}; VmRSS {before:.1} -> {after:.1} MiB");
    assert!(after - before < 50.0, "memory grew from {before:.1} MiB to {after:.1} MiB");

    // With a token, a body over the route's limit: refused from its length, or while read.
    let head = |framing: &str| {
        format!(
            "POST /api/v1/repos HTTP/1.1\r\nHost: wharf\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\n{framing}\r\n\r\n",
            wharf.token
        )
    };
    assert_eq!(send_big(&host(&wharf), &head(&format!("Content-Length: {}", 2 << 20)), 2 << 20, false), Some(413));
    assert_eq!(send_big(&host(&wharf), &head("Transfer-Encoding: chunked"), 2 << 20, true), Some(413));
    let after_authenticated = rss_mib(pid);
    assert!(after_authenticated - before < 50.0, "memory grew to {after_authenticated:.1} MiB");
    // The server is still healthy and nothing was created.
    assert_eq!(wharf.get("/api/v1/repos").json["repos"].as_array().map(Vec::len), Some(1));
}

/// A connection that sends nothing, one that sends its headers a byte at a time, and an idle
/// keep-alive connection are all closed by the server after the header-read timeout.
#[test]
fn slow_and_idle_connections_are_closed() {
    let data = tempfile::tempdir().unwrap();
    let wharf = Wharf::start_with_env(data.path(), &[], &[("WHARF_HTTP_HEADER_TIMEOUT_SECS", "2")]);
    let deadline = Duration::from_secs(15);

    // Opens and sends nothing.
    let started = Instant::now();
    let mut silent = connect(&host(&wharf));
    let mut buffer = [0u8; 1024];
    let read = silent.read(&mut buffer);
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let silent_closed = started.elapsed();
    assert!(silent_closed < deadline, "closed after {silent_closed:?}");

    // Sends its head one byte every 200 ms, for ever.
    let started = Instant::now();
    let mut slow = connect(&host(&wharf));
    let head = b"GET /healthz HTTP/1.1\r\nHost: wharf\r\nX-Padding: ".to_vec();
    let mut closed = false;
    for byte in head.iter().chain(std::iter::repeat(&b'a')) {
        if slow.write_all(&[*byte]).is_err() {
            closed = true;
            break;
        }
        if started.elapsed() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let slow_closed = started.elapsed();
    assert!(closed, "a head sent a byte at a time was still accepted after {slow_closed:?}");

    // A keep-alive connection that answered once, then stays idle.
    let mut idle = connect(&host(&wharf));
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: wharf\r\n\r\n").unwrap();
    let n = idle.read(&mut buffer).unwrap();
    assert!(String::from_utf8_lossy(&buffer[..n]).starts_with("HTTP/1.1 200"), "a quick client is served");
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = idle.read_to_end(&mut rest);
    let idle_closed = started.elapsed();
    assert!(idle_closed < deadline, "idle connection closed after {idle_closed:?}");
    eprintln!("closed: silent after {silent_closed:?}, byte-a-time after {slow_closed:?}, idle after {idle_closed:?}");

    // Shutdown still works with connections open.
    let _open = connect(&host(&wharf));
    let mut wharf = wharf;
    wharf.stop();
}

/// JSON endpoints take only JSON: a form, plain text or no type is refused with 415 and a
/// JSON error body (a cross-site form post cannot set `application/json`).
#[test]
fn json_endpoints_refuse_other_content_types() {
    let data = tempfile::tempdir().unwrap();
    let wharf = Wharf::start(data.path());
    let client = reqwest::blocking::Client::new();
    let post = |content_type: Option<&str>, name: &str| {
        let mut request = client
            .post(format!("{}/api/v1/repos", wharf.url))
            .bearer_auth(&wharf.token)
            .body(json!({ "name": name }).to_string());
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.send().unwrap();
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().unwrap_or(serde_json::Value::Null);
        (status, body["error"]["code"].as_str().unwrap_or("").to_owned())
    };
    for content_type in [Some("application/x-www-form-urlencoded"), Some("text/plain"), Some("multipart/form-data; boundary=x"), None] {
        assert_eq!(post(content_type, "acme/form"), (415, "unsupported_media_type".to_owned()), "{content_type:?}");
    }
    assert_eq!(post(Some("application/json; charset=utf-8"), "acme/one").0, 201);
    assert_eq!(post(Some("Application/JSON"), "acme/two").0, 201);
    assert_eq!(wharf.get("/api/v1/repos").json["repos"].as_array().map(Vec::len), Some(2));
    // Arguments as a query still work where a body is optional.
    assert_eq!(wharf.get("/api/v1/repo/details?repo_url=acme/one").status, 200);
}

/// Past its burst, a client's writes get 429 with `Retry-After` and a JSON body; so do its
/// requests with a token once it has sent too many bad ones; other clients' reads go on.
#[test]
fn bursts_of_writes_and_of_bad_tokens_are_limited() {
    let data = tempfile::tempdir().unwrap();
    let env = [
        ("WHARF_HTTP_WRITE_RATE", "1"),
        ("WHARF_HTTP_WRITE_BURST", "5"),
        ("WHARF_HTTP_AUTH_FAILURES_PER_MINUTE", "6"),
        ("WHARF_HTTP_AUTH_FAILURE_BURST", "3"),
    ];
    let wharf = Wharf::start_with_env(data.path(), &[], &env);
    let statuses: Vec<u16> = (0..8).map(|i| wharf.post("/api/v1/repos", json!({ "name": format!("acme/r{i}") })).status).collect();
    assert_eq!(&statuses[..5], [201; 5], "{statuses:?}");
    assert!(statuses[5..].contains(&429), "{statuses:?}");
    let limited = wharf.post("/api/v1/repos", json!({"name": "acme/over"}));
    assert_eq!((limited.status, limited.error_code()), (429, "rate_limited"), "{limited:?}");
    let retry_after: u64 = limited.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry_after), "Retry-After: {retry_after}");
    assert_eq!(wharf.get("/api/v1/repos").status, 200, "reads are not writes");

    // Bad tokens: three are answered 401, then the client is held off, whatever it sends.
    let bad: Vec<u16> = (0..5).map(|_| wharf.request("GET", "/api/v1/repos", None, Some("guess")).status).collect();
    assert_eq!(bad, [401, 401, 401, 429, 429]);
    let held = wharf.request("POST", "/api/v1/repos", Some(b"{}".to_vec()), Some("guess"));
    assert_eq!((held.status, held.error_code()), (429, "rate_limited"));
    assert!(held.headers.contains_key("retry-after"));
    // Without a token, anonymous reads are still served.
    assert_eq!(wharf.get("/api/v1/repos").status, 200);
}

/// Made-up methods do not create metric series: they are counted under `other`.
#[test]
fn made_up_methods_create_no_metric_series() {
    let data = tempfile::tempdir().unwrap();
    let wharf = Wharf::start(data.path());
    for method in ["BREW", "WHARFPROBE1", "WHARFPROBE2"] {
        for path in ["/api/v1/repos", "/nothing/here", "/acme/app.git/info/refs"] {
            let answer = wharf.request(method, path, None, None);
            assert!(answer.status >= 400, "{method} {path}: {answer:?}");
        }
    }
    let metrics = String::from_utf8(wharf.get("/metrics").bytes).unwrap();
    assert!(!metrics.contains("BREW") && !metrics.contains("WHARFPROBE"), "a made-up method became a label");
    assert!(metrics.contains("method=\"other\""), "made-up methods are counted as other");
    assert!(!metrics.contains("/nothing/here"), "a raw path became a label");
}

/// Names git cannot store, `.git` in disguise, invisible characters and a second repository
/// name that differs only by case are refused with 4xx and a JSON message; nothing is created.
#[test]
fn bad_names_are_refused_with_a_clear_message() {
    let data = tempfile::tempdir().unwrap();
    let wharf = Wharf::start(data.path());
    wharf.create_repo("acme/app");
    let commit = |branch: &str, path: &str| {
        wharf.post(
            "/api/v1/repos/acme/app/commits",
            json!({"branch": branch, "message": "m", "actions": [{"action": "create", "path": path, "content": "x"}]}),
        )
    };
    assert_eq!(commit("main", "README.md").status, 201);
    for branch in ["a.lock/b", "x.lock", "ma\u{202E}in", "ma\u{200B}in", "a/.b"] {
        let created = wharf.post("/api/v1/repos/acme/app/branches", json!({ "name": branch }));
        assert_eq!((created.status, created.error_code()), (400, "invalid_name"), "{branch:?}: {created:?}");
        assert!(created.json["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
        let committed = commit(branch, "ok.txt");
        assert_eq!(committed.status, 400, "{branch:?}: {committed:?}");
    }
    for path in ["GIT~1/config", ".git\u{200C}/config", ".GIT/config", ".git./x", "a/\u{202E}txt.exe"] {
        let committed = commit("main", path);
        assert_eq!((committed.status, committed.error_code()), (400, "invalid_request"), "{path:?}: {committed:?}");
        assert!(committed.json["error"]["message"].as_str().is_some_and(|m| m.contains("path")), "{committed:?}");
    }
    let branches = wharf.get("/api/v1/repos/acme/app/branches");
    assert_eq!(branches.json["branches"].as_array().map(Vec::len), Some(1), "{branches:?}");

    for name in ["Acme/App", "ACME/app", "acme/APP"] {
        let twin = wharf.post("/api/v1/repos", json!({ "name": name }));
        assert_eq!((twin.status, twin.error_code()), (409, "repo_exists"), "{name}: {twin:?}");
    }
    assert_eq!(wharf.get("/api/v1/repos").json["repos"].as_array().map(Vec::len), Some(1));
}

/// A commit that no ref reaches any more cannot be fetched by its id, whichever protocol the
/// client asks for (a client asking for v2 gets v0, whose upload-pack checks wants).
#[test]
fn a_deleted_commit_cannot_be_fetched_by_its_id() {
    let data = tempfile::tempdir().unwrap();
    let wharf = Wharf::start(data.path());
    wharf.create_repo("acme/app");
    let work = tempfile::tempdir().unwrap();
    git_ok(work.path(), &["init", "-q"]);
    std::fs::write(work.path().join("a.txt"), "public\n").unwrap();
    git_ok(work.path(), &["add", "a.txt"]);
    git_ok(work.path(), &["commit", "-qm", "public"]);
    git_ok(work.path(), &["push", "-q", &wharf.push_url("acme/app"), "main"]);
    std::fs::write(work.path().join("secret.txt"), "a secret pushed by mistake\n").unwrap();
    git_ok(work.path(), &["add", "secret.txt"]);
    git_ok(work.path(), &["commit", "-qm", "oops"]);
    let secret = git_ok(work.path(), &["rev-parse", "HEAD"]).trim().to_owned();
    git_ok(work.path(), &["push", "-q", &wharf.push_url("acme/app"), "HEAD:refs/heads/oops"]);
    git_ok(work.path(), &["push", "-q", &wharf.push_url("acme/app"), ":refs/heads/oops"]);

    for version in ["0", "1", "2"] {
        let probe = tempfile::tempdir().unwrap();
        git_ok(probe.path(), &["init", "-q"]);
        let fetched = git(
            probe.path(),
            &["-c", &format!("protocol.version={version}"), "fetch", &wharf.clone_url("acme/app"), &secret],
        );
        assert!(!fetched.status.success(), "protocol v{version} fetched the deleted commit {secret}");
    }
    // What refs reach is still served.
    let clone = tempfile::tempdir().unwrap();
    git_ok(clone.path(), &["clone", "-q", &wharf.clone_url("acme/app"), "copy"]);
}
