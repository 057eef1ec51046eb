//! A smoke test of the built `taskmaster` binary. Its presence also makes
//! `cargo test --workspace` build the binary that the `tests/` package's
//! integration suite starts.

#[test]
fn version_and_help_exit_0() {
    let exe = env!("CARGO_BIN_EXE_taskmaster");
    for flag in ["--version", "--help"] {
        let out = std::process::Command::new(exe).arg(flag).output().unwrap();
        assert!(out.status.success(), "{flag}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("taskmaster"));
    }
}
