//! The command-line client: the subcommands that share the `taskmaster`
//! binary. Each is a plain client of a running master through
//! [`taskmaster_proto::Client`]; nothing here reaches into the master's own
//! modules, so the client side can be read (and changed) on its own.
//!
//! # Layout
//!
//! - this file: [`ConnectArgs`] (where the master is, which token), the exit
//!   statuses, connecting and turning a [`ClientError`] into a line and a
//!   status.
//! - [`submit`]: `taskmaster submit`.
//! - [`jobs`]: the job operations `status`, `result`, `start`, `cancel`,
//!   `jobs`.
//! - [`events`]: `taskmaster events`.
//! - [`stats`]: `taskmaster stats`.
//! - [`top`]: `taskmaster top`, the live terminal view.
//! - [`bench`](mod@bench): `taskmaster bench`, the load generator.
//! - [`generated`]: `taskmaster completions` and `taskmaster man`, made
//!   from the clap definitions.
//!
//! The files below import this one and nothing of each other.

pub mod bench;
pub mod events;
pub mod generated;
pub mod jobs;
pub mod stats;
pub mod submit;
pub mod top;

use clap::Args;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use taskmaster_proto::handshake::read_token_file;
use taskmaster_proto::{Client, ClientError, JobFailure, Reason};

/// Exit status of a completed job.
pub const EXIT_OK: u8 = 0;
/// Exit status of a failed job.
pub const EXIT_FAILED: u8 = 1;
/// Exit status of a usage error or no connection.
pub const EXIT_USAGE: u8 = 2;
/// Exit status of `overload` (EX_TEMPFAIL: try again later).
pub const EXIT_TEMPFAIL: u8 = 75;

/// Where the master is, and the token to show it.
#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// The master's address.
    #[arg(
        long,
        env = "TASKMASTER_CONNECT",
        default_value = "127.0.0.1:7400",
        value_name = "ADDR"
    )]
    pub connect: String,
    /// A file whose first line is the client token to present (as the
    /// master's --token-file). Without it the token comes from the file
    /// TASKMASTER_TOKEN_FILE names, else from TASKMASTER_TOKEN.
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
}

impl ConnectArgs {
    /// The client token `--token-file` names, read now. `None` without the
    /// flag: [`Client::connect`] then takes it from the environment. An
    /// empty or unreadable file is a usage error (printed), never "no
    /// token".
    pub fn token(&self) -> Result<Option<String>, ExitCode> {
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        read_token_file(path).map(Some).map_err(|e| {
            eprintln!("taskmaster: --token-file: {e}");
            ExitCode::from(EXIT_USAGE)
        })
    }

    /// Connects with `token` (as [`ConnectArgs::token`] gave it); a failure
    /// is printed and becomes exit status 2.
    pub async fn connect_with(&self, token: Option<String>) -> Result<Client, ExitCode> {
        Client::connect(self.connect.as_str(), token)
            .await
            .map_err(|e| {
                eprintln!("taskmaster: cannot connect to {}: {e}", self.connect);
                ExitCode::from(EXIT_USAGE)
            })
    }

    /// Reads the token and connects; a failure is printed and becomes exit
    /// status 2.
    pub async fn client(&self) -> Result<Client, ExitCode> {
        let token = self.token()?;
        self.connect_with(token).await
    }
}

/// Parses a number of seconds (0 to 1e9).
///
/// The same rule as the master's flags in `cli.rs`, kept apart so that the
/// client side never imports the master's command line.
pub fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=1e9).contains(&v) => Ok(v),
        _ => Err(format!("expected a number of seconds, got {s:?}")),
    }
}

/// Prints a line on stdout; a reader that went away (a closed pipe) is not
/// worth a panic.
pub fn print_line(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out
        .write_all(text.as_bytes())
        .and_then(|_| out.write_all(b"\n"));
}

/// Prints a job's failure (`failed: REASON: MESSAGE`); its exit status is
/// 75 for `overload` (try again later), else 1.
pub fn job_failed(f: &JobFailure) -> ExitCode {
    eprintln!("failed: {}: {}", f.reason, f.message);
    ExitCode::from(if f.reason == Reason::Overload {
        EXIT_TEMPFAIL
    } else {
        EXIT_FAILED
    })
}

/// Connects, runs `f`, and turns its error into a message and exit status.
pub async fn with_client<F, Fut>(conn: &ConnectArgs, f: F) -> ExitCode
where
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = Result<ExitCode, ClientError>>,
{
    let client = match conn.client().await {
        Ok(c) => c,
        Err(code) => return code,
    };
    match f(client).await {
        Ok(code) => code,
        Err(e) => client_error(e),
    }
}

/// The message and exit status of a failed client command.
pub fn client_error(e: ClientError) -> ExitCode {
    match e {
        ClientError::Job(f) => job_failed(&f),
        ClientError::NotFound(_) | ClientError::Conflict(_) => {
            eprintln!("taskmaster: {e}");
            ExitCode::from(EXIT_FAILED)
        }
        other => {
            eprintln!("taskmaster: {other}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_in_range() {
        assert_eq!(parse_seconds("0"), Ok(0.0));
        assert_eq!(parse_seconds("2.5"), Ok(2.5));
        for bad in ["-1", "soon", "inf", "NaN", "1e10"] {
            assert!(parse_seconds(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_missing_token_file_is_a_usage_error() {
        let conn = ConnectArgs {
            connect: "127.0.0.1:1".into(),
            token_file: Some("/nonexistent/taskmaster-token".into()),
        };
        assert_eq!(conn.token(), Err(ExitCode::from(EXIT_USAGE)));
        let conn = ConnectArgs {
            token_file: None,
            ..conn
        };
        assert_eq!(conn.token(), Ok(None));
    }
}
