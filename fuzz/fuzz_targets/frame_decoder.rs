//! Fuzz target `frame_decoder`: the frame reader (async, with fuzz-chosen
//! chunk sizes and Pendings; and the blocking reader) against a reference
//! framing, every frame decoded as `ToMaster` and `FromHandler`; over-limit
//! length prefixes rejected before any body is read, and no allocation
//! beyond the frame limit.
//!
//! The check is shared with the stable corpus replay
//! (`proto/tests/fuzz_corpus.rs`); input layout in its module docs.
#![no_main]

#[path = "../../proto/tests/fuzz_checks/mod.rs"]
mod fuzz_checks;

#[global_allocator]
static ALLOC: fuzz_checks::TrackingAlloc = fuzz_checks::TrackingAlloc;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_checks::check_frame_decoder(data));
