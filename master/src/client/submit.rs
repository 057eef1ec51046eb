//! `taskmaster submit`: run one job and write its parts and response to
//! stdout, or (`--async`, `--start-later`) print its id and leave it.

use super::{
    client_error, job_failed, parse_seconds, print_line, ConnectArgs, EXIT_FAILED, EXIT_OK,
    EXIT_USAGE,
};
use clap::Args;
use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::Duration;
use taskmaster_proto::jobs::SubmitOptions;
use taskmaster_proto::JobEvent;

/// `taskmaster submit`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    conn: ConnectArgs,
    /// Do not wait: print the job id and exit; fetch the outcome later with
    /// `taskmaster result ID`.
    #[arg(long = "async")]
    pub detach: bool,
    /// Hold the job until `taskmaster start ID` (prints the id; implies
    /// --async).
    #[arg(long)]
    pub start_later: bool,
    /// Seconds the job may run before it fails `timeout` (0: no limit;
    /// default: the master's --job-timeout).
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    pub timeout: Option<f64>,
    /// Where the job waits: high jobs run before normal ones, normal before
    /// low; first come, first served within one.
    #[arg(long, default_value = "normal", value_name = "high|normal|low")]
    pub priority: taskmaster_proto::Priority,
    /// The job is idempotent: when its child dies or its time limit passes,
    /// run it again on another child, up to N more times (a job that has
    /// killed 3 children fails `error`, "poison job").
    #[arg(long, default_value_t = 0, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=i64::from(taskmaster_proto::jobs::MAX_RETRIES)))]
    pub retries: u32,
    /// The module to run.
    pub module: String,
    /// Input bytes; omitted or `-`: read stdin.
    pub data: Option<String>,
}

/// Runs `taskmaster submit`: exit 0 completed, 1 failed, 2 usage error or
/// no connection, 75 overload.
pub async fn run(args: SubmitArgs) -> ExitCode {
    // A bad --token-file is told before stdin is read, not after.
    let token = match args.conn.token() {
        Ok(t) => t,
        Err(code) => return code,
    };
    let input = match args.data.as_deref() {
        None | Some("-") => {
            let mut buf = Vec::new();
            if let Err(e) = std::io::stdin().read_to_end(&mut buf) {
                eprintln!("taskmaster: reading stdin: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
            buf
        }
        Some(text) => text.as_bytes().to_vec(),
    };
    let client = match args.conn.connect_with(token).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let options = SubmitOptions {
        detach: args.detach || args.start_later,
        start_later: args.start_later,
        timeout_ms: args
            .timeout
            .map(|t| SubmitOptions::timeout_ms(Duration::from_secs_f64(t))),
        priority: args.priority,
        retries: args.retries,
    };
    if options.detach {
        return match client.submit_detached(&args.module, input, options).await {
            Ok(job) => {
                print_line(&job.id);
                ExitCode::from(EXIT_OK)
            }
            Err(e) => client_error(e),
        };
    }
    let mut job = match client.submit_with(&args.module, input, bytes::Bytes::new(), options) {
        Ok(job) => job,
        Err(e) => {
            eprintln!("taskmaster: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let mut stdout = std::io::stdout().lock();
    loop {
        match job.next_event().await {
            Ok(JobEvent::Part(data)) => {
                if stdout
                    .write_all(&data)
                    .and_then(|_| stdout.flush())
                    .is_err()
                {
                    return ExitCode::from(EXIT_FAILED);
                }
            }
            Ok(JobEvent::Completed(done)) => {
                let _ = stdout.write_all(&done.output).and_then(|_| stdout.flush());
                return ExitCode::from(EXIT_OK);
            }
            Ok(JobEvent::Failed(failure)) => return job_failed(&failure),
            Err(e) => {
                eprintln!("taskmaster: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        }
    }
}
