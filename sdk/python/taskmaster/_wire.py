"""Wire primitives shared by the client and the handler: bincode and framing.

What lives here (see docs/protocol.md, section 1):

* `Writer` / `Reader`: the header encoding, bincode 2 in serde mode with
  little-endian **fixed-width** integers (a variant index is a u32, a
  string or byte string is a u64 length then the bytes, an Option is a
  00/01 byte then the value).
* Framing: a frame is a 4-byte **big-endian** length, then the header,
  then the raw payload (if the message has one) up to the end of the
  frame. The payload has no length of its own, so a frame cannot be split
  into header and payload without decoding the header: `read_frame` and
  `split_frames` return the whole frame *body*; decode the header with a
  `Reader` over it and take the payload with `Reader.rest()`.
* The protocol constants and the `Reason` and `Outcome` words, in wire
  order (docs/protocol.md, sections 3.6 and 3.7).
* `ProtocolError` (a malformed or oversized frame) and `ConnectionLost`
  (the peer went away mid-frame or mid-request).
"""

from __future__ import annotations

import builtins
import struct
from typing import Any, BinaryIO, Callable, Dict, List, Optional, Tuple, TypeVar, Union

__all__ = [
    "PROTOCOL_VERSION", "HEADER_LIMIT", "MAX_CONTEXT", "MAX_MESSAGE",
    "DEFAULT_MAX_PAYLOAD", "REASONS", "REASON_INDEX", "OUTCOMES", "OUTCOME_INDEX",
    "TaskmasterError", "ProtocolError", "ConnectionLost",
    "Writer", "Reader", "encode_frame", "read_frame", "split_frames",
    "frame_limit", "needed",
]

T = TypeVar("T")
#: What the writers accept as bytes. (Inside `Writer` and `Reader`, whose
#: methods are named after the types they encode, the builtin types are
#: spelled ``builtins.bytes`` in annotations.)
Buffer = Union[bytes, bytearray, memoryview]

#: Protocol version sent in both hellos (`PROTOCOL_VERSION` in messages.rs).
PROTOCOL_VERSION = 3
#: Largest header the master decodes (64 KiB).
HEADER_LIMIT = 65536
#: Largest `Submit.context` (16 KiB).
MAX_CONTEXT = 16384
#: Failure messages longer than this are clipped by the master (8 KiB).
MAX_MESSAGE = 8192
#: The master's default `--max-payload` (16 MiB); `Welcome` gives the real one.
DEFAULT_MAX_PAYLOAD = 16 * 1024 * 1024

#: `Reason` words by variant index (docs/protocol.md 3.6, SPEC section 5).
REASONS: Tuple[str, ...] = (
    "overload", "error", "unknown-module", "failed",
    "timeout", "cancelled", "shutting-down",
)
#: Variant index of each reason word.
REASON_INDEX: Dict[str, int] = {word: i for i, word in enumerate(REASONS)}

#: `Outcome` words (the kind of a `Reply`) by variant index (docs/protocol.md 3.7).
OUTCOMES: Tuple[str, ...] = ("ok", "not-found", "conflict", "invalid", "failed")
#: Variant index of each outcome word.
OUTCOME_INDEX: Dict[str, int] = {word: i for i, word in enumerate(OUTCOMES)}


class TaskmasterError(Exception):
    """Base class of every error this package raises on purpose."""


class ProtocolError(TaskmasterError):
    """A frame or header that breaks the wire contract: truncated header,
    unknown variant, bad bool/Option tag, invalid UTF-8, trailing bytes,
    or a frame over the size limit."""


class ConnectionLost(TaskmasterError, ConnectionError):
    """The peer closed the connection (or it broke) before an answer came,
    or in the middle of a frame."""


_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_I64 = struct.Struct("<q")
_BE32 = struct.Struct(">I")


def _range_error(kind: str, v: int) -> ProtocolError:
    return ProtocolError(f"{kind} out of range: {v!r}")


