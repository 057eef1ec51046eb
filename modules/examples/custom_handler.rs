//! A custom taskmaster handler: the standard modules plus two of our own.
//! Build it, then run `taskmaster --handler path/to/custom_handler`.

use taskmaster_handler::{typed, Module, Parts};

/// Counts the words of its input; sends a progress part every 1,000 lines.
struct WordCount;

impl Module for WordCount {
    fn name(&self) -> &str {
        "wordcount"
    }

    fn call(&mut self, input: &[u8], parts: &mut Parts<'_>) -> Result<Vec<u8>, String> {
        let text = std::str::from_utf8(input).map_err(|e| format!("input is not UTF-8: {e}"))?;
        let mut words = 0;
        for (n, line) in text.lines().enumerate() {
            words += line.split_whitespace().count();
            if (n + 1) % 1000 == 0 {
                let progress = format!("{} lines\n", n + 1);
                parts.send(progress.as_bytes()).map_err(|e| e.to_string())?;
            }
        }
        Ok(words.to_string().into_bytes())
    }
}

/// Greets a list of names. Its greeting is loaded once, at start-up, and its
/// input and output are typed values (see the client's `do_typed`).
struct Greet {
    greeting: String,
}

impl Module for Greet {
    fn name(&self) -> &str {
        "greet"
    }

    fn start(&mut self) -> Result<(), String> {
        self.greeting = std::env::var("GREETING").unwrap_or_else(|_| "Hello".to_owned());
        Ok(())
    }

    fn call(&mut self, input: &[u8], _parts: &mut Parts<'_>) -> Result<Vec<u8>, String> {
        let names: Vec<String> = typed::decode_input(input)?;
        let greetings: Vec<String> = names
            .iter()
            .map(|name| format!("{}, {name}!", self.greeting))
            .collect();
        typed::encode_output(&greetings)
    }
}

fn main() {
    let mut modules = taskmaster_modules::standard();
    modules.push(Box::new(WordCount));
    modules.push(Box::new(Greet {
        greeting: String::new(),
    }));
    taskmaster_handler::run(modules)
}
