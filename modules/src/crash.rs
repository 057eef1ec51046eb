//! `crash`: aborts the child mid-job, to exercise the master's `error` path.
//! The input `no` returns at once instead, so a test can make `crash` a
//! module known to be quick (one that crashes on some inputs only).

use taskmaster_handler::{Module, Parts};

/// The `crash` module.
pub struct Crash;

impl Module for Crash {
    fn name(&self) -> &str {
        "crash"
    }
    fn call(&mut self, input: &[u8], _: &mut Parts<'_>) -> Result<Vec<u8>, String> {
        if input == b"no" {
            return Ok(b"no crash".to_vec());
        }
        std::process::abort()
    }
}
