//! `sha256`: answers the lowercase hex SHA-256 digest of the input.

use sha2::{Digest, Sha256 as Hasher};
use std::fmt::Write;
use taskmaster_handler::{Module, Parts};

/// The `sha256` module.
pub struct Sha256;

impl Module for Sha256 {
    fn name(&self) -> &str {
        "sha256"
    }
    fn call(&mut self, input: &[u8], _: &mut Parts<'_>) -> Result<Vec<u8>, String> {
        let digest = Hasher::digest(input);
        let mut hex = String::with_capacity(64);
        for byte in digest {
            let _ = write!(hex, "{byte:02x}");
        }
        Ok(hex.into_bytes())
    }
}
