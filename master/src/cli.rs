//! The command line: the master's flags (each with an environment
//! fallback) and the list of client subcommands. The subcommands' own
//! flags and code are in [`crate::client`].

use crate::client::bench::BenchArgs;
use crate::client::events::EventsArgs;
use crate::client::generated::CompletionsArgs;
use crate::client::jobs::{IdArgs, JobsArgs, ResultArgs};
use crate::client::submit::SubmitArgs;
use crate::client::top::TopArgs;
use crate::client::ConnectArgs;
use crate::config::Config;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

/// taskmaster: a pre-forking process-pool supervisor. Without a subcommand
/// it runs the master.
#[derive(Debug, Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// A client command; none runs the master.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The master's settings.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Client commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one job and write its response to stdout (or, with --async,
    /// print its id and leave it running).
    Submit(SubmitArgs),
    /// Print pool and queue figures as JSON.
    Stats(ConnectArgs),
    /// A live view of the master in the terminal: children, queue,
    /// jobs/s, failures by reason (`q` quits).
    Top(TopArgs),
    /// Print what the master knows of a job, as JSON.
    Status(IdArgs),
    /// Write a finished job's response to stdout (exit 75 if it has not
    /// finished).
    Result(ResultArgs),
    /// Put a start-later job in the queue.
    Start(IdArgs),
    /// Cancel a job that has not finished.
    Cancel(IdArgs),
    /// List recent jobs, newest first.
    Jobs(JobsArgs),
    /// Print lifecycle events as they happen (`NAME JSON` per line) until
    /// interrupted.
    Events(EventsArgs),
    /// Load-test a running master (jobs/s, latency percentiles).
    Bench(BenchArgs),
    /// Print a shell completion script for these commands and flags.
    Completions(CompletionsArgs),
    /// Print the man page (roff) to stdout.
    Man,
    /// Lend this host's children to a master (its --agent-listen): runs
    /// --slots handler children here and serves the master's jobs on them.
    Agent(crate::agent::AgentArgs),
}

