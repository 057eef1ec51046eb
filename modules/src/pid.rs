//! `pid`: answers the child's pid, ignoring the input.

use taskmaster_handler::{Module, Parts};

/// The `pid` module.
pub struct Pid;

impl Module for Pid {
    fn name(&self) -> &str {
        "pid"
    }
    fn call(&mut self, _: &[u8], _: &mut Parts<'_>) -> Result<Vec<u8>, String> {
        Ok(std::process::id().to_string().into_bytes())
    }
}
