//! Operating conventions (SPEC section 16): the config file (the example
//! in docs/operations.md runs and matches `--help`; precedence flag >
//! environment > file > default; bad files exit 2 with one line), shell
//! completions and the man page, and systemd's `NOTIFY_SOCKET`
//! (`READY=1`, `STATUS=`, `STOPPING=1`, path and abstract sockets).

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use taskmaster_tests::{bin, cli, output_within, Master};

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A file in the temp directory, unique to this test run, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, contents: &str) -> TempFile {
        let path = std::env::temp_dir().join(format!(
            "taskmaster-conventions-{}-{name}",
            std::process::id()
        ));
        std::fs::write(&path, contents).unwrap();
        TempFile(path)
    }
    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The config file example of docs/operations.md, between its markers.
fn doc_example() -> String {
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/operations.md");
    let doc = std::fs::read_to_string(doc).unwrap();
    let start = doc
        .find("<!-- config-example -->")
        .expect("start marker in docs/operations.md");
    let end = doc
        .find("<!-- /config-example -->")
        .expect("end marker in docs/operations.md");
    doc[start..end]
        .lines()
        .skip(1)
        .filter(|l| !l.starts_with("```"))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// The master's flags as `taskmaster --help` shows them: name, whether it
/// takes a value, and its default (the last `[default: ...]`, after
/// `[env: ...]`: a description may hold its own `[default: ...]`).
fn serve_flags() -> Vec<(String, bool, Option<String>)> {
    let o = output_within(
        std::process::Command::new(bin("taskmaster")).arg("--help"),
        Duration::from_secs(10),
    );
    let help = String::from_utf8(o.stdout).unwrap();
    let mut flags = Vec::new();
    for line in help.lines().map(str::trim_start) {
        let Some(rest) = line.strip_prefix("--") else {
            continue;
        };
        let name = rest.split_whitespace().next().unwrap().to_owned();
        if ["config", "help", "version"].contains(&name.as_str()) {
            continue;
        }
        let takes_value = rest[name.len()..].trim_start().starts_with('<');
        let after_env = line.rsplit("[env: ").next().unwrap();
        let default = after_env
            .split("[default: ")
            .nth(1)
            .map(|d| d.trim_end().trim_end_matches(']').to_owned());
        flags.push((name, takes_value, default));
    }
    assert!(flags.len() > 30, "flags from --help: {flags:?}");
    flags
}

/// The same value, whether written `30`, `30.0` or `"30"`.
fn same_value(toml: &str, default: &str) -> bool {
    let toml = toml.trim().trim_matches('"');
    match (toml.parse::<f64>(), default.parse::<f64>()) {
        (Ok(a), Ok(b)) => a == b,
        _ => toml == default,
    }
}

#[tokio::test]
async fn the_documented_config_file_covers_every_flag_and_runs() {
    let example = doc_example();
    for (name, takes_value, default) in serve_flags() {
        let set = example
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} = ")));
        let commented = example
            .lines()
            .any(|l| l.starts_with(&format!("# {name} = ")));
        match (takes_value, default) {
            (true, Some(default)) => {
                let value = set.unwrap_or_else(|| panic!("the example lacks `{name} = {default}`"));
                assert!(
                    same_value(value, &default),
                    "example: {name} = {value}, but its default is {default}"
                );
            }
            // No default: shown commented out, with a sample value.
            (true, None) => assert!(commented, "the example lacks `# {name} = ...`"),
            (false, _) => assert_eq!(set, Some("false"), "example: {name} = false"),
        }
    }

    // It parses and runs; --listen on the command line beats the file's
    // 127.0.0.1:7400 (which another master may hold).
    let file = TempFile::new("example.toml", &example);
    let master = Master::start_exact(&["--config", file.path(), "--listen", "127.0.0.1:0"]);
    assert_ne!(master.addr, "127.0.0.1:7400");
    master.wait_log("pool ready", Duration::from_secs(10));
    let stats = master.client().await.stats().await.unwrap();
    assert_eq!((stats.pool.start, stats.pool.max), (2, 4));
    assert_eq!(stats.queue.max, 100);
}

