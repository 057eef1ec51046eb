//! The properties the fuzz targets check, shared word for word by the
//! cargo-fuzz targets in `fuzz/fuzz_targets/` (nightly, libFuzzer) and by
//! the stable corpus replay `proto/tests/fuzz_corpus.rs`.
//!
//! This file is not a test of its own (Cargo only builds the `.rs` files
//! directly in `tests/`): `fuzz_corpus.rs` declares it as `mod fuzz_checks`
//! and every fuzz target includes it with
//! `#[path = "../../proto/tests/fuzz_checks/mod.rs"]`. It uses only the
//! public API of `taskmaster-proto` and crates that both includers depend on
//! (`bytes`, `futures-util`, `tokio` with `rt`, `time` and `test-util`), so
//! the normal build never depends on the fuzz crate and the fuzz crate never
//! needs a feature of `taskmaster-proto`.
//!
//! # Input layout of `frame_decoder`, `handshake` and `agent_link`
//!
//! ```text
//! byte 0      bits 0-3: k, the number of chunk-size bytes that follow
//!             bit 4:    the reader answers Pending (and wakes itself)
//!                       before every read
//!             bit 5:    at the end of the bytes the peer stays silent
//!                       instead of closing (handshake only)
//! bytes 1..=k chunk sizes (0 counts as 1), used in turn, cycling
//! the rest    the byte stream the peer sends
//! ```
//!
//! An empty input is an empty stream read in one go.
//!
//! # Allocation bound
//!
//! The includer installs [`TrackingAlloc`] as its global allocator; the
//! checks then assert that no single allocation made while decoding exceeds
//! a bound derived from the frame limit, never from a length the input
//! claims.
#![allow(dead_code)]

use bytes::BytesMut;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::fmt::Debug;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use taskmaster_proto::agent::{FromAgent, ToAgent};
use taskmaster_proto::codec::{self, CodecError, HEADER_LIMIT, LENGTH_BYTES};
use taskmaster_proto::handshake::{read_hello, HandshakeError};
use taskmaster_proto::jobs;
use taskmaster_proto::messages::{FromHandler, Hello, Message, ToClient, ToHandler, ToMaster};
use tokio::io::{AsyncRead, ReadBuf};

/// The payload limit the checks read with: small, so that inputs of a few
/// kilobytes can announce frames just over the limit.
pub const MAX_PAYLOAD: usize = 1024;

/// Deadline for the hello. Time is paused in the handshake check, so this
/// costs nothing when it fires.
pub const HELLO_TIMEOUT: Duration = Duration::from_millis(100);

/// Known finding (fuzz/README.md, "Findings"): tokio-util's
/// `LengthDelimitedCodec` consumes a length prefix as soon as it has it, so
/// a stream that ends right after one used to look like a clean end
/// (`read_message` answered `Ok(None)`, `read_hello` `Closed`). The codec's
/// `FrameCodec` wrapper now reports it as `Truncated`; this switch (now
/// `false`) would let the async checks accept either answer again.
pub const TOLERATE_CLEAN_EOF_AFTER_LENGTH: bool = false;

/// The largest single allocation reading frames may make: the frame
/// reader's buffer holds at most one whole frame plus its length prefix and
/// may double its capacity once while growing to it.
pub fn frame_alloc_bound() -> usize {
    2 * (codec::max_frame_len(MAX_PAYLOAD) + LENGTH_BYTES)
}

/// The largest single allocation decoding one message may make.
///
/// Strings and byte strings are claimed against bincode's limit
/// ([`HEADER_LIMIT`]) before they are allocated, but a *sequence* length
/// (`HandlerHello::modules`, `FromAgent::ChildUp::modules`) is not:
/// serde's `Vec` visitor pre-allocates
/// `min(claimed length, 1 MiB / size_of::<T>())` elements, so a 30-byte
/// hello can make a 1 MiB allocation. That is bounded (by serde, not by the
/// codec) and is what this bound allows; see `fuzz/README.md`, "Findings".
pub const DECODE_ALLOC_BOUND: usize = (1 << 20) + 2 * HEADER_LIMIT;

// ---------------------------------------------------------------------------
// Allocation tracking

