//! `count`: sends N parts `1\n` … `N\n`, then the response `done\n`, to
//! exercise streamed parts.

use taskmaster_handler::{Module, Parts};

/// The `count` module.
pub struct Count;

impl Module for Count {
    fn name(&self) -> &str {
        "count"
    }
    fn call(&mut self, input: &[u8], parts: &mut Parts<'_>) -> Result<Vec<u8>, String> {
        let n = crate::parse_decimal(input)?;
        for i in 1..=n {
            parts
                .send(format!("{i}\n").as_bytes())
                .map_err(|e| format!("sending part {i}: {e}"))?;
        }
        Ok(b"done\n".to_vec())
    }
}
