//! Framing and encoding: the only place that calls bincode, so the format can
//! be swapped here (with `header.rs`, which reads hot headers by hand).
//!
//! A frame is a 4-byte big-endian length, then that many bytes: a bincode
//! header (little-endian, fixed-width integers) and, for messages that carry
//! one, the raw payload filling the rest of the frame. The length is checked
//! against the limit before anything is allocated, and bincode itself is
//! bounded to [`HEADER_LIMIT`] so a small frame cannot claim a huge vector.

use crate::header::Header;
use crate::messages::Message;
use bincode::config::{Configuration, Fixint, Limit, LittleEndian};
use bytes::{BufMut, Bytes, BytesMut};
use serde::{de::DeserializeOwned, Serialize};
use std::io::{self, Read};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};

/// Largest bincode header (everything but the payload). Module names and
/// failure messages live here; without a bound a 10-byte frame could make
/// bincode allocate gigabytes for a claimed string length.
pub const HEADER_LIMIT: usize = 64 * 1024;

/// Default largest payload (job input, part, response): 16 MiB.
pub const DEFAULT_MAX_PAYLOAD: usize = 16 * 1024 * 1024;

/// Largest submit context. With [`MAX_MESSAGE`] it keeps every answer's
/// header far below [`HEADER_LIMIT`], so an answer can always be encoded.
pub const MAX_CONTEXT: usize = 16 * 1024;

/// Failure messages are cut to this many bytes.
pub const MAX_MESSAGE: usize = 8 * 1024;

/// Bytes of the length prefix.
pub const LENGTH_BYTES: usize = 4;

/// Writers flush once this much is buffered even if more frames wait, so one
/// busy peer cannot make a writer hold an unbounded buffer.
pub const FLUSH_AT: usize = 256 * 1024;

/// After a big payload, a writer's buffer is dropped back to this capacity.
pub const KEEP_CAPACITY: usize = 64 * 1024;

type Config = Configuration<LittleEndian, Fixint, Limit<HEADER_LIMIT>>;

fn config() -> Config {
    bincode::config::standard()
        .with_little_endian()
        .with_fixed_int_encoding()
        .with_limit::<HEADER_LIMIT>()
}

/// The largest frame (after the length prefix) for a payload limit.
pub fn max_frame_len(max_payload: usize) -> usize {
    max_payload.saturating_add(HEADER_LIMIT)
}

/// What can go wrong reading or writing frames.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The socket failed.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The length prefix announced more than the limit.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge {
        /// Announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The length prefix announced more than the limit (length not kept).
    #[error("frame exceeds the limit of {max} bytes")]
    OverLimit {
        /// The limit.
        max: usize,
    },
    /// The peer closed in the middle of a frame.
    #[error("connection closed in the middle of a frame")]
    Truncated,
    /// The bytes are not a valid message.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// A message could not be encoded (header too large, say).
    #[error("cannot encode message: {0}")]
    Encode(String),
}

/// Appends one frame (length, header, payload) for `msg` to `dst`.
pub fn encode<M: Message>(msg: &M, dst: &mut BytesMut) -> Result<(), CodecError> {
    let start = dst.len();
    dst.put_u32(0);
    if let Err(e) = bincode::serde::encode_into_std_write(msg, &mut (&mut *dst).writer(), config())
    {
        dst.truncate(start);
        return Err(CodecError::Encode(e.to_string()));
    }
    if dst.len() - start - LENGTH_BYTES > HEADER_LIMIT {
        dst.truncate(start);
        return Err(CodecError::Encode(format!(
            "header exceeds {HEADER_LIMIT} bytes"
        )));
    }
    if let Some(payload) = msg.payload() {
        dst.extend_from_slice(payload);
    }
    let len = dst.len() - start - LENGTH_BYTES;
    let Ok(len32) = u32::try_from(len) else {
        dst.truncate(start);
        return Err(CodecError::Encode(format!(
            "frame of {len} bytes is too long"
        )));
    };
    dst[start..start + LENGTH_BYTES].copy_from_slice(&len32.to_be_bytes());
    Ok(())
}

