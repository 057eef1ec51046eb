//! The master's validated settings. Every check that can fail runs here,
//! before anything is spawned, so a bad flag costs one line and exit 2.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The client token. Its `Debug` hides it, so no log or panic message
/// prints it.
#[derive(Clone)]
pub struct Token(pub std::sync::Arc<str>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// Whether `given` is this token (constant time).
    pub fn matches(&self, given: &str) -> bool {
        taskmaster_proto::handshake::tokens_match(given.as_bytes(), self.0.as_bytes())
    }
}

/// The longest `--spin-us`: past a few hundred µs polling costs more CPU
/// than the wake-up it saves.
pub const MAX_SPIN: Duration = Duration::from_millis(10);

/// The longest job time limit (a year): longer ones are clamped, so a
/// deadline always fits the timer wheel.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// How many jobs a busy child may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefetch {
    /// As many as its module's run-time estimate allows (`pool::estimate`).
    Auto,
    /// At most this many (1: strict first-free-child dispatch).
    Fixed(usize),
}

impl std::str::FromStr for Prefetch {
    type Err = String;
    fn from_str(s: &str) -> Result<Prefetch, String> {
        if s == "auto" {
            return Ok(Prefetch::Auto);
        }
        match s.parse::<usize>() {
            Ok(n) if (1..=1024).contains(&n) => Ok(Prefetch::Fixed(n)),
            _ => Err(format!(
                "expected auto or a number from 1 to 1024, got {s:?}"
            )),
        }
    }
}

/// Settings of a running master.
#[derive(Debug, Clone)]
pub struct Config {
    /// Children spawned at start; the pool never shrinks below it.
    pub pool_start: usize,
    /// Most children at once.
    pub pool_max: usize,
    /// Agents may join (`--agent-listen`): then `pool-max` may be 0.
    pub agents: bool,
    /// Most jobs waiting in the queue.
    pub job_max: usize,
    /// The handler program.
    pub handler: PathBuf,
    /// Directory of executable modules, handed to the handler (absolute
    /// once [`check_exec_dir`] has run).
    pub exec_dir: Option<PathBuf>,
    /// Directory of the durable job store (`None`: jobs live in memory).
    pub state_dir: Option<PathBuf>,
    /// Largest payload in a frame; bigger frames close the connection.
    pub max_payload: usize,
    /// How long a shutdown waits for running jobs.
    pub grace: Duration,
    /// Jobs a busy child may hold (1 running + the rest waiting in its
    /// socket).
    pub prefetch: Prefetch,
    /// How long the master polls after its last job event before it
    /// sleeps (zero: not at all); see `crate::spin`.
    pub spin: Duration,
    /// Run-time limit of a job that asks for none (`None`: no limit).
    pub job_timeout: Option<Duration>,
    /// Finished jobs kept in the job table (and start-later jobs held).
    pub keep_results: usize,
    /// How long a finished job is kept.
    pub result_ttl: Duration,
    /// Response bytes kept in the job table in all.
    pub keep_results_bytes: usize,
    /// Jobs after which a child is retired and replaced (0: no limit).
    pub max_jobs_per_child: u64,
    /// Up to this many jobs added at random to each child's limit, so
    /// children do not all retire at once.
    pub max_jobs_jitter: u64,
    /// Resident memory after which a child is retired between jobs.
    pub max_child_rss: Option<u64>,
    /// How long a child above `pool-start` may stay idle.
    pub idle_timeout: Duration,
    /// Start-up failures within `breaker_window` that trip the crash-loop
    /// breaker.
    pub breaker_deaths: u32,
    /// How long a child must have been ready (without finishing a job) for
    /// its death not to count as a start-up failure.
    pub start_secs: Duration,
    /// The breaker's window.
    pub breaker_window: Duration,
    /// User to run children as (name or uid).
    pub child_user: Option<String>,
    /// Group to run children as (name or gid).
    pub child_group: Option<String>,
    /// Open-file limit for children.
    pub child_nofile: Option<u64>,
    /// Let children write core dumps (off: core size limit 0).
    pub child_core_dumps: bool,
    /// How often children send heartbeats (`None`: off).
    pub heartbeat: Option<Duration>,
    /// Drop a job from the table once answered on its submitter's
    /// connection.
    pub forget_answered: bool,
    /// The token clients must present (`None`: none required).
    pub token: Option<Token>,
    /// Open connections allowed.
    pub max_connections: usize,
    /// Connections before their hello allowed.
    pub max_handshakes: usize,
    /// Jobs one client connection may have in flight.
    pub max_in_flight: usize,
    /// Unsent bytes past which a client connection is closed (what flow
    /// control could not hold back).
    pub max_client_backlog: usize,
    /// Unsent bytes past which the children writing for a client wait.
    pub client_window: usize,
    /// Unsent bytes of all clients past which every client with unsent
    /// bytes is held back.
    pub max_total_backlog: usize,
    /// How long a client connection with nothing in flight may stay silent.
    pub client_idle_timeout: Option<Duration>,
}

