//! docs/openapi.yaml checked against the running server by schemathesis
//! (PyPI): `st run docs/openapi.yaml --checks all`, every phase (examples,
//! coverage, fuzzing, stateful), against a master without a client token
//! and one with `--token-file`. Any failure fails the test with
//! schemathesis' report, which names the request and a curl line for it.
//!
//! schemathesis is installed once, pinned, into a cache directory of the
//! target dir (`pip install --target`), so the tests need Python 3 with
//! pip and reach PyPI the first time only. If it cannot be installed the
//! test fails with the command to run by hand: it never skips, or the
//! document could drift from the server unnoticed.
//!
//! `tests/schemathesis/` holds the run's configuration: the standard
//! modules to submit to (a made-up name is refused, and nothing past the
//! submit would be reached), the bounds that keep both runs within about
//! 30 s, and what to do about the two checks whose assumptions SPEC
//! section 6 overrules (502 is a documented failure answer; DELETE cancels
//! and does not delete), each with its reason.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use taskmaster_tests::{bin, output_within, Master};

/// The schemathesis release the document is checked with. A new release
/// brings new checks; moving to one is a change to review like any other.
const VERSION: &str = "4.32.5";

/// The token of the master started with `--token-file`.
const TOKEN: &str = "schemathesis-run-token";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// `target/` (or CARGO_TARGET_DIR): the directory above the profile the
/// test binaries were built in, so `cargo clean` takes the cache too.
fn target_dir() -> PathBuf {
    let taskmaster = bin("taskmaster");
    let profile = taskmaster.parent().expect("profile dir");
    profile.parent().expect("target dir").to_path_buf()
}

/// `python3` with `path` as its module path (the installed schemathesis,
/// and the hooks beside its configuration).
fn python(path: &[&Path]) -> Command {
    let mut cmd = Command::new("python3");
    let joined = std::env::join_paths(path).expect("PYTHONPATH");
    cmd.env("PYTHONPATH", joined)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("PYTHONHOME");
    cmd
}

/// Whether `dir` holds schemathesis `VERSION`, importable.
fn installed(dir: &Path) -> bool {
    if !dir.join("schemathesis").is_dir() {
        return false;
    }
    let probe = python(&[dir])
        .args([
            "-c",
            "import importlib.metadata as m; print(m.version('schemathesis'))",
        ])
        .output();
    matches!(probe, Ok(o) if o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == VERSION)
}

/// The directory holding schemathesis `VERSION`, installed from PyPI the
/// first time. pip writes into a fresh directory that is renamed into
/// place only once complete, so an interrupted install is never used.
fn schemathesis() -> PathBuf {
    let cache = target_dir().join("pytools");
    let dir = cache.join(format!("schemathesis-{VERSION}"));
    if installed(&dir) {
        return dir;
    }
    let by_hand = format!(
        "python3 -m pip install --target {} 'schemathesis=={VERSION}'",
        dir.display()
    );
    std::fs::create_dir_all(&cache).expect("cache dir");
    let partial = cache.join(format!(".schemathesis-{VERSION}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    let mut pip = Command::new("python3");
    pip.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ])
    .args([
        "--no-input",
        "--retries",
        "2",
        "--timeout",
        "20",
        "--target",
    ])
    .arg(&partial)
    .arg(format!("schemathesis=={VERSION}"));
    let out = match pip.stdout(std::process::Stdio::piped()).output() {
        Ok(o) => o,
        Err(e) => panic!(
            "python3 not found ({e}): these tests need Python 3 with pip \
             (Debian: apt-get install python3 python3-pip), then: {by_hand}"
        ),
    };
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&partial);
        panic!(
            "could not install schemathesis {VERSION} from PyPI ({}); the tests \
             need Python 3 with pip and PyPI once. Install it by hand:\n  {by_hand}\n\
             pip said:\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A stale or broken copy (another version, a half-copied directory)
    // makes way; another test run that finished first left a good one.
    if dir.exists() && !installed(&dir) {
        let _ = std::fs::remove_dir_all(&dir);
    }
    if std::fs::rename(&partial, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&partial);
    }
    assert!(
        installed(&dir),
        "schemathesis {VERSION} is not importable from {} after pip: {by_hand}",
        dir.display()
    );
    dir
}

/// One `st run` to make, and the master it is made against (kept running
/// until the run ends).
struct Run {
    what: &'static str,
    cmd: Command,
    master: Master,
}

