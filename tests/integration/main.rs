//! Integration tests: the real `taskmaster` and `taskmaster-handler`
//! binaries on port 0, real sockets, real signals, real pids.
//!
//! Files: `bench` (the load tool, prefetch), `pool` (dispatch, growth, queue, overload, many clients), `faults`
//! (crashes, panics, signals, broken handlers), `wire` (bad peers on the
//! socket), `cli` (client commands and exit codes), `example` (the
//! writing-modules example).

mod bench;
mod cli;
mod example;
mod faults;
mod pool;
mod wire;
