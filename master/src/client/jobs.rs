//! The job operations on one job id or the job table: `status`, `result`,
//! `start`, `cancel` and `jobs`. One request each; the answer becomes a
//! line (or JSON) on stdout and an exit status.

use super::{
    parse_seconds, print_line, with_client, ConnectArgs, EXIT_FAILED, EXIT_OK, EXIT_TEMPFAIL,
};
use clap::Args;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;
use taskmaster_proto::jobs::{JobStatus, JobView};
use taskmaster_proto::{Client, ClientError, JobResult};

/// A command on one job.
#[derive(Debug, Args)]
pub struct IdArgs {
    #[command(flatten)]
    conn: ConnectArgs,
    /// The job id (as `submit --async` printed it).
    pub id: String,
}

/// `taskmaster result`.
#[derive(Debug, Args)]
pub struct ResultArgs {
    #[command(flatten)]
    conn: ConnectArgs,
    /// Seconds to wait for the job to finish.
    #[arg(long, value_name = "SECONDS", default_value_t = 0.0, value_parser = parse_seconds)]
    pub wait: f64,
    /// The job id.
    pub id: String,
}

/// `taskmaster jobs`.
#[derive(Debug, Args)]
pub struct JobsArgs {
    #[command(flatten)]
    conn: ConnectArgs,
    /// Most jobs to list.
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub limit: u32,
    /// Only jobs with this status.
    #[arg(long, value_name = "STATUS")]
    pub status: Option<JobStatus>,
    /// Print the JSON list instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Runs `taskmaster status ID`: the job's view as JSON.
pub async fn status(args: IdArgs) -> ExitCode {
    with_client(&args.conn, |c| async move {
        let view = c.status(&args.id).await?;
        print_line(&serde_json::to_string_pretty(&view).expect("view serializes"));
        Ok(ExitCode::from(EXIT_OK))
    })
    .await
}

/// Runs `taskmaster start ID`: prints `ID STATUS`.
pub async fn start(args: IdArgs) -> ExitCode {
    with_client(&args.conn, |c| async move {
        let job = c.start(&args.id).await?;
        print_line(&format!("{} {}", job.id, job.status));
        Ok(ExitCode::from(EXIT_OK))
    })
    .await
}

/// Runs `taskmaster cancel ID`: prints `ID STATUS`.
pub async fn cancel(args: IdArgs) -> ExitCode {
    with_client(&args.conn, |c| async move {
        let job = c.cancel(&args.id).await?;
        print_line(&format!("{} {}", job.id, job.status));
        Ok(ExitCode::from(EXIT_OK))
    })
    .await
}

/// Runs `taskmaster result ID`: the response on stdout (exit 0), the
/// failure on stderr (exit 1), or exit 75 if the job has not finished.
pub async fn result(args: ResultArgs) -> ExitCode {
    with_client(&args.conn, |c| fetch_result(c, args.id, args.wait)).await
}

async fn fetch_result(client: Client, id: String, wait: f64) -> Result<ExitCode, ClientError> {
    let wait = Duration::from_secs_f64(wait);
    match client.result(&id, wait).await? {
        JobResult::Completed(output) => {
            let mut stdout = std::io::stdout().lock();
            let _ = stdout.write_all(&output).and_then(|_| stdout.flush());
            Ok(ExitCode::from(EXIT_OK))
        }
        JobResult::Failed(f) => {
            eprintln!("failed: {}: {}", f.reason, f.message);
            Ok(ExitCode::from(EXIT_FAILED))
        }
        JobResult::Pending(job) => {
            eprintln!("taskmaster: job {} is {}", job.id, job.status);
            Ok(ExitCode::from(EXIT_TEMPFAIL))
        }
    }
}

/// Runs `taskmaster jobs`: recent jobs, newest first, as a table or JSON.
pub async fn list(args: JobsArgs) -> ExitCode {
    let (limit, status, json) = (args.limit, args.status, args.json);
    with_client(&args.conn, |c| print_jobs(c, limit, status, json)).await
}

/// Milliseconds between two RFC 3339 times of a job, if both are known.
fn millis_between(from: Option<&str>, to: Option<&str>) -> String {
    let parse = |t: Option<&str>| t.and_then(|t| humantime::parse_rfc3339(t).ok());
    match (parse(from), parse(to)) {
        (Some(a), Some(b)) => b
            .duration_since(a)
            .map(|d| format!("{:.1}", d.as_secs_f64() * 1000.0))
            .unwrap_or_else(|_| "0".into()),
        _ => "-".into(),
    }
}

async fn print_jobs(
    client: Client,
    limit: u32,
    status: Option<JobStatus>,
    json: bool,
) -> Result<ExitCode, ClientError> {
    let list = client.jobs(limit, status).await?;
    if json {
        print_line(&serde_json::to_string_pretty(&list).expect("list serializes"));
        return Ok(ExitCode::from(EXIT_OK));
    }
    print_line(&format!(
        "{:<24} {:<11} {:<12} {:<24} {:>10} {:>10}  {}",
        "ID", "STATUS", "MODULE", "CREATED", "QUEUED_MS", "RAN_MS", "REASON"
    ));
    for JobView {
        id,
        module,
        status,
        reason,
        message,
        created_at,
        started_at,
        finished_at,
    } in &list.jobs
    {
        let queued = millis_between(Some(created_at), started_at.as_deref());
        let ran = millis_between(started_at.as_deref(), finished_at.as_deref());
        let why = match (reason, message) {
            (Some(r), Some(m)) => format!("{r}: {}", m.chars().take(60).collect::<String>()),
            (Some(r), None) => r.to_string(),
            _ => String::new(),
        };
        print_line(&format!(
            "{id:<24} {status:<11} {module:<12} {created_at:<24} {queued:>10} {ran:>10}  {why}"
        ));
    }
    Ok(ExitCode::from(EXIT_OK))
}