thread_local! {
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

/// A global allocator that records, per thread, the largest single
/// allocation request; everything else is the system allocator's.
pub struct TrackingAlloc;

fn note(size: usize) {
    // `try_with`: the thread-local may be gone while the thread exits.
    let _ = PEAK.try_with(|p| {
        if size > p.get() {
            p.set(size);
        }
    });
}

// SAFETY: every call is forwarded unchanged to `System`; the only extra work
// is a const-initialised thread-local `Cell` update, which never allocates.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for TrackingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Runs `f` and returns its value with the largest single allocation this
/// thread requested meanwhile (0 unless [`TrackingAlloc`] is installed).
pub fn peak_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = PEAK.with(|p| p.replace(0));
    let value = f();
    let peak = PEAK.with(|p| p.replace(before.max(p.get())));
    (value, peak)
}

// ---------------------------------------------------------------------------
// Input script and readers

/// How the peer delivers its bytes (see the module docs for the layout).
#[derive(Debug, Clone, Copy)]
pub struct Script<'a> {
    /// Chunk sizes, used in turn; empty: as much as the reader asks for.
    pub chunks: &'a [u8],
    /// Answer Pending (self-waking) before every read.
    pub pending: bool,
    /// Stay silent at the end instead of closing.
    pub stall: bool,
    /// What the peer sends.
    pub stream: &'a [u8],
}

impl<'a> Script<'a> {
    /// Splits an input into its script and stream.
    pub fn parse(data: &'a [u8]) -> Script<'a> {
        let Some((&first, rest)) = data.split_first() else {
            return Script {
                chunks: &[],
                pending: false,
                stall: false,
                stream: &[],
            };
        };
        let k = usize::from(first & 0x0f).min(rest.len());
        let (chunks, stream) = rest.split_at(k);
        Script {
            chunks,
            pending: first & 0x10 != 0,
            stall: first & 0x20 != 0,
            stream,
        }
    }

    /// The input that parses back into this script (for seed files).
    pub fn encode(chunks: &[u8], pending: bool, stall: bool, stream: &[u8]) -> Vec<u8> {
        assert!(chunks.len() <= 15, "at most 15 chunk sizes");
        let mut first = chunks.len() as u8;
        if pending {
            first |= 0x10;
        }
        if stall {
            first |= 0x20;
        }
        let mut out = vec![first];
        out.extend_from_slice(chunks);
        out.extend_from_slice(stream);
        out
    }

    fn reader(&self, stall: bool) -> ChunkedReader<'a> {
        ChunkedReader {
            data: self.stream,
            pos: 0,
            chunks: self.chunks,
            next: 0,
            pending: self.pending,
            owe_pending: self.pending,
            stall,
        }
    }
}

/// An in-memory peer that hands out its bytes in script-chosen chunks, in
/// both the async ([`AsyncRead`]) and the blocking ([`io::Read`]) way.
pub struct ChunkedReader<'a> {
    data: &'a [u8],
    pos: usize,
    chunks: &'a [u8],
    next: usize,
    pending: bool,
    owe_pending: bool,
    stall: bool,
}

impl ChunkedReader<'_> {
    fn take(&mut self, room: usize) -> &[u8] {
        let want = if self.chunks.is_empty() {
            usize::MAX
        } else {
            let c = usize::from(self.chunks[self.next % self.chunks.len()]).max(1);
            self.next += 1;
            c
        };
        let n = want.min(room).min(self.data.len() - self.pos);
        let out = &self.data[self.pos..self.pos + n];
        self.pos += n;
        out
    }
}

impl AsyncRead for ChunkedReader<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos == this.data.len() {
            if this.stall {
                // A peer that keeps the connection open and says nothing:
                // no wake-up will ever come.
                return Poll::Pending;
            }
            return Poll::Ready(Ok(()));
        }
        if this.owe_pending {
            this.owe_pending = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        this.owe_pending = this.pending;
        let chunk = this.take(buf.remaining());
        buf.put_slice(chunk);
        Poll::Ready(Ok(()))
    }
}

impl io::Read for ChunkedReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos < self.data.len() && self.owe_pending {
            // The blocking reader's counterpart of Pending: a signal.
            self.owe_pending = false;
            return Err(io::ErrorKind::Interrupted.into());
        }
        self.owe_pending = self.pending;
        let chunk = self.take(buf.len());
        buf[..chunk.len()].copy_from_slice(chunk);
        Ok(chunk.len())
    }
}

// ---------------------------------------------------------------------------
// Reference framing

