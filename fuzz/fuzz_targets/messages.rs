//! Fuzz target `messages`: arbitrary bytes as one frame body, decoded as
//! `Hello`, `ToMaster`, `ToClient`, `ToHandler` and `FromHandler`; whatever
//! decodes re-encodes to the same bytes and decodes again to an equal value.
//!
//! The check is shared with the stable corpus replay
//! (`proto/tests/fuzz_corpus.rs`); input layout in its module docs.
#![no_main]

#[path = "../../proto/tests/fuzz_checks/mod.rs"]
mod fuzz_checks;

#[global_allocator]
static ALLOC: fuzz_checks::TrackingAlloc = fuzz_checks::TrackingAlloc;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_checks::check_messages(data));
