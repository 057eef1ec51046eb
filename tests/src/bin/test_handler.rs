//! A handler for the tests: the standard modules plus test-only ones the
//! standard set has no reason to carry:
//!
//! - `panic`: panics with its input as the message.
//! - `stubborn`: ignores SIGTERM from the start of its job, then sleeps the
//!   given milliseconds and answers its pid (only SIGKILL stops it).
//! - `grow`: allocates and touches the given MiB, keeps them for the life
//!   of the child, and answers its pid (resident memory grows for good).
//! - `big`: answers the given number of bytes (`b`s), whatever the
//!   `--max-payload` it was started with allows (with a wrapper raising
//!   it, a handler that breaks the master's limit).
//! - `spawner`: starts a `sleep 1000` process of its own, sends its pid as
//!   a part, then sleeps the given milliseconds (a module whose own
//!   processes must not outlive its child).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use taskmaster_handler::{Module, Parts};

struct Panic;

impl Module for Panic {
    fn name(&self) -> &str {
        "panic"
    }
    fn call(&mut self, input: &[u8], _: &mut Parts<'_>) -> Result<Vec<u8>, String> {
        panic!("{}", String::from_utf8_lossy(input))
    }
}

/// Parses ASCII decimal input.
fn number(input: &[u8]) -> Result<u64, String> {
    std::str::from_utf8(input)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| format!("expected a decimal number, got {input:?}"))
}

struct Stubborn;

impl Module for Stubborn {
    fn name(&self) -> &str {
        "stubborn"
    }
    fn call(&mut self, input: &[u8], _: &mut Parts<'_>) -> Result<Vec<u8>, String> {
        let ms = number(input)?;
        // A handler that only sets a flag: SIGTERM no longer ends the
        // process (signal-hook's safe API; the workspace denies unsafe).
        signal_hook::flag::register(
            signal_hook::consts::SIGTERM,
            Arc::new(AtomicBool::new(false)),
        )
        .map_err(|e| format!("cannot catch SIGTERM: {e}"))?;
        // std's sleep resumes after a signal interrupts it.
        std::thread::sleep(Duration::from_millis(ms));
        Ok(std::process::id().to_string().into_bytes())
    }
}

#[derive(Default)]
struct Grow {
    hoard: Vec<Vec<u8>>,
}

impl Module for Grow {
    fn name(&self) -> &str {
        "grow"
    }
    fn call(&mut self, input: &[u8], _: &mut Parts<'_>) -> Result<Vec<u8>, String> {
        let mib = number(input)? as usize;
        // Non-zero bytes: every page is written, so it is resident (zeroed
        // memory could stay untouched).
        self.hoard.push(vec![0xa5; mib << 20]);
        Ok(std::process::id().to_string().into_bytes())
    }
}

struct Big;

impl Module for Big {
    fn name(&self) -> &str {
        "big"
    }

    fn call(&mut self, input: &[u8], _: &mut Parts<'_>) -> Result<Vec<u8>, String> {
        Ok(vec![b'b'; number(input)? as usize])
    }
}

struct Spawner;

impl Module for Spawner {
    fn name(&self) -> &str {
        "spawner"
    }
    fn call(&mut self, input: &[u8], parts: &mut Parts<'_>) -> Result<Vec<u8>, String> {
        let ms = number(input)?;
        let grandchild = std::process::Command::new("sleep")
            .arg("1000")
            .spawn()
            .map_err(|e| format!("cannot start sleep: {e}"))?;
        parts
            .send(grandchild.id().to_string().as_bytes())
            .map_err(|e| e.to_string())?;
        std::thread::sleep(Duration::from_millis(ms));
        Ok(b"done".to_vec())
    }
}

fn main() {
    let mut modules = taskmaster_modules::standard();
    modules.push(Box::new(Panic));
    modules.push(Box::new(Stubborn));
    modules.push(Box::new(Grow::default()));
    modules.push(Box::new(Spawner));
    modules.push(Box::new(Big));
    taskmaster_handler::run(modules)
}
