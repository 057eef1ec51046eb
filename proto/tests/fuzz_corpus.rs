//! Replays the checked-in fuzz corpus (`fuzz/corpus/`) through the same
//! checks the cargo-fuzz targets run, on stable, as an ordinary test: a
//! decoder change that makes any corpus input panic, loop, misframe or
//! allocate past the limit fails `cargo test` without nightly.
//!
//! - `frame_decoder`, `messages`, `handshake`, `agent_link`: every file
//!   through [`fuzz_checks::check_frame_decoder`],
//!   [`fuzz_checks::check_messages`], [`fuzz_checks::check_handshake`],
//!   [`fuzz_checks::check_agent_link`].
//! - `http_routes`: the router itself needs the master crate, which this
//!   package cannot depend on; its job ids go through
//!   [`fuzz_checks::check_job_id`].
//!
//! The seeds of `fuzz_checks/seeds.rs` must all be in the corpus with the
//! same bytes; after a wire change, rewrite them with
//! `cargo run -p taskmaster-proto --example write_fuzz_corpus`.

mod fuzz_checks;
#[path = "fuzz_checks/seeds.rs"]
mod seeds;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

#[global_allocator]
static ALLOC: fuzz_checks::TrackingAlloc = fuzz_checks::TrackingAlloc;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

/// Every file of a target's corpus, sorted by name.
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).expect("a corpus file"))
        })
        .collect();
    files.sort();
    assert!(
        files.len() >= 20,
        "{}: only {} files",
        dir.display(),
        files.len()
    );
    files
}

/// Runs `check` on every file; names every file that panicked.
fn replay(target: &str, check: impl Fn(&[u8])) {
    let failed: Vec<String> = corpus(target)
        .into_iter()
        .filter(|(_, bytes)| catch_unwind(AssertUnwindSafe(|| check(bytes))).is_err())
        .map(|(name, _)| name)
        .collect();
    assert!(failed.is_empty(), "fuzz/corpus/{target}: {failed:?} failed");
}

#[test]
fn frame_decoder_corpus() {
    replay("frame_decoder", fuzz_checks::check_frame_decoder);
}

#[test]
fn messages_corpus() {
    replay("messages", fuzz_checks::check_messages);
}

#[test]
fn handshake_corpus() {
    replay("handshake", fuzz_checks::check_handshake);
}

#[test]
fn agent_link_corpus() {
    replay("agent_link", fuzz_checks::check_agent_link);
}

#[test]
fn http_routes_job_ids() {
    replay("http_routes", |bytes| {
        let text = String::from_utf8_lossy(bytes);
        for line in text.lines() {
            fuzz_checks::check_job_id(line);
            for word in line.split(['/', ' ', '?', '&', '=']) {
                fuzz_checks::check_job_id(word);
            }
        }
    });
}

#[test]
fn job_ids() {
    for id in [
        "0123456789ab-1",
        "0123456789ab-18446744073709551615",
        "0123456789ab-18446744073709551616",
        "0123456789ab-01",
        "0123456789AB-1",
        "0123456789ab--1",
        "0123456789ab-+1",
        "é123456789ab-1",
        "0123456789ab-١",
        "",
        "-",
    ] {
        fuzz_checks::check_job_id(id);
    }
    fuzz_checks::check_job_id(&"é".repeat(100));
}

/// The checks see the faults they are there to see: these would pass
/// vacuously if the reader or the allocation tracking were broken.
#[test]
fn checks_are_not_vacuous() {
    use fuzz_checks::{reference_frames, Expect, Script, MAX_PAYLOAD};
    let frames = reference_frames(&[0xff, 0xff, 0xff, 0xff, 0], MAX_PAYLOAD);
    assert_eq!(frames, [Expect::OverLimit]);
    let frames = reference_frames(&[0, 0, 0, 1, 7, 0, 0], MAX_PAYLOAD);
    assert_eq!(frames, [Expect::Frame(&[7]), Expect::Truncated]);
    let frames = reference_frames(&[0, 0, 0, 0, 0, 0, 0, 1], MAX_PAYLOAD);
    assert_eq!(frames, [Expect::Frame(&[]), Expect::LengthThenEof]);
    let script = Script::parse(&[0x32, 1, 2, 9]);
    assert_eq!(script.chunks, &[1, 2]);
    assert!(script.stall && script.pending);
    assert_eq!(script.stream, &[9]);
    let (_, peak) = fuzz_checks::peak_allocation(|| vec![0u8; 100_000]);
    assert!(peak >= 100_000, "allocation tracking is off: {peak}");
}

#[test]
fn seed_corpus_is_current() {
    let mut stale = Vec::new();
    let mut names = std::collections::HashSet::new();
    for seed in seeds::seeds() {
        assert!(
            names.insert((seed.target, seed.name.clone())),
            "two seeds named {}/{}",
            seed.target,
            seed.name
        );
        let path = corpus_dir(seed.target).join(&seed.name);
        if std::fs::read(&path).ok().as_deref() != Some(&seed.bytes[..]) {
            stale.push(format!("{}/{}", seed.target, seed.name));
        }
    }
    assert!(
        stale.is_empty(),
        "seed files missing or stale: {stale:?}; rewrite them with \
         `cargo run -p taskmaster-proto --example write_fuzz_corpus`"
    );
}
