//! A handler for the tests: the standard modules plus `panic`, which panics
//! with its input as the message (the standard set has no such module).

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

fn main() {
    let mut modules = taskmaster_modules::standard();
    modules.push(Box::new(Panic));
    taskmaster_handler::run(modules)
}
