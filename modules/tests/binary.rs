//! The stock `taskmaster-handler` refuses to run by hand with a usage line
//! (exit 2). Its presence also makes `cargo test --workspace` build the
//! binary that the `tests/` package's integration suite spawns.

#[test]
fn handler_without_master_flags_is_a_usage_error() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_taskmaster-handler"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("started by the taskmaster master"));
}
