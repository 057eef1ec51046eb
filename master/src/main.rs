//! The `taskmaster` binary: parses flags, sets up logging, and runs either
//! the master or a client command. Everything else is in the library.

use clap::{CommandFactory, FromArgMatches, Parser};
use std::ffi::OsString;
use std::io::IsTerminal;
use std::process::ExitCode;
use taskmaster::cli::{Cli, Command};
use taskmaster::client::top;
use taskmaster::client::{self, bench, events, generated, jobs, stats, submit};
use taskmaster::config;
use taskmaster::config_file;

fn usage_error(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("taskmaster: {message}");
    ExitCode::from(client::EXIT_USAGE)
}

/// Runs a client command and returns its exit status.
async fn run_client(command: Command) -> ExitCode {
    match command {
        Command::Submit(args) => submit::run(args).await,
        Command::Stats(conn) => stats::run(conn).await,
        Command::Top(args) => top::run(args).await,
        Command::Status(args) => jobs::status(args).await,
        Command::Result(args) => jobs::result(args).await,
        Command::Start(args) => jobs::start(args).await,
        Command::Cancel(args) => jobs::cancel(args).await,
        Command::Jobs(args) => jobs::list(args).await,
        Command::Events(args) => events::run(args).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Completions(args) => generated::completions(args, Cli::command()),
        Command::Man => generated::man(Cli::command()),
        Command::Agent(args) => {
            init_logging();
            taskmaster::agent::run(args).await
        }
    }
}

/// Log lines on stderr, `RUST_LOG` or `info`.
fn init_logging() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
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

/// `--help` and `--version` print and succeed; any other clap error is
/// one clear line, not clap's usage block (the first paragraph of its
/// message, which may name missing arguments on further lines).
fn clap_exit(e: clap::Error) -> ExitCode {
    if !e.use_stderr() {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    usage_error(config_file::clap_line(&e))
}

/// The command line, with the master's `--config FILE` merged in: the
/// file's keys become flags placed before the real ones, for clap to
/// parse and check like any flag (see `config_file`).
fn parse() -> Result<Cli, ExitCode> {
    let args: Vec<OsString> = std::env::args_os().collect();
    let matches = Cli::command()
        .try_get_matches_from(&args)
        .map_err(clap_exit)?;
    let cli = Cli::from_arg_matches(&matches).map_err(clap_exit)?;
    let path = match (&cli.command, &cli.serve.config) {
        (None, Some(path)) => path.clone(),
        _ => return Ok(cli),
    };
    let extra = config_file::arguments(&path, &Cli::command(), &matches).map_err(usage_error)?;
    if extra.is_empty() {
        return Ok(cli);
    }
    let (program, rest) = args
        .split_first()
        .map_or((OsString::from("taskmaster"), &[][..]), |(p, r)| {
            (p.clone(), r)
        });
    let merged = std::iter::once(program)
        .chain(extra)
        .chain(rest.iter().cloned());
    Cli::try_parse_from(merged).map_err(|e| {
        usage_error(format!(
            "config file {}: {}",
            path.display(),
            config_file::clap_line(&e)
        ))
    })
}

fn main() -> ExitCode {
    let cli = match parse() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    if let Some(command) = cli.command {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        return rt.block_on(run_client(command));
    }

    // Taken now, while the process has one thread: it leaves the
    // environment, so no child inherits it.
    let notify = taskmaster::notify::Notifier::from_env();
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
    let agents = match cli
        .serve
        .agent_listen
        .as_deref()
        .map(config::bind)
        .transpose()
    {
        Ok(l) => l,
        Err(e) => return usage_error(format!("--agent-listen: {e}")),
    };
    // (Checked here, not by clap's `requires`: a config file's keys are
    // checked one at a time, where the pair could never be complete.)
    let tls_files = (&cli.serve.tls_cert, &cli.serve.tls_key);
    if agents.is_none() && tls_files != (&None, &None) {
        return usage_error("--tls-cert and --tls-key are for --agent-listen, which is not set");
    }
    let tls = match tls_files {
        (Some(cert), Some(key)) => match taskmaster::tls::acceptor(cert, key) {
            Ok(t) => Some(t),
            Err(e) => return usage_error(e),
        },
        (Some(_), None) => return usage_error("--tls-cert needs --tls-key"),
        (None, Some(_)) => return usage_error("--tls-key needs --tls-cert"),
        (None, None) => None,
    };
    // An agent runs whatever jobs it is sent and sees their data: beyond
    // loopback only over TLS and with the token, never `--insecure`.
    if let Some(addr) = agents.as_ref().and_then(|l| l.local_addr().ok()) {
        let missing = match (tls.is_some(), cfg.token.is_some()) {
            _ if addr.ip().is_loopback() => None,
            (true, true) => None,
            (false, true) => Some("--tls-cert/--tls-key"),
            (true, false) => Some("a client token (--token-file or TASKMASTER_TOKEN)"),
            (false, false) => Some("--tls-cert/--tls-key and a client token"),
        };
        if let Some(missing) = missing {
            return usage_error(config::ConfigError::AgentsExposed { addr, missing });
        }
    }
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
    init_logging();
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
    // Reached (or not: exit 2) before anything is spawned, on the runtime
    // the master then runs on (the NATS client's tasks live there).
    let nats = match cli.serve.nats() {
        None => None,
        // A restarted master would run its stored jobs itself while the
        // stream also answers them as lost: never both.
        Some(_) if cfg.state_dir.is_some() => {
            return usage_error("--state-dir and --nats do not go together: with --nats the jobs are kept in the NATS stream");
        }
        Some(nats) => {
            let (job_max, ttl) = (cfg.job_max, cfg.result_ttl);
            match rt.block_on(taskmaster::nats::open(nats, job_max, ttl)) {
                Ok(opened) => Some(opened),
                Err(e) => return usage_error(e),
            }
        }
    };
    let listeners = taskmaster::server::Listeners {
        main: listener,
        http,
        agents: agents.map(|l| (l, tls)),
    };
    match rt.block_on(taskmaster::server::run(cfg, listeners, store, notify, nats)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "master failed");
            ExitCode::FAILURE
        }
    }
}