/// What a correct reader yields next, computed directly from the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect<'a> {
    /// A whole frame body.
    Frame(&'a [u8]),
    /// The length prefix announces more than the limit.
    OverLimit,
    /// The stream ends inside a length prefix or a body.
    Truncated,
    /// The stream ends right after a whole length prefix announcing a
    /// non-empty body, before any body byte: truncated too, but see
    /// [`TOLERATE_CLEAN_EOF_AFTER_LENGTH`].
    LengthThenEof,
    /// The stream ends cleanly between frames.
    End,
}

/// The frames of `stream` under the payload limit `max_payload`, ending with
/// the first [`Expect::OverLimit`], [`Expect::Truncated`],
/// [`Expect::LengthThenEof`] or [`Expect::End`].
pub fn reference_frames(stream: &[u8], max_payload: usize) -> Vec<Expect<'_>> {
    let max = codec::max_frame_len(max_payload);
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let left = stream.len() - pos;
        if left == 0 {
            out.push(Expect::End);
            return out;
        }
        if left < LENGTH_BYTES {
            out.push(Expect::Truncated);
            return out;
        }
        let mut len = [0u8; LENGTH_BYTES];
        len.copy_from_slice(&stream[pos..pos + LENGTH_BYTES]);
        let len = u32::from_be_bytes(len) as usize;
        if len > max {
            out.push(Expect::OverLimit);
            return out;
        }
        if left == LENGTH_BYTES && len > 0 {
            out.push(Expect::LengthThenEof);
            return out;
        }
        if left - LENGTH_BYTES < len {
            out.push(Expect::Truncated);
            return out;
        }
        let start = pos + LENGTH_BYTES;
        out.push(Expect::Frame(&stream[start..start + len]));
        pos = start + len;
    }
}

// ---------------------------------------------------------------------------
// Checks

fn current_thread(paused: bool) -> tokio::runtime::Runtime {
    let mut b = tokio::runtime::Builder::new_current_thread();
    b.enable_time();
    if paused {
        b.start_paused(true);
    }
    b.build().expect("a current-thread runtime")
}

fn block_on<F: Future>(paused: bool, f: F) -> F::Output {
    current_thread(paused).block_on(f)
}

/// Decodes `body` as `M`; whatever decodes must re-encode to the very same
/// frame (the encoding is canonical: fixed-width integers, strict bools,
/// option tags and variant indexes, the payload as the frame's tail) and
/// decode again to an equal value. Returns the decoded value.
pub fn check_decode<M: Message + PartialEq + Debug>(body: &[u8]) -> Option<M> {
    let (decoded, peak) = peak_allocation(|| codec::decode::<M>(BytesMut::from(body)));
    assert!(
        peak <= DECODE_ALLOC_BOUND,
        "decoding {} bytes as {} allocated {peak} bytes at once",
        body.len(),
        std::any::type_name::<M>()
    );
    let msg = match decoded {
        Ok(msg) => msg,
        Err(CodecError::Malformed(_)) => return None,
        Err(e) => panic!("decode failed with {e:?}, not Malformed"),
    };
    let frame = codec::to_frame(&msg)
        .unwrap_or_else(|e| panic!("{msg:?} decoded but does not encode: {e}"));
    assert_eq!(
        &frame[LENGTH_BYTES..],
        body,
        "{msg:?} re-encodes to different bytes"
    );
    let again: M = codec::decode(BytesMut::from(&frame[LENGTH_BYTES..]))
        .unwrap_or_else(|e| panic!("{msg:?} re-encoded does not decode: {e}"));
    assert_eq!(again, msg);
    Some(msg)
}

/// The `messages` target: `body` (one frame without its length prefix)
/// decoded as every message type.
pub fn check_messages(body: &[u8]) {
    check_decode::<Hello>(body);
    check_decode::<ToMaster>(body);
    check_decode::<ToClient>(body);
    check_decode::<ToHandler>(body);
    check_decode::<FromHandler>(body);
}

/// What `read_message` must answer for an expected item.
fn assert_read<M: Message + PartialEq + Debug>(
    got: Result<Option<M>, CodecError>,
    want: Expect<'_>,
    max: usize,
) {
    match (want, got) {
        (Expect::Frame(body), got) => match (check_decode::<M>(body), got) {
            (Some(m), Ok(Some(g))) => assert_eq!(g, m),
            (None, Err(CodecError::Malformed(_))) => {}
            (want, got) => panic!("frame {body:?}: read {got:?}, decode says {want:?}"),
        },
        (Expect::OverLimit, Err(CodecError::OverLimit { max: m })) => assert_eq!(m, max),
        (Expect::Truncated | Expect::LengthThenEof, Err(CodecError::Truncated)) => {}
        (Expect::LengthThenEof, Ok(None)) if TOLERATE_CLEAN_EOF_AFTER_LENGTH => {}
        (Expect::End, Ok(None)) => {}
        (want, got) => panic!("expected {want:?}, read {got:?}"),
    }
}

