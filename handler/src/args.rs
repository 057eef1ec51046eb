//! The command line the master gives each child, and the secret it writes on
//! the child's stdin (not argv or the environment, which `ps` and
//! `/proc/PID/environ` show to other users).

use std::io::{self, Read};
use std::path::PathBuf;
use taskmaster_proto::codec::DEFAULT_MAX_PAYLOAD;
use taskmaster_proto::SECRET_LEN;

pub(crate) struct Args {
    pub connect: String,
    pub child_id: u64,
    pub master_pid: i32,
    pub max_payload: usize,
    /// Open-file limit to set on itself (`None`: inherit).
    pub nofile: Option<u64>,
    /// Core-file size limit to set on itself (`None`: inherit).
    pub core: Option<u64>,
    /// Milliseconds between heartbeats (`None`: send none).
    pub heartbeat_ms: Option<u64>,
    /// Directory of executable modules.
    pub exec_dir: Option<PathBuf>,
    /// The master's job-id prefix (for executable modules' environment).
    pub instance: String,
}

/// What the command line asks for.
pub(crate) enum Mode {
    /// Serve the master (the normal case).
    Serve(Args),
    /// Print the module names and exit: the master's check of
    /// `--exec-dir` before it starts, which needs no master.
    List { exec_dir: Option<PathBuf> },
}

const USAGE: &str = "taskmaster-handler is started by the taskmaster master \
(usage: --connect ADDR --child-id N --master-pid PID [--max-payload BYTES] \
[--nofile N] [--core BYTES] [--heartbeat-ms MS] [--exec-dir DIR --instance ID], \
secret on stdin; or --list-modules [--exec-dir DIR])";

impl Args {
    pub fn parse(mut argv: impl Iterator<Item = String>) -> Result<Mode, String> {
        let (mut connect, mut child_id, mut master_pid) = (None, None, None);
        let mut max_payload = DEFAULT_MAX_PAYLOAD;
        let (mut nofile, mut core, mut heartbeat_ms) = (None, None, None);
        let (mut exec_dir, mut instance, mut list) = (None, String::new(), false);
        while let Some(flag) = argv.next() {
            if flag == "--list-modules" {
                list = true;
                continue;
            }
            let value = argv
                .next()
                .ok_or_else(|| format!("{flag} needs a value; {USAGE}"))?;
            let number = || {
                value
                    .parse::<u64>()
                    .map_err(|_| format!("{flag}: not a number: {value:?}"))
            };
            match flag.as_str() {
                "--connect" => connect = Some(value.clone()),
                "--child-id" => child_id = Some(number()?),
                "--master-pid" => master_pid = Some(number()? as i32),
                "--max-payload" => max_payload = number()? as usize,
                "--nofile" => nofile = Some(number()?),
                "--core" => core = Some(number()?),
                "--heartbeat-ms" => heartbeat_ms = Some(number()?).filter(|&ms| ms > 0),
                "--exec-dir" => exec_dir = Some(PathBuf::from(&value)),
                "--instance" => instance = value.clone(),
                _ => return Err(format!("unknown flag {flag:?}; {USAGE}")),
            }
        }
        if list {
            return Ok(Mode::List { exec_dir });
        }
        match (connect, child_id, master_pid) {
            (Some(connect), Some(child_id), Some(master_pid)) => Ok(Mode::Serve(Args {
                connect,
                child_id,
                master_pid,
                max_payload,
                nofile,
                core,
                heartbeat_ms,
                exec_dir,
                instance,
            })),
            _ => Err(USAGE.to_owned()),
        }
    }
}

pub(crate) fn read_secret(mut stdin: impl Read) -> io::Result<[u8; SECRET_LEN]> {
    let mut secret = [0u8; SECRET_LEN];
    stdin.read_exact(&mut secret)?;
    Ok(secret)
}
