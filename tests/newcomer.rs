//! A newcomer's first hour (issue 13): the README's tour runs as written, and the CLI finds its
//! credentials, says where a refused token came from, prints JSON on request and completes.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;
use wharf_tests::{wharf_binary, Wharf};

/// The CLI as a newcomer runs it: no WHARF_* variables, an empty config directory `config`,
/// in `cwd` (where no `wharf-data` is).
fn newcomer_cli(config: &Path, cwd: &Path, args: &[&str]) -> Output {
    Command::new(wharf_binary())
        .args(args)
        .env_remove("WHARF_URL")
        .env_remove("WHARF_TOKEN")
        .env("XDG_CONFIG_HOME", config)
        .current_dir(cwd)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run the wharf CLI")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `scripts/newcomer.sh` runs the README's quick tour and walkthrough from a fresh clone.
#[test]
fn the_readme_tour_and_walkthrough_work_as_written() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let output = Command::new("bash")
        .arg(root.join("scripts/newcomer.sh"))
        .env("WHARF_BIN", wharf_binary())
        .output()
        .expect("run scripts/newcomer.sh");
    assert!(output.status.success(), "{}\n{}", text(&output.stdout), text(&output.stderr));
    assert!(text(&output.stdout).contains("every step of the README worked"));
}

#[test]
fn login_saves_credentials_that_later_commands_use_and_a_401_names_the_token_source() {
    let data = tempfile::tempdir().unwrap();
    let wharf = Wharf::start(data.path());
    let home = tempfile::tempdir().unwrap();
    let (config, cwd) = (home.path().join("config"), home.path());

    // No token anywhere: the refusal says so and how to give one.
    let refused = newcomer_cli(&config, cwd, &["repo", "create", "acme/first", "--url", &wharf.url]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(text(&refused.stderr).contains("401") && text(&refused.stderr).contains("no token"), "{}", text(&refused.stderr));

    // A wrong token from each source is named.
    let flag = newcomer_cli(&config, cwd, &["--token", "wharf_wrong", "repo", "create", "acme/x", "--url", &wharf.url]);
    assert!(text(&flag.stderr).contains("the token came from the --token flag"), "{}", text(&flag.stderr));
    let env = Command::new(wharf_binary())
        .args(["repo", "create", "acme/x"])
        .env("WHARF_URL", &wharf.url)
        .env("WHARF_TOKEN", "wharf_wrong")
        .env("XDG_CONFIG_HOME", &config)
        .current_dir(cwd)
        .output()
        .unwrap();
    assert!(text(&env.stderr).contains("the token came from the WHARF_TOKEN variable"), "{}", text(&env.stderr));

    // A stale admin token of an earlier `wharf dev` in the current directory is used as a last
    // resort, said when used, and named when refused.
    let stale_dir = home.path().join("old-project");
    std::fs::create_dir_all(stale_dir.join("wharf-data")).unwrap();
    std::fs::write(stale_dir.join("wharf-data/admin-token"), "wharf_stale\n").unwrap();
    let stale = newcomer_cli(&config, &stale_dir, &["repo", "create", "acme/x", "--url", &wharf.url]);
    let said = text(&stale.stderr);
    assert!(said.contains("using the token in ./wharf-data/admin-token"), "{said}");
    assert!(said.contains("401") && said.contains("wharf-data/admin-token (the admin token of a `wharf dev` here"), "{said}");

    // `wharf login` checks the token first: a wrong one is not saved.
    let wrong = newcomer_cli(&config, cwd, &["login", "--url", &wharf.url, "--token", "wharf_wrong"]);
    assert_eq!(wrong.status.code(), Some(1));
    assert!(text(&wrong.stderr).contains("did not accept the token"), "{}", text(&wrong.stderr));
    assert!(!config.join("wharf/config.toml").exists());

    // `wharf login` reads the token from standard input and writes a 0600 file.
    let mut login = Command::new(wharf_binary())
        .args(["login", "--url", &wharf.url])
        .env_remove("WHARF_URL")
        .env_remove("WHARF_TOKEN")
        .env("XDG_CONFIG_HOME", &config)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut login.stdin.take().unwrap(), format!("{}\n", wharf.token).as_bytes()).unwrap();
    let login = login.wait_with_output().unwrap();
    assert!(login.status.success(), "{}", text(&login.stderr));
    let file = config.join("wharf/config.toml");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);

    // Then a command without any variable or flag works, from any directory.
    let created = newcomer_cli(&config, cwd, &["repo", "create", "acme/first"]);
    assert!(created.status.success(), "{}", text(&created.stderr));
    let listed = newcomer_cli(&config, cwd, &["repo", "list", "--json"]);
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    let listed: Value = serde_json::from_slice(&listed.stdout).expect("--json prints JSON");
    assert_eq!(listed["repos"][0]["name"], "acme/first");

    // The flag wins over the file, and a wrong saved token is named as the file's.
    let flag = newcomer_cli(&config, cwd, &["repo", "delete", "acme/first", "--token", "wharf_wrong"]);
    assert!(text(&flag.stderr).contains("--token flag"), "{}", text(&flag.stderr));
    std::fs::write(&file, format!("url = \"{}\"\ntoken = \"wharf_stale\"\n", wharf.url)).unwrap();
    let stale = newcomer_cli(&config, cwd, &["repo", "delete", "acme/first"]);
    assert!(text(&stale.stderr).contains("the token came from the config file"), "{}", text(&stale.stderr));
}

#[test]
fn every_data_command_prints_json_on_request_and_tables_otherwise() {
    let data = tempfile::tempdir().unwrap();
    let wharf = Wharf::start(data.path());
    wharf.create_repo("acme/app");
    for args in [
        &["repo", "list", "--json"][..],
        &["repo", "show", "acme/app", "--json"],
        &["branch", "list", "acme/app", "--json"],
        &["cluster", "status", "--json"],
        &["pipeline", "list", "acme/app", "--json"],
        &["variable", "list", "acme/app", "--json"],
        &["env", "list", "--json"],
    ] {
        let output = wharf.cli(args);
        assert!(output.status.success(), "{args:?}: {}", text(&output.stderr));
        serde_json::from_slice::<Value>(&output.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {}", text(&output.stdout)));
    }
    // The table's columns line up: every row of `cluster status` starts its ADDRESS column
    // where the header does.
    let status = text(&wharf.cli(&["cluster", "status"]).stdout);
    let lines: Vec<&str> = status.lines().skip(1).collect();
    let column = lines[0].find("ADDRESS").unwrap();
    assert!(lines[1..].iter().all(|l| l[column..].starts_with("127.0.0.1:")), "{status}");
}

#[test]
fn completions_and_help_are_for_the_command_at_hand() {
    let run = |args: &[&str]| Command::new(wharf_binary()).args(args).output().unwrap();
    let bash = run(&["completions", "bash"]);
    assert!(bash.status.success());
    assert!(text(&bash.stdout).contains("complete -F _wharf"), "{}", text(&bash.stdout));

    let node = text(&run(&["node", "--help"]).stdout);
    assert!(node.contains("--weight") && !node.contains("--http "), "{node}");
    let front = text(&run(&["front", "--help"]).stdout);
    assert!(front.contains("--http ") && !front.contains("--weight") && !front.contains("--sandbox"), "{front}");
    // The servers take no client flags.
    assert!(!node.contains("--token") && !front.contains("--json"), "{node}");
    // Positional arguments say what they are.
    let create = text(&run(&["repo", "create", "--help"]).stdout);
    assert!(create.contains("The repository, as owner/name"), "{create}");
}
