//! Fuzz target `handshake`: `read_hello` over an in-memory peer (chunked,
//! possibly silent at the end) on a paused-clock current-thread runtime
//! with a short deadline.
//!
//! The check is shared with the stable corpus replay
//! (`proto/tests/fuzz_corpus.rs`); input layout in its module docs.
#![no_main]

#[path = "../../proto/tests/fuzz_checks/mod.rs"]
mod fuzz_checks;

#[global_allocator]
static ALLOC: fuzz_checks::TrackingAlloc = fuzz_checks::TrackingAlloc;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_checks::check_handshake(data));