/// Decodes one frame's body (the bytes after the length prefix). The payload
/// is split off the frame without copying.
pub fn decode<M: Message>(mut frame: BytesMut) -> Result<M, CodecError> {
    let (mut msg, used): (M, usize) = match fast_header::<M>(&frame) {
        Some(decoded) => decoded,
        None => bincode::serde::decode_from_slice(&frame, config())
            .map_err(|e| CodecError::Malformed(e.to_string()))?,
    };
    let tail = frame.split_off(used).freeze();
    let tail_len = tail.len();
    if !msg.set_payload(tail) && tail_len != 0 {
        return Err(CodecError::Malformed(format!(
            "{tail_len} unexpected bytes after the message"
        )));
    }
    Ok(msg)
}

/// The header of one of the few messages on every job's path (a submit,
/// an answer), read by [`Message::decode_header`] instead of serde: bincode
/// through serde spends some 500 instructions on a header these read in a
/// few dozen. Anything they do not read whole and exactly as bincode
/// would (another variant, a bad bool, invalid UTF-8, a header over
/// [`HEADER_LIMIT`]) goes to bincode, which decides.
pub(crate) fn fast_header<M: Message>(frame: &[u8]) -> Option<(M, usize)> {
    let mut header = Header::new(&frame[..frame.len().min(HEADER_LIMIT)]);
    let msg = M::decode_header(&mut header)?;
    Some((msg, header.read()))
}

/// What bincode alone makes of a header (the reference the hand-read
/// headers are tested against).
#[cfg(test)]
pub(crate) fn by_bincode<M: Message>(frame: &[u8]) -> Option<(M, usize)> {
    bincode::serde::decode_from_slice(frame, config()).ok()
}

/// Encodes a value for a typed job input or output: bincode's standard
/// configuration (variable-length integers), not the header format, since
/// only Rust code on both ends reads it.
pub fn encode_value<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
        .map_err(|e| CodecError::Encode(e.to_string()))
}

/// Decodes a value written by [`encode_value`]; the whole input must be used.
pub fn decode_value<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    if used != bytes.len() {
        return Err(CodecError::Malformed(format!(
            "{} unexpected bytes after the value",
            bytes.len() - used
        )));
    }
    Ok(value)
}

/// An async frame reader (cancel-safe, so it can sit in `select!`).
pub type FrameReader<R> = FramedRead<R, FrameCodec>;

/// The 4-byte big-endian length framing with a frame limit. It wraps
/// tokio-util's codec to tell a stream that ends inside a frame, even right
/// after its length prefix (which tokio-util consumes at once), from a clean
/// end between frames: the first is [`CodecError::Truncated`].
#[derive(Debug)]
pub struct FrameCodec {
    inner: LengthDelimitedCodec,
    /// A length prefix has been taken and its frame is not complete.
    in_frame: bool,
}

impl FrameCodec {
    /// The largest frame (header and payload) accepted now.
    pub fn max_frame_length(&self) -> usize {
        self.inner.max_frame_length()
    }

    /// Changes the frame limit (small for a hello, the payload limit after).
    pub fn set_max_frame_length(&mut self, max: usize) {
        self.inner.set_max_frame_length(max);
    }
}

impl tokio_util::codec::Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, io::Error> {
        let before = src.len();
        let frame = self.inner.decode(src)?;
        if frame.is_some() {
            self.in_frame = false;
        } else if src.len() < before {
            self.in_frame = true;
        }
        Ok(frame)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, io::Error> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if self.in_frame || !src.is_empty() => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "stream ended inside a frame",
            )),
            None => Ok(None),
        }
    }
}

/// Raises (or lowers) the payload limit of a reader made by
/// [`frame_reader`]: a client learns the master's limit from its `Welcome`,
/// after the reader has read that first frame.
pub fn set_max_payload<R: AsyncRead>(reader: &mut FrameReader<R>, max_payload: usize) {
    reader
        .decoder_mut()
        .inner
        .set_max_frame_length(max_frame_len(max_payload));
}

