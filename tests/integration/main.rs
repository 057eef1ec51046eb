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
//! lifecycle events, chaos), `hardening` (stolen and replayed child
//! secrets, forged answers, client tokens, unread answers, idle and slow
//! connections, connection limits, non-loopback binds), `soak` (mixed load
//! with a child killed every second; RSS, fds and respawns flat),
//! `reliability` (kills of healthy children, a handler that cannot start,
//! flow control for a client that stops reading, children getting in
//! while clients hold every place, fd exhaustion, oversized child output),
//! `durable` (`--state-dir`: restart after kill -9, drain, retention,
//! lock, corrupt store), `exec` (executable modules of `--exec-dir`),
//! `priority` (priorities, retries, poison jobs), `python` (the Python SDK's unittest suite on the real binaries),
//! `schemathesis` (docs/openapi.yaml against the server by schemathesis,
//! every phase, with and without a client token),
//! `top` (`taskmaster top` in a pseudo-terminal, per-child stats),
//! `conventions` (the config file, completions and man page, systemd's
//! `NOTIFY_SOCKET`), `spin` (`--spin-us`: the
//! master polls around job events only), `layout` (no import circle in any crate, no source
//! file over 700 lines).

mod agents;
mod bench;
mod blocking;
mod cli;
mod conventions;
mod durable;
mod example;
mod exec;
mod faults;
mod hardening;
mod http;
mod jobs;
mod layout;
mod nats;
mod pool;
mod priority;
mod python;
mod reliability;
mod schemathesis;
mod soak;
mod spin;
mod supervision;
mod top;
mod wire;
