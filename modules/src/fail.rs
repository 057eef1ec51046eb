//! `fail`: fails the job with reason `failed` and the input text as message.

use taskmaster_handler::{Module, Parts};

/// The `fail` module.
pub struct Fail;

impl Module for Fail {
    fn name(&self) -> &str {
        "fail"
    }
    fn call(&mut self, input: &[u8], _: &mut Parts<'_>) -> Result<Vec<u8>, String> {
        Err(String::from_utf8_lossy(input).into_owned())
    }
}
