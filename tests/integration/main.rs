//! Integration tests: the real `taskmaster` and `taskmaster-handler`
//! binaries on port 0, real sockets, real signals, real pids.
//!
//! Files: `bench` (the load tool, prefetch), `pool` (dispatch, growth, queue, overload, many clients), `faults`
//! (crashes, panics, signals, broken handlers), `wire` (bad peers on the
//! socket), `cli` (client commands and exit codes), `example` (the
//! writing-modules example), `http` (the HTTP/JSON API, its job table,
//! memory, docs/openapi.yaml conformance), `jobs` (job operations on the
//! socket with the Rust client and the CLI), `supervision` (time limits,
//! recycling, idle shrink, the crash-loop breaker, drain, SIGHUP under load,
//! lifecycle events, chaos).

mod bench;
mod cli;
mod example;
mod faults;
mod http;
mod jobs;
mod pool;
mod supervision;
mod wire;