#[tokio::test]
async fn flag_beats_environment_beats_file_beats_default() {
    let file = TempFile::new(
        "precedence.toml",
        "pool-start = 1\npool-max = 5\njob-max = 7\n",
    );
    // The file through TASKMASTER_CONFIG; pool-max also in the
    // environment, job-max also on the command line; keep-results only
    // in the file; max-connections nowhere.
    let master = Master::start_exact_env(
        &["--listen", "127.0.0.1:0", "--job-max", "9"],
        &[
            ("TASKMASTER_CONFIG", file.path()),
            ("TASKMASTER_POOL_MAX", "6"),
        ],
    );
    master.wait_log("pool ready", Duration::from_secs(10));
    let stats = master.client().await.stats().await.unwrap();
    assert_eq!(stats.pool.start, 1, "file over default");
    assert_eq!(stats.pool.max, 6, "environment over file");
    assert_eq!(stats.queue.max, 9, "flag over file");

    // A switch from the file: insecure = true lets a wildcard address
    // listen without a token (refused with exit 2 otherwise).
    let file = TempFile::new("insecure.toml", "insecure = true\npool-start = 0\n");
    let master = Master::start_exact(&["--config", file.path(), "--listen", "0.0.0.0:0"]);
    assert!(master.addr.starts_with("0.0.0.0:"), "{}", master.addr);
}

#[test]
fn bad_config_files_exit_2_with_one_line_naming_the_file_and_key() {
    let missing = std::env::temp_dir().join("taskmaster-conventions-no-such.toml");
    let missing = missing.to_str().unwrap();
    let cases = [
        ("unknown", "pool_max = 3\n", "unknown key \"pool_max\""),
        (
            "itself",
            "config = \"other.toml\"\n",
            "unknown key \"config\"",
        ),
        (
            "client",
            "connect = \"127.0.0.1:1\"\n",
            "unknown key \"connect\"",
        ),
        (
            "type",
            "pool-max = \"8\"\n",
            "pool-max: expected an integer, got a string",
        ),
        (
            "switch",
            "insecure = \"yes\"\n",
            "insecure: expected true or false",
        ),
        (
            "address",
            "http = 7401\n",
            "http: expected a string, got an integer",
        ),
        ("refused", "grace = -1\n", "grace: invalid value '-1'"),
        (
            "prefetch",
            "prefetch = \"lots\"\n",
            "prefetch: invalid value 'lots'",
        ),
        (
            "syntax",
            "pool-max = 8\npool-start = two\n",
            "line 2, column",
        ),
    ];
    let files: Vec<TempFile> = cases
        .iter()
        .map(|(name, toml, _)| TempFile::new(&format!("bad-{name}.toml"), toml))
        .collect();
    let mut runs: Vec<(&str, String)> = files
        .iter()
        .zip(cases)
        .map(|(file, (_, _, needle))| (file.path(), format!("{}: {needle}", file.path())))
        .collect();
    runs.push((missing, format!("config file {missing}: No such file")));
    for (path, needle) in runs {
        let o = output_within(
            std::process::Command::new(bin("taskmaster")).args([
                "--listen",
                "127.0.0.1:0",
                "--config",
                path,
            ]),
            Duration::from_secs(10),
        );
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{needle}: {err}");
        assert_eq!(err.lines().count(), 1, "{needle}: one line, got {err:?}");
        assert!(err.starts_with("taskmaster: config file "), "{err:?}");
        assert!(err.contains(&needle), "{err:?} should contain {needle:?}");
    }
}

