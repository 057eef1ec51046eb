//! The taskmaster master: a pre-forking process-pool supervisor, and the
//! command-line client that shares its binary. `main.rs` only parses the
//! command line and runs a client command or [`server::run`].
//!
//! # Layout
//!
//! Start-up:
//!
//! - [`cli`]: the top-level parser only: [`cli::Cli`], [`cli::Command`]
//!   (the client subcommands), [`cli::ServeArgs`] (every master flag with
//!   its environment variable).
//! - [`config`]: the validated [`config::Config`]; every check that exits 2.
//! - [`server`]: wires listener, HTTP server, pool, metrics and signals.
//! - [`signals`]: SIGTERM/SIGINT/SIGHUP turned into pool messages.
//! - [`config_file`]: `--config FILE`, TOML keys turned into flags for
//!   clap to parse.
//! - [`notify`]: systemd's `NOTIFY_SOCKET` (`READY=1`, `STATUS=`,
//!   `STOPPING=1`).
//!
//! Connections:
//!
//! - [`listener`]: the one TCP listener; [`listener::Handshakes`] (oldest
//!   evicted); the hello decides child or client.
//! - [`session`]: one client connection: submits, stats, events and job
//!   operations in, answers out through a batched writer task.
//! - [`outbox`]: a client connection's outbox: its batching writer task,
//!   and the direct write that skips it for the last answer of a round.
//! - [`flow`]: flow control from a slow client back to the child writing
//!   for it: a client's [`flow::Backlog`], the [`flow::Total`] of all.
//! - [`http`]: the HTTP/JSON API (axum), a front end to the pool actor.
//!
//! The pool and what it owns:
//!
//! - [`pool`]: the actor owning children, queue, job table and counters,
//!   reached through [`pool::PoolHandle`]; one file per concern:
//!   - `mod.rs`: the state (`Pool`, a `Slot` per child), [`pool::start`],
//!     the `run` loop.
//!   - `handle.rs`: [`pool::PoolHandle`], [`pool::PoolCmd`],
//!     [`pool::Health`].
//!   - `dispatch.rs`: admission, the FIFO queue, first-free dispatch,
//!     prefetch, `finish` (every answer).
//!   - `lifecycle.rs`: spawn, hello, ready, started, a child's reports,
//!     its exit; the launcher's pool side.
//!   - `breaker.rs`: the start-up failure and crash-loop policy (pure).
//!   - `recycle.rs`: retiring (job count, RSS), idle shrink, SIGHUP.
//!   - `ops.rs`: status, result, start, cancel, list; time limits.
//!   - `shutdown.rs`: the drain and the hurried stop.
//!   - `stats.rs`: `/healthz` and the stats figures.
//!   - `tests.rs`, `model.rs`: unit tests and the proptest model.
//! - [`child`]: one task per child process (spawn, attach, jobs, exit).
//! - [`wake`]: [`wake::Gate`], a `select!` branch polled only after its
//!   own wake-up (a child's exit watch and heartbeat, a session's timers).
//! - [`journal`]: each child's answer journal (made at spawn, read back
//!   after its death).
//! - [`job`]: a job, where its answers go, answers to job operations.
//! - [`table`]: the job table (statuses, times, kept outcomes, eviction).
//! - [`slots`]: the table's storage, a ring indexed by job number.
//! - [`events`]: lifecycle events for `GET /events` and `taskmaster events`.
//! - [`metrics`]: Prometheus metrics.
//! - [`types`]: the leaf every server module may import and that imports
//!   none of ours: ids, child reports, exit info, [`types::Reporter`].
//!
//! The client side:
//!
//! - [`client`]: the client subcommands, a plain client of the master
//!   through `taskmaster_proto`, importing none of the modules above:
//!   - `mod.rs`: `--connect`, `--token-file`, exit statuses, errors.
//!   - `submit.rs`: `taskmaster submit`.
//!   - `jobs.rs`: `status`, `result`, `start`, `cancel`, `jobs`.
//!   - `events.rs`: `taskmaster events`.
//!   - `stats.rs`: `taskmaster stats`.
//!   - `bench.rs`: `taskmaster bench`, the load generator.

pub mod agent;
pub mod agents;
pub mod child;
pub mod cli;
pub mod client;
pub mod config;
pub mod config_file;
pub mod events;
pub mod flow;
pub mod http;
pub mod job;
pub mod journal;
pub mod listener;
pub mod metrics;
pub mod nats;
pub mod notify;
pub mod outbox;
pub mod pool;
pub mod server;
pub mod session;
pub mod signals;
pub mod slots;
pub mod spin;
pub mod store;
pub mod table;
pub mod tls;
pub mod types;
pub mod wake;
