//! The `taskmaster` binary: parses flags, sets up logging, and runs either
//! the master or a client command. Everything else is in the library.

use clap::Parser;
use std::io::IsTerminal;
use std::process::ExitCode;
use taskmaster::cli::{Cli, Command};
use taskmaster::client::{self, bench, events, jobs, stats, submit};
use taskmaster::config;

fn usage_error(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("taskmaster: {message}");
    ExitCode::from(client::EXIT_USAGE)
}

/// Runs a client command and returns its exit status.
async fn run_client(command: Command) -> ExitCode {
    match command {
        Command::Submit(args) => submit::run(args).await,
        Command::Stats(conn) => stats::run(conn).await,
        Command::Status(args) => jobs::status(args).await,
        Command::Result(args) => jobs::result(args).await,
        Command::Start(args) => jobs::start(args).await,
        Command::Cancel(args) => jobs::cancel(args).await,
        Command::Jobs(args) => jobs::list(args).await,
        Command::Events(args) => events::run(args).await,
        Command::Bench(args) => bench::run(args).await,
    }
}

/// Lifts the soft open-file limit to the hard one: every child and client
/// costs the master a descriptor, and a soft limit of 1024 would turn
/// `--max-connections` into a lie.
fn raise_open_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        // One clear line, not clap's usage block: the first paragraph of
        // its message (which may name missing arguments on further lines).
        Err(e) => {
            let text = e.to_string();
            let first = text.split("\n\n").next().unwrap_or("bad arguments");
            let line = first.split_whitespace().collect::<Vec<_>>().join(" ");
            return usage_error(line.trim_start_matches("error: "));
        }
    };
    if let Some(command) = cli.command {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        return rt.block_on(run_client(command));
    }

    let mut cfg = cli.serve.to_config();
    if let Err(e) = cfg.validate() {
        return usage_error(e);
    }
    let exec_modules = match config::check_exec_dir(&mut cfg) {
        Ok(names) => names,
        Err(e) => return usage_error(e),
    };
    // Opened (locked, read) before anything listens: a store in use or
    // unreadable is a start-up error.
    let store = match cfg.state_dir.as_deref() {
        None => None,
        Some(dir) => match taskmaster::store::open(dir, taskmaster::server::fresh_instance) {
            Ok(opened) => Some(opened),
            Err(e) => return usage_error(e),
        },
    };
    cfg.token = match cli.serve.token() {
        Ok(t) => t,
        Err(e) => return usage_error(e),
    };
    let listener = match config::bind(&cli.serve.listen) {
        Ok(l) => l,
        Err(e) => return usage_error(e),
    };
    let http = match cli.serve.http.as_deref().map(config::bind).transpose() {
        Ok(l) => l,
        Err(e) => return usage_error(format!("--http: {e}")),
    };
    // Anyone who can reach a non-loopback socket could submit jobs: not
    // without a token, unless asked for in so many words.
    if cfg.token.is_none() && !cli.serve.insecure {
        for l in std::iter::once(&listener).chain(http.as_ref()) {
            if let Ok(addr) = l.local_addr() {
                if !addr.ip().is_loopback() {
                    return usage_error(config::ConfigError::Exposed { addr });
                }
            }
        }
    }
    raise_open_file_limit();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    if let (Some(dir), Some(names)) = (&cfg.exec_dir, &exec_modules) {
        tracing::info!(dir = %dir.display(), modules = ?names, "modules of the handler with --exec-dir");
    }
    // One thread: the master's work is short hops between tasks, and a
    // single thread saves the cross-thread wake-ups (measured 7-12% more
    // jobs/s than 2 workers on 2 cores; docs/performance.md).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(taskmaster::server::run(cfg, listener, http, store)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "master failed");
            ExitCode::FAILURE
        }
    }
}