/// Wraps a reader in the 4-byte big-endian length codec with a frame limit.
pub fn frame_reader<R: AsyncRead>(io: R, max_payload: usize) -> FrameReader<R> {
    FramedRead::with_capacity(
        io,
        FrameCodec {
            inner: LengthDelimitedCodec::builder()
                .length_field_length(LENGTH_BYTES)
                .big_endian()
                .max_frame_length(max_frame_len(max_payload))
                .new_codec(),
            in_frame: false,
        },
        16 * 1024,
    )
}

/// Reads and decodes the next message; `Ok(None)` on a clean end of stream.
pub async fn read_message<M, R>(reader: &mut FrameReader<R>) -> Result<Option<M>, CodecError>
where
    M: Message,
    R: AsyncRead + Unpin,
{
    use futures_util::StreamExt;
    match reader.next().await {
        None => Ok(None),
        Some(Ok(frame)) => decode(frame).map(Some),
        Some(Err(e)) => Err(classify_read_error(e, reader.decoder().max_frame_length())),
    }
}

/// What [`read_message`] would return, if the reader's buffer already
/// holds it (a whole frame, or a frame that breaks the rules), without
/// touching the socket; `None` if a read is needed. A loop that read one
/// frame takes the rest of what the same read brought with this, instead
/// of a trip through its `select!` per frame. The same decoder state is
/// used as by [`read_message`], so the two mix freely.
pub fn next_buffered<M, R>(reader: &mut FrameReader<R>) -> Option<Result<Option<M>, CodecError>>
where
    M: Message,
    R: AsyncRead + Unpin,
{
    use tokio_util::codec::Decoder;
    // A frame needs more than its length prefix: less is never whole.
    if reader.read_buffer().len() <= LENGTH_BYTES {
        return None;
    }
    // The decoder and the buffer are two borrows of the reader: the buffer
    // is taken out for the call (a move, not a copy) and put back.
    let mut buf = std::mem::take(reader.read_buffer_mut());
    let frame = reader.decoder_mut().decode(&mut buf);
    *reader.read_buffer_mut() = buf;
    match frame {
        Ok(Some(frame)) => Some(decode(frame).map(Some)),
        Ok(None) => None,
        Err(e) => Some(Err(classify_read_error(
            e,
            reader.decoder().max_frame_length(),
        ))),
    }
}

fn classify_read_error(e: io::Error, max: usize) -> CodecError {
    let text = e.to_string();
    if e.kind() == io::ErrorKind::InvalidData && text.contains("frame size too big") {
        CodecError::OverLimit { max }
    } else if e.kind() == io::ErrorKind::UnexpectedEof || text.contains("bytes remaining") {
        CodecError::Truncated
    } else {
        CodecError::Io(e)
    }
}

/// Blocking read of one frame body, for the handler child's plain threads.
/// `Ok(None)` on end of stream before a frame starts.
pub fn read_frame_blocking<R: Read>(
    io: &mut R,
    max_payload: usize,
) -> Result<Option<BytesMut>, CodecError> {
    let mut len = [0u8; LENGTH_BYTES];
    let mut got = 0;
    while got < LENGTH_BYTES {
        match io.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(CodecError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_be_bytes(len) as usize;
    let max = max_frame_len(max_payload);
    if len > max {
        return Err(CodecError::FrameTooLarge { len, max });
    }
    let mut body = BytesMut::zeroed(len);
    io.read_exact(&mut body).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => CodecError::Truncated,
        _ => CodecError::Io(e),
    })?;
    Ok(Some(body))
}

/// Drives one connection's outgoing side: waits for a message, then encodes
/// every message already waiting into one buffer and writes it with one
/// syscall, so under load frames share writes instead of costing one each.
/// Ends when every sender is gone (after writing what they sent) or on error.
pub async fn write_batched<T, W, F>(
    mut io: W,
    mut rx: mpsc::UnboundedReceiver<T>,
    mut encode_one: F,
) -> Result<(), CodecError>
where
    W: AsyncWrite + Unpin,
    F: FnMut(T, &mut BytesMut) -> Result<(), CodecError>,
{
    let mut buf = BytesMut::with_capacity(KEEP_CAPACITY);
    while let Some(first) = rx.recv().await {
        encode_one(first, &mut buf)?;
        while buf.len() < FLUSH_AT {
            match rx.try_recv() {
                Ok(next) => encode_one(next, &mut buf)?,
                Err(_) => break,
            }
        }
        io.write_all(&buf).await?;
        buf.clear();
        if buf.capacity() > 4 * KEEP_CAPACITY {
            buf = BytesMut::with_capacity(KEEP_CAPACITY);
        }
    }
    io.shutdown().await.ok();
    Ok(())
}

