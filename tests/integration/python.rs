//! The Python package's own tests (`sdk/python/tests`, stdlib unittest)
//! against the real binaries of this build, so `cargo test --workspace`
//! runs them: the client, the asyncio client and the pre-forked Python
//! handler, each on a master of its own on port 0.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use taskmaster_tests::{bin, output_within};

fn sdk_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .join("sdk/python")
}

#[test]
fn python_package_tests_pass_against_the_real_master() {
    let sdk = sdk_dir();
    let mut cmd = Command::new("python3");
    cmd.args(["-m", "unittest", "discover", "-s", "tests", "-t", "."])
        .current_dir(&sdk)
        .env("TASKMASTER_BIN", bin("taskmaster"))
        .env("TASKMASTER_HANDLER_BIN", bin("taskmaster-handler"))
        .env("PYTHONPATH", &sdk)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("TASKMASTER_TOKEN")
        .env_remove("TASKMASTER_TOKEN_FILE");
    if Command::new("python3").arg("--version").output().is_err() {
        panic!("python3 not found: the Python SDK tests need Python >= 3.9 (Debian: apt-get install python3)");
    }
    let o = output_within(&mut cmd, Duration::from_secs(240));
    let report = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success(),
        "the Python SDK tests failed ({}):\n{report}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout)
    );
    // unittest's last lines: "Ran N tests in Xs" then "OK" (no skips hidden).
    let ran = report
        .lines()
        .find_map(|l| {
            l.strip_prefix("Ran ")?
                .split(' ')
                .next()?
                .parse::<u32>()
                .ok()
        })
        .unwrap_or(0);
    assert!(ran >= 20, "only {ran} Python tests ran:\n{report}");
    assert!(
        !report.contains("skipped"),
        "Python tests must not skip:\n{report}"
    );
    eprintln!(
        "{}",
        report.lines().rev().take(3).collect::<Vec<_>>().join(" | ")
    );
}
