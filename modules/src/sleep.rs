//! `sleep`: sleeps the given milliseconds, then answers the child's pid
//! (tests use the pid to see which child ran a job).

use std::time::Duration;
use taskmaster_handler::{Module, Parts};

/// The `sleep` module.
pub struct Sleep;

impl Module for Sleep {
    fn name(&self) -> &str {
        "sleep"
    }
    fn call(&mut self, input: &[u8], _: &mut Parts<'_>) -> Result<Vec<u8>, String> {
        let ms = crate::parse_decimal(input)?;
        std::thread::sleep(Duration::from_millis(ms));
        Ok(std::process::id().to_string().into_bytes())
    }
}