/// Cuts a failure message to [`MAX_MESSAGE`] bytes (on a char boundary).
pub fn clip_message(mut message: String) -> String {
    if message.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str("...");
    }
    message
}

/// Encodes a message into a fresh frame (tests, one-off writes).
pub fn to_frame<M: Message>(msg: &M) -> Result<Bytes, CodecError> {
    let mut buf = BytesMut::new();
    encode(msg, &mut buf)?;
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::SubmitOptions;
    use crate::messages::*;
    use crate::reason::Reason;
    use std::fmt::Debug;
    use tokio::io::AsyncWriteExt;

    fn roundtrip<M: Message + PartialEq + Debug>(msg: M) {
        let frame = to_frame(&msg).unwrap();
        let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(len, frame.len() - 4);
        let back: M = decode(BytesMut::from(&frame[4..])).unwrap();
        assert_eq!(back, msg);
    }

    #[test]
    fn every_message_roundtrips() {
        roundtrip(Hello::Handler(HandlerHello {
            version: PROTOCOL_VERSION,
            child_id: 7,
            pid: 1234,
            secret: [9; SECRET_LEN],
            modules: vec!["echo".into(), "sleep".into()],
        }));
        roundtrip(Hello::Client(ClientHello {
            version: PROTOCOL_VERSION,
            token: Some("t".into()),
        }));
        roundtrip(Hello::Client(ClientHello {
            version: PROTOCOL_VERSION,
            token: None,
        }));
        roundtrip(ToHandler::Job {
            job: 1,
            module: "echo".into(),
            input: Bytes::from_static(b"hello"),
        });
        roundtrip(FromHandler::Part {
            job: 1,
            data: Bytes::from_static(b"1\n"),
        });
        roundtrip(FromHandler::Done {
            job: 1,
            retire: true,
            output: Bytes::from_static(b""),
        });
        roundtrip(FromHandler::Failed {
            job: 1,
            reason: Reason::Failed,
            message: "boom".into(),
            retire: false,
        });
        roundtrip(ToMaster::Submit {
            tag: u64::MAX,
            module: "sha256".into(),
            context: Bytes::from_static(b"ctx"),
            options: SubmitOptions {
                detach: true,
                start_later: true,
                timeout_ms: Some(1500),
                priority: crate::jobs::Priority::Low,
                retries: 3,
            },
            input: Bytes::from(vec![0u8; 100_000]),
        });
        roundtrip(ToMaster::Stats { tag: 3 });
        roundtrip(FromHandler::Heartbeat);
        let id = "0123456789ab-7".to_owned();
        roundtrip(ToMaster::Status {
            tag: 4,
            id: id.clone(),
        });
        roundtrip(ToMaster::Result {
            tag: 5,
            id: id.clone(),
            wait_ms: 250,
        });
        roundtrip(ToMaster::Start {
            tag: 6,
            id: id.clone(),
        });
        roundtrip(ToMaster::Cancel { tag: 7, id });
        roundtrip(ToMaster::Jobs {
            tag: 8,
            limit: 10,
            status: "queued".into(),
        });
        roundtrip(ToMaster::Events {
            tag: 10,
            job: String::new(),
        });
        roundtrip(ToClient::Event {
            tag: 10,
            name: "pool-ready".into(),
            json: "{}".into(),
        });
        roundtrip(ToClient::Welcome {
            version: 1,
            max_payload: 42,
            instance: "0123456789ab".into(),
        });
        roundtrip(ToClient::Reply {
            tag: 9,
            outcome: crate::jobs::Outcome::Ok,
            json: "{}".into(),
            output: Bytes::from_static(b"result"),
        });
        roundtrip(ToClient::Refused {
            message: "no".into(),
        });
        roundtrip(ToClient::Part {
            tag: 1,
            data: Bytes::from_static(b"x"),
        });
        roundtrip(ToClient::Completed {
            tag: 1,
            job: 2,
            context: Bytes::new(),
            output: Bytes::from_static(b"out"),
        });
        for reason in Reason::ALL {
            roundtrip(ToClient::Failed {
                tag: 1,
                job: 2,
                reason,
                message: "m".into(),
                context: Bytes::from_static(b"c"),
            });
        }
        roundtrip(ToClient::Stats {
            tag: 1,
            json: "{}".into(),
        });
    }

    #[test]
    fn layout_is_as_documented() {
        // docs/protocol.md: Submit is variant 0 (u32 LE), tag u64 LE, module
        // as u64 LE length + UTF-8, context as u64 LE length + bytes, the
        // options (detach u8, start_later u8, timeout_ms as u8 0/1 + u64
        // LE, priority u32 LE, retries u32 LE), then the raw payload.
        let frame = to_frame(&ToMaster::Submit {
            tag: 5,
            module: "echo".into(),
            context: Bytes::from_static(b"c"),
            options: SubmitOptions {
                detach: false,
                start_later: false,
                timeout_ms: Some(9),
                priority: crate::jobs::Priority::Low,
                retries: 7,
            },
            input: Bytes::from_static(b"hi"),
        })
        .unwrap();
        let mut want = vec![];
        want.extend_from_slice(&0u32.to_le_bytes());
        want.extend_from_slice(&5u64.to_le_bytes());
        want.extend_from_slice(&4u64.to_le_bytes());
        want.extend_from_slice(b"echo");
        want.extend_from_slice(&1u64.to_le_bytes());
        want.extend_from_slice(b"c");
        want.extend_from_slice(&[0, 0, 1]);
        want.extend_from_slice(&9u64.to_le_bytes());
        want.extend_from_slice(&2u32.to_le_bytes());
        want.extend_from_slice(&7u32.to_le_bytes());
        want.extend_from_slice(b"hi");
        assert_eq!(&frame[..4], &(want.len() as u32).to_be_bytes());
        assert_eq!(&frame[4..], &want[..]);
    }

    #[test]
    fn malformed_input_is_rejected() {
        // Unknown variant.
        let mut f = BytesMut::new();
        f.put_u32_le(99);
        assert!(matches!(
            decode::<ToMaster>(f),
            Err(CodecError::Malformed(_))
        ));
        // Truncated header.
        let frame = to_frame(&ToMaster::Stats { tag: 1 }).unwrap();
        assert!(decode::<ToMaster>(BytesMut::from(&frame[4..8])).is_err());
        // Trailing bytes after a payload-less message.
        let mut body = BytesMut::from(&frame[4..]);
        body.put_u8(1);
        assert!(matches!(
            decode::<ToMaster>(body),
            Err(CodecError::Malformed(_))
        ));
        // A string length far beyond the header limit must not allocate.
        let mut f = BytesMut::new();
        f.put_u32_le(0);
        f.put_u64_le(1);
        f.put_u64_le(u64::MAX / 2);
        assert!(decode::<ToMaster>(f).is_err());
        // Empty frame.
        assert!(decode::<ToClient>(BytesMut::new()).is_err());
    }

    #[test]
    fn blocking_reader_checks_limit_before_allocating() {
        let mut data: &[u8] = &[0xff, 0xff, 0xff, 0xff, 1, 2];
        assert!(matches!(
            read_frame_blocking(&mut data, 1024),
            Err(CodecError::FrameTooLarge { .. })
        ));
        let mut data: &[u8] = &[0, 0, 0, 10, 1, 2];
        assert!(matches!(
            read_frame_blocking(&mut data, 1024),
            Err(CodecError::Truncated)
        ));
        let mut data: &[u8] = &[];
        assert!(read_frame_blocking(&mut data, 1024).unwrap().is_none());
        let frame = to_frame(&ToMaster::Stats { tag: 1 }).unwrap();
        let mut data: &[u8] = &frame;
        let body = read_frame_blocking(&mut data, 1024).unwrap().unwrap();
        assert_eq!(
            decode::<ToMaster>(body).unwrap(),
            ToMaster::Stats { tag: 1 }
        );
    }

    #[tokio::test]
    async fn async_reader_rejects_oversized_and_truncated() {
        let mut big: &[u8] = &[0xff, 0xff, 0xff, 0xff, 0, 0];
        let mut r = frame_reader(&mut big, 1024);
        assert!(matches!(
            read_message::<ToMaster, _>(&mut r).await,
            Err(CodecError::OverLimit { .. })
        ));
        let mut short: &[u8] = &[0, 0, 0, 10, 1];
        let mut r = frame_reader(&mut short, 1024);
        assert!(matches!(
            read_message::<ToMaster, _>(&mut r).await,
            Err(CodecError::Truncated)
        ));
    }

    #[tokio::test]
    async fn buffered_frames_are_taken_in_order_and_mix_with_reads() {
        let mut bytes = BytesMut::new();
        for tag in 0..3u64 {
            encode(&ToMaster::Stats { tag }, &mut bytes).unwrap();
        }
        // Half of a fourth frame, then an oversized one.
        let mut fourth = BytesMut::new();
        encode(&ToMaster::Stats { tag: 3 }, &mut fourth).unwrap();
        let half = fourth.len() / 2;
        bytes.extend_from_slice(&fourth[..half]);
        let (mut tx, rx) = tokio::io::duplex(1 << 16);
        tx.write_all(&bytes).await.unwrap();
        let mut r = frame_reader(rx, 1024);
        // Nothing read yet: nothing buffered.
        assert!(next_buffered::<ToMaster, _>(&mut r).is_none());
        let m: ToMaster = read_message(&mut r).await.unwrap().unwrap();
        assert_eq!(m, ToMaster::Stats { tag: 0 });
        // The same read brought the next two whole frames and half a third.
        for tag in 1..3u64 {
            let m = next_buffered::<ToMaster, _>(&mut r).unwrap().unwrap();
            assert_eq!(m, Some(ToMaster::Stats { tag }));
        }
        assert!(next_buffered::<ToMaster, _>(&mut r).is_none());
        // Its rest arrives; a read completes it (the decoder kept its place).
        tx.write_all(&fourth[half..]).await.unwrap();
        let m: ToMaster = read_message(&mut r).await.unwrap().unwrap();
        assert_eq!(m, ToMaster::Stats { tag: 3 });
        // A length over the limit, already buffered, is refused as read
        // would refuse it.
        let mut two = BytesMut::new();
        encode(&ToMaster::Stats { tag: 5 }, &mut two).unwrap();
        let (mut tx, rx) = tokio::io::duplex(1 << 16);
        tx.write_all(&two).await.unwrap();
        tx.write_all(&[0xff, 0xff, 0xff, 0xff, 0, 0]).await.unwrap();
        let mut r = frame_reader(rx, 1024);
        let m: ToMaster = read_message(&mut r).await.unwrap().unwrap();
        assert_eq!(m, ToMaster::Stats { tag: 5 });
        assert!(matches!(
            next_buffered::<ToMaster, _>(&mut r),
            Some(Err(CodecError::OverLimit { .. }))
        ));
    }

    #[tokio::test]
    async fn batched_writer_writes_every_frame() {
        let (tx, rx) = mpsc::unbounded_channel();
        for tag in 0..100u64 {
            tx.send(ToMaster::Stats { tag }).unwrap();
        }
        drop(tx);
        let mut out = Vec::new();
        write_batched(&mut out, rx, |m, b| encode(&m, b))
            .await
            .unwrap();
        let mut r = frame_reader(&out[..], 1024);
        for tag in 0..100u64 {
            let m: ToMaster = read_message(&mut r).await.unwrap().unwrap();
            assert_eq!(m, ToMaster::Stats { tag });
        }
        assert!(read_message::<ToMaster, _>(&mut r).await.unwrap().is_none());
    }
}
