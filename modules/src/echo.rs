//! `echo`: answers the input bytes unchanged.

use taskmaster_handler::{Module, Parts};

/// The `echo` module.
pub struct Echo;

impl Module for Echo {
    fn name(&self) -> &str {
        "echo"
    }
    fn call(&mut self, input: &[u8], _: &mut Parts<'_>) -> Result<Vec<u8>, String> {
        Ok(input.to_vec())
    }
}