/// Flags of the master.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A TOML file of settings whose keys are these flags' long names
    /// (`pool-max = 8`, `insecure = true`); a flag or its environment
    /// variable overrides the file.
    #[arg(long, env = "TASKMASTER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Children spawned at start; the pool never shrinks below it.
    #[arg(
        long,
        env = "TASKMASTER_POOL_START",
        default_value_t = 2,
        value_name = "N"
    )]
    pub pool_start: usize,
    /// Most children at once.
    #[arg(
        long,
        env = "TASKMASTER_POOL_MAX",
        default_value_t = 4,
        value_name = "N"
    )]
    pub pool_max: usize,
    /// Most jobs waiting in the queue; one more is refused with `overload`.
    #[arg(
        long,
        env = "TASKMASTER_JOB_MAX",
        default_value_t = 100,
        value_name = "N"
    )]
    pub job_max: usize,
    /// The TCP socket for children and clients (port 0: any free port).
    #[arg(
        long,
        env = "TASKMASTER_LISTEN",
        default_value = "127.0.0.1:7400",
        value_name = "ADDR"
    )]
    pub listen: String,
    /// The child program [default: taskmaster-handler beside this executable].
    #[arg(long, env = "TASKMASTER_HANDLER", value_name = "PATH")]
    pub handler: Option<PathBuf>,
    /// A directory of executable modules: every executable file directly in
    /// it is a module named after its file name without its extension, run
    /// once per job (input on stdin, response on stdout, parts as lines on
    /// fd 3).
    #[arg(long, env = "TASKMASTER_EXEC_DIR", value_name = "DIR")]
    pub exec_dir: Option<PathBuf>,
    /// Keep detached and start-later jobs, and their outcomes, in a store
    /// in DIR that survives a restart of the master (even kill -9).
    #[arg(long, env = "TASKMASTER_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Largest job input, part or response, in bytes.
    #[arg(long, env = "TASKMASTER_MAX_PAYLOAD", default_value_t = taskmaster_proto::codec::DEFAULT_MAX_PAYLOAD, value_name = "BYTES")]
    pub max_payload: usize,
    /// Jobs a busy child may hold when no child is free: 1 runs + the rest
    /// wait in its socket, saving a round trip per job for short jobs.
    /// `auto`: only behind work its modules' run times say is short (at
    /// most 2 ms, 64 jobs); N: up to N; 1: every job goes to the first free
    /// child.
    #[arg(
        long,
        env = "TASKMASTER_PREFETCH",
        default_value = "auto",
        value_name = "auto|N"
    )]
    pub prefetch: crate::config::Prefetch,
    /// Microseconds the master keeps polling its sockets after its last
    /// job event before it sleeps, while jobs come and go: the next submit
    /// or answer is then picked up without a wake-up (tens of µs on a VM).
    /// Costs CPU only while traffic is continuous (at most this long per
    /// quiet gap); 0: sleep at once. At most 10000.
    #[arg(
        long,
        env = "TASKMASTER_SPIN_US",
        default_value_t = 50,
        value_name = "MICROSECONDS"
    )]
    pub spin_us: u64,
    /// Seconds a shutdown waits for running jobs before killing them.
    #[arg(long, env = "TASKMASTER_GRACE", default_value_t = 30.0, value_name = "SECONDS", value_parser = parse_seconds)]
    pub grace: f64,
    /// Also serve the HTTP/JSON API on this address (port 0: any free port).
    #[arg(long, env = "TASKMASTER_HTTP", value_name = "ADDR")]
    pub http: Option<String>,
    /// Accept agents (`taskmaster agent`) lending other hosts' children on
    /// this socket. Beyond loopback it needs --tls-cert/--tls-key and a
    /// client token.
    #[arg(long, env = "TASKMASTER_AGENT_LISTEN", value_name = "ADDR")]
    pub agent_listen: Option<String>,
    /// Share one queue with every master using this NATS server and stream
    /// (JetStream): submits go to the stream, each master runs as many as
    /// it has free children.
    #[arg(long, env = "TASKMASTER_NATS", value_name = "URL")]
    pub nats: Option<String>,
    /// The JetStream stream the masters share (also the prefix of its
    /// subjects and of the outcome bucket).
    #[arg(
        long,
        env = "TASKMASTER_NATS_STREAM",
        default_value = "TASKMASTER",
        value_name = "NAME"
    )]
    pub nats_stream: String,
    /// How long a job taken from the stream may go without a progress ack
    /// (a master sends one every third of it while the job runs) before
    /// another master answers it `error` as lost.
    #[arg(long, env = "TASKMASTER_NATS_ACK_WAIT", default_value_t = 30.0, value_name = "SECONDS", value_parser = parse_seconds)]
    pub nats_ack_wait: f64,
    /// The certificate chain (PEM) agents see on --agent-listen.
    #[arg(long, env = "TASKMASTER_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "TASKMASTER_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Seconds a job may run before it fails `timeout` and its child is
    /// killed (0: no limit). A submit may ask for its own.
    #[arg(long, env = "TASKMASTER_JOB_TIMEOUT", default_value_t = 0.0, value_name = "SECONDS", value_parser = parse_seconds)]
    pub job_timeout: f64,
    /// Finished jobs whose outcome is kept for `status`/`result` (also the
    /// most start-later jobs held at once).
    #[arg(
        long,
        env = "TASKMASTER_KEEP_RESULTS",
        default_value_t = 10_000,
        value_name = "N"
    )]
    pub keep_results: usize,
    /// Seconds a finished job's outcome is kept.
    #[arg(long, env = "TASKMASTER_RESULT_TTL", default_value_t = 3600.0, value_name = "SECONDS", value_parser = parse_seconds)]
    pub result_ttl: f64,
    /// Response bytes kept in the job table in all; the oldest outcomes go
    /// first beyond it.
    #[arg(
        long,
        env = "TASKMASTER_KEEP_RESULTS_BYTES",
        default_value_t = 256 * 1024 * 1024,
        value_name = "BYTES"
    )]
    pub keep_results_bytes: usize,
    /// Jobs after which a child is retired (after its job) and replaced
    /// (0: no limit).
    #[arg(
        long,
        env = "TASKMASTER_MAX_JOBS_PER_CHILD",
        default_value_t = 0,
        value_name = "N"
    )]
    pub max_jobs_per_child: u64,
    /// Up to N jobs added at random to each child's --max-jobs-per-child,
    /// so children do not all retire at once.
    #[arg(
        long,
        env = "TASKMASTER_MAX_JOBS_JITTER",
        default_value_t = 0,
        value_name = "N"
    )]
    pub max_jobs_jitter: u64,
    /// Resident memory (MiB) past which a child is retired between jobs
    /// (0: no limit).
    #[arg(
        long,
        env = "TASKMASTER_MAX_CHILD_RSS",
        default_value_t = 0,
        value_name = "MB"
    )]
    pub max_child_rss: u64,
    /// Seconds a child above --pool-start may stay idle before it is
    /// stopped.
    #[arg(long, env = "TASKMASTER_IDLE_TIMEOUT", default_value_t = 60.0, value_name = "SECONDS", value_parser = parse_seconds)]
    pub idle_timeout: f64,
    /// Start-up failures (children that died before they had started)
    /// within --breaker-window that trip the crash-loop breaker.
    #[arg(
        long,
        env = "TASKMASTER_BREAKER_DEATHS",
        default_value_t = 5,
        value_name = "N"
    )]
    pub breaker_deaths: u32,
    /// The crash-loop breaker's window, in seconds.
    #[arg(long, env = "TASKMASTER_BREAKER_WINDOW", default_value_t = 10.0, value_name = "SECONDS", value_parser = parse_seconds)]
    pub breaker_window: f64,
    /// Seconds a child must stay up after its hello to count as started
    /// (finishing a job also counts). Only the death of a child that has not
    /// started is a start-up failure; a started child that dies is replaced
    /// at once, without back-off.
    #[arg(long, env = "TASKMASTER_START_SECS", default_value_t = 1.0, value_name = "SECONDS", value_parser = parse_seconds)]
    pub start_secs: f64,
    /// Run children as this user (name or uid; the master must be allowed
    /// to switch to it, i.e. run as root).
    #[arg(long, env = "TASKMASTER_CHILD_USER", value_name = "USER")]
    pub child_user: Option<String>,
    /// Run children with this group (name or gid).
    #[arg(long, env = "TASKMASTER_CHILD_GROUP", value_name = "GROUP")]
    pub child_group: Option<String>,
    /// Open-file limit (RLIMIT_NOFILE) of each child (default: inherited).
    #[arg(long, env = "TASKMASTER_CHILD_NOFILE", value_name = "N")]
    pub child_nofile: Option<u64>,
    /// Let children write core dumps (by default their core size limit is 0).
    #[arg(long, env = "TASKMASTER_CHILD_CORE_DUMPS")]
    pub child_core_dumps: bool,
    /// Seconds between a child's heartbeats; a child silent for three of
    /// them (stopped, frozen) is killed and replaced, its job failing
    /// `error` (0: no heartbeats).
    #[arg(long, env = "TASKMASTER_HEARTBEAT", default_value_t = 2.0, value_name = "SECONDS", value_parser = parse_seconds)]
    pub heartbeat: f64,
    /// A file whose first line is the client token every client must
    /// present (socket hello, HTTP `Authorization: Bearer`). The token may
    /// also come from TASKMASTER_TOKEN.
    #[arg(long, env = "TASKMASTER_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Forget a job submitted on the socket and answered on that connection
    /// once its answer is sent (its status is no longer kept). Detached and
    /// HTTP jobs are kept as always. Saves most of the job table's cost on
    /// the socket's hot path.
    #[arg(long, env = "TASKMASTER_FORGET_ANSWERED")]
    pub forget_answered: bool,
    /// Allow listening on a non-loopback address without a client token.
    #[arg(long, env = "TASKMASTER_INSECURE")]
    pub insecure: bool,
    /// Most open client connections (socket clients after their hello, and
    /// HTTP connections; children do not count); more are closed at once.
    #[arg(
        long,
        env = "TASKMASTER_MAX_CONNECTIONS",
        default_value_t = 1024,
        value_name = "N"
    )]
    pub max_connections: usize,
    /// Most connections that have not yet said hello; past it the oldest
    /// of them is closed to make room.
    #[arg(
        long,
        env = "TASKMASTER_MAX_HANDSHAKES",
        default_value_t = 512,
        value_name = "N"
    )]
    pub max_handshakes: usize,
    /// Jobs one client connection may have in flight; beyond it the master
    /// stops reading from that connection until answers are taken.
    #[arg(
        long,
        env = "TASKMASTER_MAX_IN_FLIGHT",
        default_value_t = 4096,
        value_name = "N"
    )]
    pub max_in_flight: usize,
    /// Bytes queued for one client connection and not yet written past
    /// which the children writing for it are no longer read (flow control:
    /// they wait until the client reads) [default: 1 MiB, at most half of
    /// --max-client-backlog].
    #[arg(long, env = "TASKMASTER_CLIENT_WINDOW", value_name = "BYTES")]
    pub client_window: Option<usize>,
    /// Bytes queued for all client connections together past which every
    /// client with unsent bytes is held back the same way.
    #[arg(
        long,
        env = "TASKMASTER_MAX_TOTAL_BACKLOG",
        default_value_t = 256 * 1024 * 1024,
        value_name = "BYTES"
    )]
    pub max_total_backlog: usize,
    /// Last resort beyond flow control: bytes queued for one client
    /// connection past which it is closed (only reachable if what a child
    /// had already sent outgrows the window by this much).
    #[arg(
        long,
        env = "TASKMASTER_MAX_CLIENT_BACKLOG",
        default_value_t = 64 * 1024 * 1024,
        value_name = "BYTES"
    )]
    pub max_client_backlog: usize,
    /// Seconds a client connection with nothing in flight may stay silent
    /// before it is closed (0: never).
    #[arg(long, env = "TASKMASTER_CLIENT_IDLE_TIMEOUT", default_value_t = 300.0, value_name = "SECONDS", value_parser = parse_seconds)]
    pub client_idle_timeout: f64,
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=1e9).contains(&v) => Ok(v),
        _ => Err(format!("expected a number of seconds, got {s:?}")),
    }
}