/// Reads the whole stream with `read_message::<M>` and compares every
/// answer with the reference; a malformed frame does not end the stream.
async fn read_all<M, R>(reader: &mut codec::FrameReader<R>, want: &[Expect<'_>])
where
    M: Message + PartialEq + Debug,
    R: AsyncRead + Unpin,
{
    let max = codec::max_frame_len(MAX_PAYLOAD);
    for &w in want {
        let got = codec::read_message::<M, _>(reader).await;
        assert_read(got, w, max);
    }
}

/// The `frame_decoder` target: the stream read through the async frame
/// reader with script-chosen chunk sizes (raw frames, then as `ToMaster`,
/// then as `FromHandler`) and through the blocking reader; each must give
/// exactly the reference frames, reject an over-limit length prefix before
/// reading its body, and allocate no more than the limit allows.
pub fn check_frame_decoder(data: &[u8]) {
    let script = Script::parse(data);
    let want = reference_frames(script.stream, MAX_PAYLOAD);
    let max = codec::max_frame_len(MAX_PAYLOAD);

    check_raw_frames(&script, &want);

    // Decoded, as both message types a master reads.
    block_on(false, async {
        let mut reader = codec::frame_reader(script.reader(false), MAX_PAYLOAD);
        read_all::<ToMaster, _>(&mut reader, &want).await;
        let mut reader = codec::frame_reader(script.reader(false), MAX_PAYLOAD);
        read_all::<FromHandler, _>(&mut reader, &want).await;
    });

    // The handler child's blocking reader.
    let (_, peak) = peak_allocation(|| {
        let mut reader = script.reader(false);
        for &w in &want {
            let got = codec::read_frame_blocking(&mut reader, MAX_PAYLOAD);
            match (w, got) {
                (Expect::Frame(body), Ok(Some(frame))) => assert_eq!(&frame[..], body),
                (Expect::End, Ok(None)) => {}
                (Expect::Truncated | Expect::LengthThenEof, Err(CodecError::Truncated)) => {}
                (Expect::OverLimit, Err(CodecError::FrameTooLarge { len, max: m })) => {
                    assert_eq!(m, max);
                    assert!(len > max);
                }
                (w, got) => panic!("expected {w:?}, blocking reader gave {got:?}"),
            }
        }
    });
    assert!(
        peak <= max + LENGTH_BYTES,
        "the blocking reader allocated {peak} bytes at once (limit {max})"
    );
}

/// The async frame reader over the script's stream gives exactly the
/// reference frames, byte for byte, and allocates no more than
/// [`frame_alloc_bound`] at once.
fn check_raw_frames(script: &Script<'_>, want: &[Expect<'_>]) {
    let max = codec::max_frame_len(MAX_PAYLOAD);
    let ((), peak) = peak_allocation(|| {
        block_on(false, async {
            use futures_util::StreamExt;
            let mut reader = codec::frame_reader(script.reader(false), MAX_PAYLOAD);
            for &w in want {
                let got = reader.next().await;
                match (w, got) {
                    (Expect::Frame(body), Some(Ok(frame))) => assert_eq!(&frame[..], body),
                    (Expect::End, None) => {}
                    (Expect::LengthThenEof, None) if TOLERATE_CLEAN_EOF_AFTER_LENGTH => {}
                    (
                        Expect::OverLimit | Expect::Truncated | Expect::LengthThenEof,
                        Some(Err(_)),
                    ) => {}
                    (w, got) => panic!("expected {w:?}, frame reader gave {got:?}"),
                }
            }
        })
    });
    assert!(
        peak <= frame_alloc_bound(),
        "reading frames allocated {peak} bytes at once (limit {max})"
    );
}

/// The `agent_link` target: the agent link's two message enums
/// ([`ToAgent`], [`FromAgent`]) through the same readers as
/// `frame_decoder`, and as bare bodies as in `messages`.
///
/// The input is a script and stream as for `frame_decoder` (module docs).
/// The stream goes through the async frame reader with script-chosen chunk
/// sizes: raw frames against the reference framing, then every frame read
/// with `read_message` as `FromAgent` (what the master reads on a link)
/// and as `ToAgent` (what an agent reads). The stream less its first four
/// bytes (a length prefix, in a one-frame seed) is also decoded as one
/// frame body, as `FromAgent`, `ToAgent` and `Hello` (the agent's hello):
/// whatever decodes re-encodes to the same bytes.
pub fn check_agent_link(data: &[u8]) {
    let script = Script::parse(data);
    let want = reference_frames(script.stream, MAX_PAYLOAD);

    check_raw_frames(&script, &want);

    block_on(false, async {
        let mut reader = codec::frame_reader(script.reader(false), MAX_PAYLOAD);
        read_all::<FromAgent, _>(&mut reader, &want).await;
        let mut reader = codec::frame_reader(script.reader(false), MAX_PAYLOAD);
        read_all::<ToAgent, _>(&mut reader, &want).await;
    });

    if let Some(body) = script.stream.get(LENGTH_BYTES..) {
        check_decode::<FromAgent>(body);
        check_decode::<ToAgent>(body);
        check_decode::<Hello>(body);
    }
}

/// The `handshake` target: `read_hello` on a paused-clock current-thread
/// runtime. A complete first frame gives the hello or a codec error as the
/// reference says; a peer that closes early gives `Closed`/`Truncated`; a
/// peer that stalls gives `Timeout` after exactly [`HELLO_TIMEOUT`], and
/// nothing else ever waits. After a good hello the rest of the stream reads
/// as client messages, as the master's session would read it.
pub fn check_handshake(data: &[u8]) {
    let script = Script::parse(data);
    let want = reference_frames(script.stream, MAX_PAYLOAD);
    block_on(true, async {
        let mut reader = codec::frame_reader(script.reader(script.stall), MAX_PAYLOAD);
        let start = tokio::time::Instant::now();
        let got = read_hello(&mut reader, HELLO_TIMEOUT).await;
        let waited = start.elapsed();
        let max = codec::max_frame_len(MAX_PAYLOAD);
        match (want[0], script.stall, got) {
            (Expect::Frame(body), _, got) => match (check_decode::<Hello>(body), got) {
                (Some(hello), Ok(g)) => {
                    assert_eq!(g, hello);
                    if !script.stall {
                        read_all::<ToMaster, _>(&mut reader, &want[1..]).await;
                    }
                }
                (None, Err(HandshakeError::Codec(CodecError::Malformed(_)))) => {}
                (want, got) => panic!("first frame {body:?}: {got:?}, decode says {want:?}"),
            },
            (
                Expect::OverLimit,
                _,
                Err(HandshakeError::Codec(CodecError::OverLimit { max: m })),
            ) => {
                assert_eq!(m, max)
            }
            (
                Expect::Truncated | Expect::LengthThenEof,
                false,
                Err(HandshakeError::Codec(CodecError::Truncated)),
            ) => {}
            (Expect::LengthThenEof, false, Err(HandshakeError::Closed))
                if TOLERATE_CLEAN_EOF_AFTER_LENGTH => {}
            (Expect::End, false, Err(HandshakeError::Closed)) => {}
            (
                Expect::Truncated | Expect::LengthThenEof | Expect::End,
                true,
                Err(HandshakeError::Timeout(t)),
            ) => {
                assert_eq!(t, HELLO_TIMEOUT);
                assert!(waited >= HELLO_TIMEOUT, "timed out after {waited:?}");
                return;
            }
            (w, stall, got) => panic!("expected {w:?} (stall: {stall}), read_hello gave {got:?}"),
        }
        assert!(
            waited < HELLO_TIMEOUT,
            "waited {waited:?} without a timeout"
        );
    });
}

/// `jobs::parse_id`: never panics; what it accepts is exactly a 12-digit
/// lower-case hex instance, `-`, and a job number without leading zeros,
/// so formatting it again gives the same text; what it rejects it quotes
/// in at most 64 characters.
pub fn check_job_id(id: &str) {
    match jobs::parse_id(id) {
        Ok((instance, job)) => {
            assert_eq!(instance.len(), jobs::INSTANCE_LEN);
            assert!(instance
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
            assert!(job >= 1, "{id:?} parsed as job 0");
            assert_eq!(jobs::format_id(instance, job), id);
        }
        Err(jobs::BadId(quoted)) => {
            assert!(quoted.chars().count() <= 64);
            assert!(id.starts_with(&quoted));
        }
    }
}