/// A user or group name (or number) resolved to its id.
pub fn resolve_ids(cfg: &Config) -> Result<(Option<u32>, Option<u32>), ConfigError> {
    use nix::unistd::{Group, User};
    let bad = |what: &str, name: &str, why: String| ConfigError::Identity {
        what: what.to_owned(),
        name: name.to_owned(),
        why,
    };
    let user = match &cfg.child_user {
        None => None,
        Some(name) => Some(match name.parse::<u32>() {
            Ok(n) => (
                n,
                User::from_uid(n.into())
                    .ok()
                    .flatten()
                    .map(|u| u.gid.as_raw()),
            ),
            Err(_) => {
                let u = User::from_name(name)
                    .map_err(|e| bad("user", name, e.to_string()))?
                    .ok_or_else(|| bad("user", name, "no such user".into()))?;
                (u.uid.as_raw(), Some(u.gid.as_raw()))
            }
        }),
    };
    let uid = user.map(|(uid, _)| uid);
    // Without --child-group, the user's own primary group: never root's.
    let primary = user.and_then(|(_, gid)| gid);
    let gid = match &cfg.child_group {
        None => None,
        Some(name) => Some(match name.parse::<u32>() {
            Ok(n) => n,
            Err(_) => Group::from_name(name)
                .map_err(|e| bad("group", name, e.to_string()))?
                .ok_or_else(|| bad("group", name, "no such group".into()))?
                .gid
                .as_raw(),
        }),
    };
    Ok((uid, gid.or(primary)))
}

/// A setting that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--pool-max 0`.
    #[error("--pool-max must be at least 1 (0 only with --agent-listen)")]
    PoolMaxZero,
    /// `--pool-start` above `--pool-max`.
    #[error("--pool-start ({start}) must not exceed --pool-max ({max})")]
    StartAboveMax {
        /// pool-start.
        start: usize,
        /// pool-max.
        max: usize,
    },
    /// The handler is missing or not executable.
    #[error("handler program {path}: {why}")]
    Handler {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The listen address cannot be used.
    #[error("cannot listen on {addr}: {why}")]
    Listen {
        /// The address as given.
        addr: String,
        /// What is wrong.
        why: String,
    },
    /// `--spin-us` out of range.
    #[error("--spin-us must be at most {max}, got {0}", max = MAX_SPIN.as_micros())]
    Spin(u128),
    /// `--prefetch` out of range.
    #[error("--prefetch must be between 1 and 1024, got {0}")]
    Prefetch(usize),
    /// `--child-user` or `--child-group` names nobody.
    #[error("--child-{what} {name}: {why}")]
    Identity {
        /// `user` or `group`.
        what: String,
        /// As given.
        name: String,
        /// What is wrong.
        why: String,
    },
    /// A limit that must be at least 1.
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    /// Listening beyond loopback with no client token.
    #[error("refusing to listen on {addr} (not loopback) without a client token: set --token-file or TASKMASTER_TOKEN, or pass --insecure")]
    Exposed {
        /// The address.
        addr: SocketAddr,
    },
    /// `--agent-listen` beyond loopback without TLS or a token.
    #[error("refusing --agent-listen {addr} (not loopback) without {missing}: agents beyond loopback need TLS and the client token")]
    AgentsExposed {
        /// The address.
        addr: SocketAddr,
        /// `--tls-cert/--tls-key`, a client token, or both.
        missing: &'static str,
    },
    /// The token file cannot be used.
    #[error("--token-file: {0}")]
    TokenFile(String),
    /// `--job-timeout` above a year.
    #[error("--job-timeout must be at most 31536000 seconds (a year)")]
    JobTimeout,
    /// `--breaker-deaths 0`.
    #[error("--breaker-deaths must be at least 1")]
    Breaker,
    /// The flow-control window must lie below the closing limit.
    #[error("--client-window ({window}) must be below --max-client-backlog ({close_at})")]
    Window {
        /// `--client-window`.
        window: usize,
        /// `--max-client-backlog`.
        close_at: usize,
    },
    /// `--exec-dir` cannot be used: unreadable, or its modules clash.
    #[error("--exec-dir {dir}: {why}")]
    ExecDir {
        /// As given.
        dir: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// `--max-payload` out of range.
    #[error("--max-payload must be between 1 KiB and 1 GiB, got {0}")]
    MaxPayload(usize),
}

impl Config {
    /// Checks the pool bounds, payload limit and handler program.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.pool_max == 0 && !self.agents {
            return Err(ConfigError::PoolMaxZero);
        }
        if self.pool_start > self.pool_max {
            return Err(ConfigError::StartAboveMax {
                start: self.pool_start,
                max: self.pool_max,
            });
        }
        if let Prefetch::Fixed(n) = self.prefetch {
            if !(1..=1024).contains(&n) {
                return Err(ConfigError::Prefetch(n));
            }
        }
        if self.spin > MAX_SPIN {
            return Err(ConfigError::Spin(self.spin.as_micros()));
        }
        if self.job_timeout.is_some_and(|t| t > MAX_TIMEOUT) {
            return Err(ConfigError::JobTimeout);
        }
        for (flag, v) in [
            ("--max-connections", self.max_connections),
            ("--max-handshakes", self.max_handshakes),
            ("--max-in-flight", self.max_in_flight),
            ("--max-client-backlog", self.max_client_backlog),
            ("--max-total-backlog", self.max_total_backlog),
        ] {
            if v == 0 {
                return Err(ConfigError::Zero(flag));
            }
        }
        if self.client_window >= self.max_client_backlog {
            return Err(ConfigError::Window {
                window: self.client_window,
                close_at: self.max_client_backlog,
            });
        }
        if self.breaker_deaths == 0 {
            return Err(ConfigError::Breaker);
        }
        if !(1024..=1 << 30).contains(&self.max_payload) {
            return Err(ConfigError::MaxPayload(self.max_payload));
        }
        resolve_ids(self)?;
        check_executable(&self.handler)
    }
}