class Writer:
    """Builds a bincode fixed-int header, field by field.

    Every method appends to an internal buffer and returns the writer, so
    calls can be chained: ``Writer().variant(1).u64(tag).getvalue()``.
    """

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def u8(self, v: int) -> "Writer":
        """An unsigned 8-bit integer."""
        if not 0 <= v <= 0xFF:
            raise _range_error("u8", v)
        self._buf.append(v)
        return self

    def u16(self, v: int) -> "Writer":
        """An unsigned 16-bit integer, little-endian."""
        try:
            self._buf += _U16.pack(v)
        except struct.error:
            raise _range_error("u16", v) from None
        return self

    def u32(self, v: int) -> "Writer":
        """An unsigned 32-bit integer, little-endian."""
        try:
            self._buf += _U32.pack(v)
        except struct.error:
            raise _range_error("u32", v) from None
        return self

    def u64(self, v: int) -> "Writer":
        """An unsigned 64-bit integer, little-endian."""
        try:
            self._buf += _U64.pack(v)
        except struct.error:
            raise _range_error("u64", v) from None
        return self

    def i64(self, v: int) -> "Writer":
        """A signed 64-bit integer, two's complement little-endian."""
        try:
            self._buf += _I64.pack(v)
        except struct.error:
            raise _range_error("i64", v) from None
        return self

    def bool(self, v: bool) -> "Writer":
        """A bool: one byte, 00 or 01."""
        self._buf.append(1 if v else 0)
        return self

    def bytes(self, b: Buffer) -> "Writer":
        """A byte string inside the header: u64 length, then the bytes."""
        self._buf += _U64.pack(len(b))
        self._buf += b
        return self

    def str(self, s: str) -> "Writer":
        """A string: u64 byte length, then its UTF-8 bytes."""
        return self.bytes(s.encode("utf-8"))

    def raw(self, b: Buffer) -> "Writer":
        """Bytes with no length (a fixed array such as the 32-byte secret)."""
        self._buf += b
        return self

    def option(self, v: Optional[T], write_fn: Callable[[T], Any]) -> "Writer":
        """An Option: 00 for None, else 01 then ``write_fn(v)``.

        ``write_fn`` is usually a bound method of this writer, e.g.
        ``w.option(timeout_ms, w.u64)``.
        """
        if v is None:
            self._buf.append(0)
        else:
            self._buf.append(1)
            write_fn(v)
        return self

    def seq(self, items: List[T], write_fn: Callable[[T], Any]) -> "Writer":
        """A Vec: u64 element count, then each element with ``write_fn``."""
        self._buf += _U64.pack(len(items))
        for item in items:
            write_fn(item)
        return self

    def variant(self, index: int) -> "Writer":
        """An enum tag as bincode writes it: the variant index as a u32."""
        return self.u32(index)

    def getvalue(self) -> builtins.bytes:
        """The header bytes written so far."""
        return bytes(self._buf)


class Reader:
    """Decodes a bincode fixed-int header from the front of a frame body.

    Every read raises `ProtocolError` if the body is too short or a value
    is malformed. After the header, `rest()` returns the payload; for a
    message without a payload call `done()`, which rejects trailing bytes.
    """

    __slots__ = ("_buf", "_pos")

    def __init__(self, buf: Buffer) -> None:
        self._buf = buf
        self._pos = 0

    def _take(self, n: int) -> Buffer:
        end = self._pos + n
        if end > len(self._buf):
            raise ProtocolError(
                f"truncated header: needed {n} bytes at offset {self._pos}, "
                f"{len(self._buf) - self._pos} left")
        v = self._buf[self._pos:end]
        self._pos = end
        return v

    def _unpack(self, st: struct.Struct) -> int:
        try:
            v: int = st.unpack_from(self._buf, self._pos)[0]
        except struct.error:
            raise ProtocolError(
                f"truncated header: needed {st.size} bytes at offset {self._pos}, "
                f"{len(self._buf) - self._pos} left") from None
        self._pos += st.size
        return v

    def u8(self) -> int:
        """An unsigned 8-bit integer."""
        if self._pos >= len(self._buf):
            raise ProtocolError(f"truncated header: needed 1 byte at offset {self._pos}")
        v = self._buf[self._pos]
        self._pos += 1
        return v

    def u16(self) -> int:
        """An unsigned 16-bit little-endian integer."""
        return self._unpack(_U16)

    def u32(self) -> int:
        """An unsigned 32-bit little-endian integer."""
        return self._unpack(_U32)

    def u64(self) -> int:
        """An unsigned 64-bit little-endian integer."""
        return self._unpack(_U64)

    def i64(self) -> int:
        """A signed 64-bit little-endian integer."""
        return self._unpack(_I64)

    def bool(self) -> builtins.bool:
        """A bool; a byte other than 00 or 01 is malformed."""
        v = self.u8()
        if v > 1:
            raise ProtocolError(f"invalid bool byte {v:#04x} at offset {self._pos - 1}")
        return v == 1

    def bytes(self) -> builtins.bytes:
        """A length-prefixed byte string (u64 length, then the bytes)."""
        n = self._unpack(_U64)
        return bytes(self._take(n))

    def str(self) -> builtins.str:
        """A length-prefixed UTF-8 string; invalid UTF-8 is malformed."""
        n = self._unpack(_U64)
        raw = self._take(n)
        try:
            return str(raw, "utf-8")
        except UnicodeDecodeError as e:
            raise ProtocolError(f"invalid UTF-8 in a string: {e}") from None

    def raw(self, n: int) -> builtins.bytes:
        """Exactly ``n`` bytes with no length prefix (a fixed array)."""
        return bytes(self._take(n))

    def option(self, read_fn: Callable[[], T]) -> Optional[T]:
        """An Option: 00 is None, 01 is followed by ``read_fn()``."""
        tag = self.u8()
        if tag == 0:
            return None
        if tag == 1:
            return read_fn()
        raise ProtocolError(f"invalid Option tag {tag:#04x} at offset {self._pos - 1}")

    def seq(self, read_fn: Callable[[], T]) -> List[T]:
        """A Vec: u64 element count, then each element with ``read_fn``."""
        n = self._unpack(_U64)
        if n > len(self._buf) - self._pos:   # every element takes at least a byte
            raise ProtocolError(f"sequence of {n} elements cannot fit in the header")
        return [read_fn() for _ in range(n)]

    def variant(self) -> int:
        """An enum tag: the variant index, a u32."""
        return self._unpack(_U32)

    def remaining(self) -> int:
        """How many bytes are left after the current position."""
        return len(self._buf) - self._pos

    def rest(self) -> builtins.bytes:
        """All the bytes left (a message's payload), consuming them."""
        v = self._buf[self._pos:]
        self._pos = len(self._buf)
        return v if isinstance(v, builtins.bytes) else builtins.bytes(v)

    def done(self) -> None:
        """Assert the header ended the frame; trailing bytes are malformed."""
        if self._pos != len(self._buf):
            raise ProtocolError(
                f"{len(self._buf) - self._pos} trailing bytes after a message without payload")


