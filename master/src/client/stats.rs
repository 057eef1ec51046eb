//! `taskmaster stats`: the pool and queue figures, as JSON.

use super::{print_line, ConnectArgs, EXIT_OK, EXIT_USAGE};
use std::process::ExitCode;

/// Runs `taskmaster stats`: exit 0 with the JSON on stdout, else 2.
pub async fn run(conn: ConnectArgs) -> ExitCode {
    let client = match conn.client().await {
        Ok(c) => c,
        Err(code) => return code,
    };
    match client.stats().await {
        Ok(stats) => {
            let text = serde_json::to_string_pretty(&stats).expect("stats serialize");
            print_line(&text);
            ExitCode::from(EXIT_OK)
        }
        Err(e) => {
            eprintln!("taskmaster: {e}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}
