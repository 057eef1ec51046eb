//! The taskmaster master: a pre-forking process-pool supervisor, and the
//! command-line client that shares its binary.
//!
//! # Layout
//!
//! - [`cli`]: the master's flags (with environment fallbacks) and the list
//!   of client subcommands.
//! - [`client`]: the client subcommands (`submit`, `stats`, the job
//!   operations, `events`, `bench`); a plain client of the master through
//!   `taskmaster_proto`, importing none of the modules below.
//! - [`config`]: validated settings; every check that exits 2 lives there.
//! - [`server`]: wires listener, pool and signals together.
//! - [`listener`]: the one TCP listener; hello decides child or client.
//! - [`session`]: one client connection (submits in, answers out, batched).
//! - [`pool`]: the actor owning children, queue and counters.
//! - [`child`]: one task per child process (spawn, attach, jobs, exit).
//! - [`flow`]: flow control from a slow client back to the child writing for it.
//! - [`job`]: a job, where its answers go, answers to job operations.
//! - [`table`]: the job table (statuses, times, kept outcomes, eviction).
//! - [`http`]: the HTTP/JSON API (axum), a front end to the pool actor.
//! - [`metrics`]: Prometheus metrics.
//! - [`events`]: lifecycle events for `GET /events` and `taskmaster events`.
//! - [`types`]: ids and child reports shared by pool, child and table (a leaf).
//! - [`signals`]: SIGTERM/SIGINT/SIGHUP turned into pool messages.

pub mod child;
pub mod cli;
pub mod client;
pub mod config;
pub mod events;
pub mod flow;
pub mod http;
pub mod job;
pub mod listener;
pub mod metrics;
pub mod pool;
pub mod server;
pub mod session;
pub mod signals;
pub mod table;
pub mod types;