def frame_limit(max_payload: int) -> int:
    """The largest frame body allowed: ``max_payload`` plus a full header."""
    return max_payload + HEADER_LIMIT


def encode_frame(header: Buffer, payload: Buffer = b"") -> bytes:
    """One frame: the big-endian length of header + payload, then both."""
    return b"".join((_BE32.pack(len(header) + len(payload)), header, payload))


def _read_exact_stream(stream: Any, n: int) -> bytes:
    """Up to ``n`` bytes from a file-like object or socket; short only at EOF."""
    recv = getattr(stream, "recv", None)
    if recv is not None:        # a socket: recv may return short reads
        chunks = []
        left = n
        while left:
            chunk = recv(min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    data: Optional[bytes] = stream.read(n)
    if data is None:
        raise ProtocolError("read_frame needs a blocking stream")
    if len(data) == n or not data:
        return data
    parts = [data]
    got = len(data)
    while got < n:              # an unbuffered (raw) stream may return short reads
        more = stream.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def read_frame(stream: Union[BinaryIO, Any], max_payload: int) -> Optional[bytes]:
    """Read one frame, blocking; return its body (header + payload).

    ``stream`` is a binary file-like object (``sock.makefile("rb")``, a
    pipe) or a socket. Returns None at a clean end of stream (before the
    first byte of a frame). Raises `ProtocolError` if the length prefix
    exceeds ``max_payload + 64 KiB`` (checked before anything is
    allocated) and `ConnectionLost` if the stream ends inside a frame.

    The body is not split: the payload's length is the body's length less
    the header's, known only once the header is decoded. Use
    ``Reader(body)`` and then ``Reader.rest()`` for the payload.
    """
    prefix = _read_exact_stream(stream, 4)
    if not prefix:
        return None
    if len(prefix) < 4:
        raise ConnectionLost("connection closed inside a frame's length prefix")
    (length,) = _BE32.unpack(prefix)
    limit = frame_limit(max_payload)
    if length > limit:
        raise ProtocolError(f"frame of {length} bytes exceeds the limit of {limit} bytes")
    body = _read_exact_stream(stream, length) if length else b""
    if len(body) < length:
        raise ConnectionLost(
            f"connection closed inside a frame ({len(body)} of {length} bytes read)")
    return body


def split_frames(buf: bytearray, max_payload: int) -> List[bytes]:
    """Take every complete frame off the front of ``buf`` (for asyncio use).

    Returns the bodies of the complete frames, in order, and deletes them
    (prefixes included) from ``buf``, leaving any partial frame in place.
    Raises `ProtocolError` as soon as a length prefix exceeds the limit.
    """
    frames: List[bytes] = []
    pos = 0
    end = len(buf)
    limit = frame_limit(max_payload)
    unpack = _BE32.unpack_from
    while end - pos >= 4:
        (length,) = unpack(buf, pos)
        if length > limit:
            raise ProtocolError(f"frame of {length} bytes exceeds the limit of {limit} bytes")
        stop = pos + 4 + length
        if stop > end:
            break
        frames.append(bytes(buf[pos + 4:stop]))
        pos = stop
    if pos:
        del buf[:pos]
    return frames


def needed(buf: Buffer, max_payload: int) -> int:
    """How many more bytes ``buf`` needs to hold its first complete frame
    (0 if it already does); raises `ProtocolError` on an oversized prefix."""
    if len(buf) < 4:
        return 4 - len(buf)
    length: int = _BE32.unpack_from(buf, 0)[0]
    if length > frame_limit(max_payload):
        raise ProtocolError(
            f"frame of {length} bytes exceeds the limit of {frame_limit(max_payload)} bytes")
    return max(0, 4 + length - len(buf))


# ---------------------------------------------------------------------------
# Client-side messages: `Hello::Client`, `ToMaster` frames out, `ToClient` in
# (docs/protocol.md, sections 3.1 to 3.3). The handler side lives with the
# handler; both use the primitives above.
# ---------------------------------------------------------------------------

# ToMaster variant indexes.
SUBMIT, STATS, STATUS, RESULT, START, CANCEL, JOBS, EVENTS = range(8)
# ToClient variant indexes; `decode_answer` returns one of these first.
WELCOME, REFUSED, PART, COMPLETED, FAILED, STATS_ANSWER, REPLY, EVENT = range(8)

_IQ = struct.Struct("<IQ")
_QQ = struct.Struct("<QQ")
_Q = _U64
_module_fields: Dict[str, bytes] = {}


def client_hello_frame(token: Optional[str]) -> bytes:
    """`Hello::Client { version: 2, token }` as a frame."""
    w = Writer().variant(1).u32(PROTOCOL_VERSION)
    w.option(token, w.str)
    return encode_frame(w.getvalue())


def _module_field(module: str) -> bytes:
    """The encoded `module` string (cached: clients reuse a few names)."""
    field = _module_fields.get(module)
    if field is None:
        raw = module.encode("utf-8")
        field = _Q.pack(len(raw)) + raw
        if len(_module_fields) < 1024:
            _module_fields[module] = field
    return field


#: Priority words to their wire index (`Priority` in proto/src/jobs.rs).
PRIORITIES: Dict[str, int] = {"high": 0, "normal": 1, "low": 2}
#: The most retries a submit may ask for (`MAX_RETRIES`).
MAX_RETRIES = 100
_II = struct.Struct("<II")


def submit_options(priority: str = "normal", retries: int = 0) -> Tuple[int, int]:
    """Checks ``priority`` and ``retries`` and returns their wire values;
    raises `ValueError` for a word or count the master would not take."""
    try:
        index = PRIORITIES[priority]
    except KeyError:
        raise ValueError(f"priority must be high, normal or low, not {priority!r}") from None
    if not isinstance(retries, int) or not 0 <= retries <= MAX_RETRIES:
        raise ValueError(f"retries must be a whole number from 0 to {MAX_RETRIES}")
    return index, retries


def submit_frame(tag: int, module: str, data: bytes, context: bytes = b"",
                 detach: bool = False, start_later: bool = False,
                 timeout_ms: Optional[int] = None, priority: int = 1,
                 retries: int = 0) -> bytes:
    """`ToMaster::Submit` with its options, the input as payload, as a frame.

    ``priority`` is the wire index (see `submit_options`). The caller checks
    the sizes (see `check_submit`).
    """
    opts = b"\x01" if detach or start_later else b"\x00"
    opts += b"\x01" if start_later else b"\x00"
    opts += b"\x00" if timeout_ms is None else b"\x01" + _Q.pack(timeout_ms)
    opts += _II.pack(priority, retries)
    header = b"".join((_IQ.pack(SUBMIT, tag), _module_field(module),
                       _Q.pack(len(context)), context, opts))
    return b"".join((_BE32.pack(len(header) + len(data)), header, data))


_plain_tails: Dict[str, bytes] = {}


def plain_submit_tail(module: str) -> bytes:
    """What follows the variant and tag in a plain waiting `Submit` of
    ``module`` (no context, default options): cached, for the hot path.
    A frame is then ``be32(12 + len(tail) + len(data)) + <IQ(0, tag) + tail + data``."""
    tail = _plain_tails.get(module)
    if tail is None:
        # context length 0, detach, start_later, timeout None, priority
        # normal (1), retries 0.
        tail = _module_field(module) + b"\x00" * 11 + _II.pack(1, 0)
        if len(tail) + 12 > HEADER_LIMIT:
            raise ValueError("the module name exceeds the 64 KiB header limit")
        if len(_plain_tails) < 1024:
            _plain_tails[module] = tail
    return tail


def check_submit(module: str, data: Buffer, context: Buffer, max_payload: int) -> None:
    """Raise `ValueError` for a submit the master would close the connection
    for: input over ``max_payload``, context over 16 KiB, header over 64 KiB."""
    if len(data) > max_payload:
        raise ValueError(f"input of {len(data)} bytes exceeds the master's limit "
                         f"of {max_payload}")
    if len(context) > MAX_CONTEXT:
        raise ValueError(f"context of {len(context)} bytes exceeds the limit of {MAX_CONTEXT}")
    if len(module.encode("utf-8")) + len(context) + 64 > HEADER_LIMIT:
        raise ValueError("module name and context exceed the 64 KiB header limit")


def stats_frame(tag: int) -> bytes:
    """`ToMaster::Stats { tag }` as a frame."""
    return encode_frame(_IQ.pack(STATS, tag))


def job_op_frame(variant: int, tag: int, job_id: str) -> bytes:
    """`Status`, `Start` or `Cancel` (``variant``) for one job id, as a frame."""
    return encode_frame(Writer().variant(variant).u64(tag).str(job_id).getvalue())


def result_frame(tag: int, job_id: str, wait_ms: int) -> bytes:
    """`ToMaster::Result { tag, id, wait_ms }` as a frame."""
    return encode_frame(Writer().variant(RESULT).u64(tag).str(job_id).u64(wait_ms).getvalue())


def jobs_frame(tag: int, limit: int, status: str) -> bytes:
    """`ToMaster::Jobs { tag, limit, status }` as a frame ("" = any status)."""
    return encode_frame(Writer().variant(JOBS).u64(tag).u32(limit).str(status).getvalue())


def events_frame(tag: int, job: str) -> bytes:
    """`ToMaster::Events { tag, job }` as a frame ("" = every job)."""
    return encode_frame(Writer().variant(EVENTS).u64(tag).str(job).getvalue())


def decode_answer(body: bytes) -> Tuple[Any, ...]:
    """Decode one `ToClient` frame body into a tuple, first item its variant:

    ======================  ==================================================
    ``WELCOME``             ``(WELCOME, version, max_payload, instance)``
    ``REFUSED``             ``(REFUSED, message)``
    ``PART``                ``(PART, tag, data)``
    ``COMPLETED``           ``(COMPLETED, tag, job, context, output)``
    ``FAILED``              ``(FAILED, tag, job, reason_word, message, context)``
    ``STATS_ANSWER``        ``(STATS_ANSWER, tag, json_text)``
    ``REPLY``               ``(REPLY, tag, outcome_word, json_text, output)``
    ``EVENT``               ``(EVENT, tag, name, json_text)``
    ======================  ==================================================

    Raises `ProtocolError` for anything malformed.
    """
    try:
        kind, tag = _IQ.unpack_from(body, 0)
    except struct.error:
        kind = None
    if kind == COMPLETED:                      # the hot path, decoded inline
        try:
            job, clen = _QQ.unpack_from(body, 12)
        except struct.error:
            raise ProtocolError("truncated Completed header") from None
        end = 28 + clen
        if end > len(body):
            raise ProtocolError("truncated Completed header")
        return (COMPLETED, tag, job, body[28:end], body[end:])
    if kind == PART:
        return (PART, tag, body[12:])
    r = Reader(body)
    kind = r.variant()
    if kind == FAILED:
        tag, job, reason = r.u64(), r.u64(), r.variant()
        if reason >= len(REASONS):
            raise ProtocolError(f"unknown reason index {reason}")
        out: Tuple[Any, ...] = (FAILED, tag, job, REASONS[reason], r.str(), r.bytes())
    elif kind == REPLY:
        tag, outcome = r.u64(), r.variant()
        if outcome >= len(OUTCOMES):
            raise ProtocolError(f"unknown outcome index {outcome}")
        return (REPLY, tag, OUTCOMES[outcome], r.str(), r.rest())
    elif kind == STATS_ANSWER:
        out = (STATS_ANSWER, r.u64(), r.str())
    elif kind == EVENT:
        out = (EVENT, r.u64(), r.str(), r.str())
    elif kind == WELCOME:
        out = (WELCOME, r.u32(), r.u64(), r.str())
    elif kind == REFUSED:
        out = (REFUSED, r.str())
    else:
        raise ProtocolError(f"unknown ToClient variant {kind}")
    r.done()
    return out
