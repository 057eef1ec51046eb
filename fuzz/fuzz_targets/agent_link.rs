//! Fuzz target `agent_link`: the agent link's frames (`--agent-listen`,
//! `taskmaster agent`). The stream goes through the frame reader (async,
//! with fuzz-chosen chunk sizes and Pendings) against a reference framing,
//! every frame decoded as `FromAgent` (what the master reads) and as
//! `ToAgent` (what an agent reads); the stream less its length prefix is
//! also decoded as one bare body, as `FromAgent`, `ToAgent` and `Hello`.
//! Whatever decodes re-encodes to the same bytes; no allocation beyond the
//! limits.
//!
//! The check is shared with the stable corpus replay
//! (`proto/tests/fuzz_corpus.rs`); input layout in its module docs.
#![no_main]

#[path = "../../proto/tests/fuzz_checks/mod.rs"]
mod fuzz_checks;

#[global_allocator]
static ALLOC: fuzz_checks::TrackingAlloc = fuzz_checks::TrackingAlloc;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_checks::check_agent_link(data));