impl ServeArgs {
    /// The client token: from `--token-file`, else `TASKMASTER_TOKEN`.
    pub fn token(&self) -> Result<Option<crate::config::Token>, crate::config::ConfigError> {
        use taskmaster_proto::handshake::{read_token_file, TOKEN_ENV};
        let token = match &self.token_file {
            Some(path) => {
                Some(read_token_file(path).map_err(crate::config::ConfigError::TokenFile)?)
            }
            None => std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty()),
        };
        Ok(token.map(|t| crate::config::Token(t.into())))
    }

    /// The `--nats` settings, if asked for.
    pub fn nats(&self) -> Option<crate::nats::NatsConfig> {
        let url = self.nats.clone()?;
        Some(crate::nats::NatsConfig {
            url,
            stream: self.nats_stream.clone(),
            ack_wait: Duration::from_secs_f64(self.nats_ack_wait.max(0.3)),
        })
    }

    /// The settings these flags ask for (not yet validated).
    pub fn to_config(&self) -> Config {
        let handler = self.handler.clone().unwrap_or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|exe| exe.parent().map(|dir| dir.join("taskmaster-handler")))
                .unwrap_or_else(|| PathBuf::from("taskmaster-handler"))
        });
        Config {
            pool_start: self.pool_start,
            pool_max: self.pool_max,
            agents: self.agent_listen.is_some(),
            job_max: self.job_max,
            handler,
            exec_dir: self.exec_dir.clone(),
            state_dir: self.state_dir.clone(),
            max_payload: self.max_payload,
            grace: Duration::from_secs_f64(self.grace),
            prefetch: self.prefetch,
            spin: Duration::from_micros(self.spin_us),
            job_timeout: (self.job_timeout > 0.0)
                .then(|| Duration::from_secs_f64(self.job_timeout)),
            keep_results: self.keep_results,
            result_ttl: Duration::from_secs_f64(self.result_ttl),
            keep_results_bytes: self.keep_results_bytes,
            max_jobs_per_child: self.max_jobs_per_child,
            max_jobs_jitter: self.max_jobs_jitter,
            max_child_rss: (self.max_child_rss > 0).then(|| self.max_child_rss * 1024 * 1024),
            idle_timeout: Duration::from_secs_f64(self.idle_timeout),
            breaker_deaths: self.breaker_deaths,
            breaker_window: Duration::from_secs_f64(self.breaker_window),
            start_secs: Duration::from_secs_f64(self.start_secs),
            child_user: self.child_user.clone(),
            child_group: self.child_group.clone(),
            child_nofile: self.child_nofile,
            child_core_dumps: self.child_core_dumps,
            heartbeat: (self.heartbeat > 0.0)
                .then(|| Duration::from_secs_f64(self.heartbeat.max(0.01))),
            token: None,
            forget_answered: self.forget_answered,
            max_connections: self.max_connections,
            max_handshakes: self.max_handshakes,
            max_in_flight: self.max_in_flight,
            max_client_backlog: self.max_client_backlog,
            client_window: self
                .client_window
                .unwrap_or((1 << 20).min(self.max_client_backlog / 2)),
            max_total_backlog: self.max_total_backlog,
            client_idle_timeout: (self.client_idle_timeout > 0.0)
                .then(|| Duration::from_secs_f64(self.client_idle_timeout)),
        }
    }
}
