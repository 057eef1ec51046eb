//! The standard modules of SPEC section 7, one file each, named as the
//! module, and [`standard`] to hand them all to `taskmaster_handler::run`.
//!
//! # Layout
//!
//! - this file: [`standard`], every module below; a new module is a file
//!   here, a `pub mod` line and an entry in [`standard`].
//! - [`echo`]: the input, unchanged.
//! - [`sleep`]: sleeps N ms, answers the child's pid.
//! - [`pid`]: the child's pid.
//! - [`fail`]: fails with the input as message.
//! - [`crash`]: aborts the child mid-job.
//! - [`sha256`]: lowercase hex digest of the input.
//! - [`count`]: N parts, then `done\n`.
//! - `main.rs`: the stock `taskmaster-handler` binary (the runtime with
//!   these modules).

pub mod count;
pub mod crash;
pub mod echo;
pub mod fail;
pub mod pid;
pub mod sha256;
pub mod sleep;

use taskmaster_handler::Module;

/// Every standard module, ready for `taskmaster_handler::run`.
pub fn standard() -> Vec<Box<dyn Module>> {
    vec![
        Box::new(echo::Echo),
        Box::new(sleep::Sleep),
        Box::new(pid::Pid),
        Box::new(fail::Fail),
        Box::new(crash::Crash),
        Box::new(sha256::Sha256),
        Box::new(count::Count),
    ]
}

/// Parses ASCII decimal input (surrounding whitespace allowed).
pub(crate) fn parse_decimal(input: &[u8]) -> Result<u64, String> {
    std::str::from_utf8(input)
        .ok()
        .map(str::trim)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            format!(
                "expected an ASCII decimal number, got {:?}",
                String::from_utf8_lossy(&input[..input.len().min(32)])
            )
        })
}