/// How long the handler may take to list its modules.
const LIST_MODULES_LIMIT: Duration = Duration::from_secs(10);

/// Checks `--exec-dir` before anything is spawned: the directory must be
/// readable, and the handler itself must accept it, since only the handler
/// knows its built-in modules' names (`--list-modules`: it scans the
/// directory as each child will, and refuses two files giving one name or a
/// name clashing with a built-in). Makes the directory absolute and returns
/// every module name.
pub fn check_exec_dir(cfg: &mut Config) -> Result<Option<Vec<String>>, ConfigError> {
    let Some(dir) = cfg.exec_dir.clone() else {
        return Ok(None);
    };
    let (absolute, names) = exec_dir_modules(&cfg.handler, &dir)?;
    cfg.exec_dir = Some(absolute);
    Ok(Some(names))
}

/// [`check_exec_dir`] for `handler` and `dir`: the directory made absolute,
/// and its module names.
pub fn exec_dir_modules(
    handler: &std::path::Path,
    dir: &std::path::Path,
) -> Result<(PathBuf, Vec<String>), ConfigError> {
    let dir = dir.to_path_buf();
    let err = |why: String| ConfigError::ExecDir {
        dir: dir.clone(),
        why,
    };
    let absolute = std::fs::canonicalize(&dir).map_err(|e| err(e.to_string()))?;
    std::fs::read_dir(&absolute).map_err(|e| err(e.to_string()))?;
    let child = std::process::Command::new(handler)
        .arg("--list-modules")
        .arg("--exec-dir")
        .arg(&absolute)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .env_remove(taskmaster_proto::handshake::TOKEN_ENV)
        .env_remove(taskmaster_proto::handshake::TOKEN_FILE_ENV)
        .spawn()
        .map_err(|e| err(format!("cannot run {}: {e}", handler.display())))?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    let output = match rx.recv_timeout(LIST_MODULES_LIMIT) {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => return Err(err(format!("waiting for {}: {e}", handler.display()))),
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            return Err(err(format!(
                "{} --list-modules did not answer within {LIST_MODULES_LIMIT:?}",
                handler.display()
            )));
        }
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        // The handler's own `name[pid]: ` prefix says nothing here.
        let why = stderr
            .trim()
            .split_once("]: ")
            .filter(|(who, _)| who.contains('[') && !who.contains(' '))
            .map_or(stderr.trim(), |(_, what)| what);
        return Err(err(if why.is_empty() {
            format!(
                "{} --list-modules failed ({})",
                handler.display(),
                output.status
            )
        } else {
            why.to_owned()
        }));
    }
    Ok((
        absolute,
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
    ))
}

/// The handler program exists and may be run.
pub fn check_executable(path: &PathBuf) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |why: String| ConfigError::Handler {
        path: path.clone(),
        why,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if !meta.is_file() {
        return Err(err("not a file".into()));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(err("not executable".into()));
    }
    Ok(())
}

/// Connections the kernel may hold for `accept` (capped by
/// `net.core.somaxconn`).
const LISTEN_BACKLOG: i32 = 4096;

/// Binds the listening socket now, so an unusable address fails before any
/// child is spawned.
pub fn bind(addr: &str) -> Result<std::net::TcpListener, ConfigError> {
    let err = |why: String| ConfigError::Listen {
        addr: addr.to_owned(),
        why,
    };
    let addrs: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(addr)
        .map_err(|e| err(e.to_string()))?
        .collect();
    let mut last = err("no address".into());
    for a in addrs {
        match listen(a) {
            Ok(l) => return Ok(l),
            Err(e) => last = err(e.to_string()),
        }
    }
    Err(last)
}

/// A listening socket with a deep accept backlog: std's 128 turns a burst
/// of connects into SYN retransmits (a second each).
fn listen(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// The address children connect back to: the listener's own, with a
/// wildcard IP replaced by loopback.
pub fn connect_back(local: SocketAddr) -> SocketAddr {
    let mut addr = local;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    addr
}
