//! `taskmaster events`: lifecycle events as they happen, one `NAME JSON`
//! line each, until the connection or stdout closes.

use super::{with_client, ConnectArgs, EXIT_OK};
use clap::Args;
use std::io::Write;
use std::process::ExitCode;
use taskmaster_proto::ClientError;

/// `taskmaster events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    #[command(flatten)]
    conn: ConnectArgs,
    /// Only this job's events.
    #[arg(long, value_name = "ID")]
    pub job: Option<String>,
}

/// Runs `taskmaster events`.
pub async fn run(args: EventsArgs) -> ExitCode {
    with_client(&args.conn, |c| async move {
        if let Some(id) = &args.job {
            let (instance, _) = taskmaster_proto::jobs::parse_id(id)
                .map_err(|e| ClientError::Invalid(e.to_string()))?;
            if instance != c.instance() {
                return Err(ClientError::NotFound(format!(
                    "no job {id} (from another master run)"
                )));
            }
        }
        let mut events = c.events(args.job.as_deref())?;
        while let Some((name, json)) = events.recv().await {
            let mut out = std::io::stdout().lock();
            if writeln!(out, "{name} {json}")
                .and_then(|_| out.flush())
                .is_err()
            {
                // The reader went away (`| head`): done.
                return Ok(ExitCode::from(EXIT_OK));
            }
        }
        Err(ClientError::Disconnected)
    })
    .await
}
