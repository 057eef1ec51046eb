//! Integration tests: the real `taskmaster` and `taskmaster-handler`
//! binaries on port 0, real sockets, real signals, real pids.
//!
//! Files: `pool` (dispatch, growth, queue, overload, many clients), `faults`
//! (crashes, panics, signals, broken handlers), `wire` (bad peers on the
//! socket), `cli` (client commands and exit codes), `example` (the
//! writing-modules example).

mod cli;
mod example;
mod faults;
mod pool;
mod wire;
