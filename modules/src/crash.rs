//! `crash`: aborts the child mid-job, to exercise the master's `error` path.

use taskmaster_handler::{Module, Parts};

/// The `crash` module.
pub struct Crash;

impl Module for Crash {
    fn name(&self) -> &str {
        "crash"
    }
    fn call(&mut self, _: &[u8], _: &mut Parts<'_>) -> Result<Vec<u8>, String> {
        std::process::abort()
    }
}