/// `st run DOC --url MASTER --checks all` with the configuration of
/// `tests/schemathesis/`, in the scratch directory `scratch`.
fn st_run(st: &Path, doc: &Path, master: &Master, token: Option<&str>, scratch: &Path) -> Command {
    let config = workspace().join("tests/schemathesis");
    let mut cmd = python(&[st, &config]);
    cmd.args(["-m", "schemathesis.cli", "--config-file"])
        .arg(config.join("schemathesis.toml"))
        .arg("run")
        .arg(doc)
        .args(["--url", &master.url("")])
        .args([
            "--checks",
            "all",
            "--phases",
            "examples,coverage,fuzzing,stateful",
        ])
        // All but one: use_after_free expects a GET after a DELETE to be
        // 404, but DELETE /jobs/{id} cancels (SPEC 6) and the job stays,
        // `cancelled`: GET /jobs/{id} is 200 and a second DELETE 409. That
        // GET is the only read of a cancelled job that answers 2xx (its
        // result is 502, a start 409), so the check has nothing else to
        // catch in this API.
        .args(["--exclude-checks", "use_after_free"])
        // No example database: each run starts afresh, and nothing is
        // written beside the sources.
        .args(["--generation-database", "none", "--no-color"])
        // Scratch files (reports, caches) go to the scratch directory.
        .current_dir(scratch);
    if let Some(token) = token {
        cmd.args(["--header", &format!("Authorization: Bearer {token}")]);
    }
    cmd
}

/// The first number on the line of `output` that starts with `label`.
fn figure(output: &str, label: &str) -> Option<u64> {
    let line = output.lines().find(|l| l.trim_start().starts_with(label))?;
    line[line.find(label)? + label.len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[test]
fn openapi_document_holds_against_the_server_by_schemathesis() {
    let t = Instant::now();
    let st = schemathesis();
    let installed_in = t.elapsed();
    let scratch =
        std::env::temp_dir().join(format!("taskmaster-schemathesis-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).expect("scratch dir");
    let doc = workspace().join("docs/openapi.yaml");

    // The document makes the token optional (`security: [{}, {bearerAuth}]`)
    // because the master decides. A master with a token is the bearerAuth
    // alternative alone: with it required, schemathesis also checks that
    // every operation refuses a request without it or with a wrong one.
    let text = std::fs::read_to_string(&doc).expect("docs/openapi.yaml");
    let either = "security:\n  - {}\n  - bearerAuth: []\n";
    assert_eq!(
        text.matches(either).count(),
        1,
        "docs/openapi.yaml no longer has the top-level `security` this test derives the token run from"
    );
    let required = scratch.join("openapi-token-required.yaml");
    std::fs::write(
        &required,
        text.replace(either, "security:\n  - bearerAuth: []\n"),
    )
    .expect("token document");
    let token_file = scratch.join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token file");

    let open = Master::ready_http(&[]);
    let guarded = Master::ready_http(&["--token-file", token_file.to_str().expect("utf-8 path")]);
    let runs = vec![
        Run {
            what: "docs/openapi.yaml, master without a token",
            cmd: st_run(&st, &doc, &open, None, &scratch.join("run-open")),
            master: open,
        },
        Run {
            what: "docs/openapi.yaml with the token required, master with --token-file",
            cmd: st_run(
                &st,
                &required,
                &guarded,
                Some(TOKEN),
                &scratch.join("run-token"),
            ),
            master: guarded,
        },
    ];
    // Both at once: a run mostly waits on the master (streams, waits).
    let handles: Vec<_> = runs
        .into_iter()
        .map(|run| {
            std::thread::spawn(move || {
                // The master is moved in whole (a closure would capture only
                // the fields it uses) and stops only after its run.
                let Run {
                    what,
                    mut cmd,
                    master,
                } = run;
                let dir = cmd.get_current_dir().expect("scratch").to_path_buf();
                std::fs::create_dir_all(&dir).expect("scratch dir");
                let line = format!("{cmd:?}");
                let out = output_within(&mut cmd, Duration::from_secs(300));
                drop(master);
                (what, line, out)
            })
        })
        .collect();
    let mut problems = Vec::new();
    for handle in handles {
        let (what, line, out) = handle.join().expect("st run thread");
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            problems.push(format!(
                "schemathesis {VERSION} on {what} ({}):\n{line}\n{report}",
                out.status
            ));
            continue;
        }
        // Every phase ran and passed, and the stateful phase followed
        // links to real jobs (a submit was accepted).
        let summary = report.split("Test Phases:").nth(1).unwrap_or_default();
        for phase in ["Examples", "Coverage", "Fuzzing", "Stateful"] {
            if !summary.contains(&format!("✅ {phase}")) {
                problems.push(format!("{what}: phase {phase} did not pass:\n{report}"));
            }
        }
        match figure(&report, "API Links:") {
            Some(n) if n > 0 => {}
            _ => problems.push(format!(
                "{what}: the stateful phase followed no link:\n{report}"
            )),
        }
        let cases = report
            .lines()
            .find(|l| l.contains(" generated, "))
            .unwrap_or("?")
            .trim()
            .to_owned();
        eprintln!("schemathesis {VERSION}, {what}: {cases}");
    }
    let _ = std::fs::remove_dir_all(&scratch);
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
    eprintln!(
        "schemathesis: {:?} in all ({:?} to find or install it)",
        t.elapsed(),
        installed_in
    );
}