#[test]
fn completions_and_man_are_generated_from_the_flags() {
    let text = |args: &[&str]| {
        let o = cli(args, b"");
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
        String::from_utf8(o.stdout).unwrap()
    };
    let bash = text(&["completions", "bash"]);
    assert!(bash.contains("submit"), "bash completion lacks submit");
    assert!(
        bash.contains("--pool-max"),
        "bash completion lacks --pool-max"
    );
    for shell in ["zsh", "fish"] {
        let script = text(&["completions", shell]);
        assert!(script.contains("taskmaster"), "{shell}: {script:.200}");
        assert!(script.contains("pool-max"), "{shell}: lacks pool-max");
    }
    let o = cli(&["completions", "tcsh"], b"");
    assert_eq!(o.status.code(), Some(2), "unknown shell: {}", stderr(&o));

    let man = text(&["man"]);
    // roff: a preamble of string definitions (`.ie`/`.el`), then `.TH`
    // before any content.
    let first_macro = man
        .lines()
        .find(|l| !l.starts_with(".ie") && !l.starts_with(".el"))
        .unwrap_or("");
    assert!(
        first_macro.starts_with(".TH taskmaster 1"),
        "man page header: {first_macro:?}"
    );
    // roff escapes a hyphen as `\-`.
    let plain = man.replace("\\-", "-");
    for needle in [
        "--state-dir",
        "TASKMASTER_STATE_DIR",
        "--config",
        "completions",
    ] {
        assert!(plain.contains(needle), "man page lacks {needle}");
    }
}

/// Datagrams on `socket` until one contains `line` as a whole line (10 s
/// at most); every datagram received, that one last.
fn receive_until(socket: &UnixDatagram, line: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no {line:?} within 10 s; got {got:?}");
        socket.set_read_timeout(Some(left)).unwrap();
        match socket.recv(&mut buf) {
            Ok(n) => {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let done = text.lines().any(|l| l == line);
                got.push(text);
                if done {
                    return got;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
            Err(e) => panic!("recv: {e}"),
        }
    }
}

#[test]
fn notify_socket_hears_ready_status_and_stopping() {
    let path = std::env::temp_dir().join(format!("taskmaster-notify-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let socket = UnixDatagram::bind(&path).unwrap();
    let mut master = Master::start_exact_env(
        &["--listen", "127.0.0.1:0", "--pool-start", "2"],
        &[("NOTIFY_SOCKET", path.to_str().unwrap())],
    );
    let got = receive_until(&socket, "READY=1");
    // Ready only once the pool is: both children up, and said with a
    // summary.
    master.wait_log("pool ready", Duration::from_secs(10));
    let ready = got.last().unwrap();
    assert!(
        ready
            .lines()
            .any(|l| l.starts_with("STATUS=2 children, 0 busy, 0 queued")),
        "{got:?}"
    );
    // The variable is the master's alone: no child inherits it.
    for child in master.children() {
        let environ = std::fs::read(format!("/proc/{child}/environ")).unwrap_or_default();
        assert!(
            !environ
                .split(|&b| b == 0)
                .any(|v| v.starts_with(b"NOTIFY_SOCKET=")),
            "child {child} inherited NOTIFY_SOCKET"
        );
    }

    master.signal(nix::sys::signal::Signal::SIGTERM);
    let got = receive_until(&socket, "STOPPING=1");
    assert!(
        !got.iter().any(|d| d.contains("READY=1")),
        "READY=1 said twice: {got:?}"
    );
    assert!(master.wait_exit(Duration::from_secs(10)).success());
    let _ = std::fs::remove_file(&path);
}

#[test]
fn notify_socket_may_be_abstract() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("taskmaster-notify-test-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let socket = UnixDatagram::bind_addr(&addr).unwrap();
    // --pool-start 0: ready at once, without a `pool-ready` event.
    let master = Master::start_exact_env(
        &["--listen", "127.0.0.1:0", "--pool-start", "0"],
        &[("NOTIFY_SOCKET", &format!("@{name}"))],
    );
    receive_until(&socket, "READY=1");
    master.signal(nix::sys::signal::Signal::SIGINT);
    receive_until(&socket, "STOPPING=1");
}
