"""The asyncio client, `taskmaster.aio.Client`: many jobs in flight on one connection.

What lives here:

* `Client`: the operations of the blocking `taskmaster.Client` as
  coroutines. Every request gets a tag; one protocol callback reads the
  socket, parses every complete frame it received and resolves the
  request's future (or feeds its stream) by tag, so answers may come
  back in any order. Requests written in one event-loop turn go out in
  one write.
* `JobStream`: the async iterator `Client.stream` returns.

Flow control, so nothing is buffered without bound: a request waits
before it is written while the transport's write buffer is over its
high-water mark (the master stops reading a connection with too many jobs
in flight, see docs/protocol.md 5.3), and a stream whose consumer falls
behind by more than `STREAM_HIGH_WATER` items pauses reading the socket
(for every request on the connection) until it catches up.

If the connection is lost, every pending call raises `ConnectionLost`.
"""

from __future__ import annotations

import asyncio
import struct
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Set, Tuple, Type, Union

from . import _wire
from ._wire import (COMPLETED, FAILED, PART, REFUSED, STATS_ANSWER, WELCOME, ConnectionLost,
                    ProtocolError, TaskmasterError)
from .client import (CONNECT_TIMEOUT, DEFAULT_ADDR, Address, Data, Part, Response, TooLarge,
                     check_submit, job_failed, parse_addr, reply_json, reply_ok,
                     result_value, timeout_ms, token_from_env, wait_ms, welcome)

__all__ = ["Client", "JobStream", "STREAM_HIGH_WATER"]

#: Unread items in one stream past which reading the socket pauses.
STREAM_HIGH_WATER = 256
#: Seconds `Client.close` waits for buffered requests to be written.
CLOSE_TIMEOUT = 5.0
#: Bytes of requests gathered in one loop turn past which they are written at once.
FLUSH_BYTES = 256 * 1024

_IQ = struct.Struct("<IQ")
_QQ = struct.Struct("<QQ")
_BE32 = struct.Struct(">I")


def _copy(error: BaseException) -> BaseException:
    """A fresh instance of ``error`` for each waiter (each raise adds to an
    exception's traceback, so one instance must not be raised by many)."""
    try:
        new = type(error)(*error.args)
    except Exception:
        return error
    new.__cause__ = error.__cause__
    return new


class _Protocol(asyncio.Protocol):
    """Forwards the transport's callbacks to its `Client`."""

    def __init__(self, client: "Client") -> None:
        self.client = client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.client._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.client._on_data(data)

    def eof_received(self) -> Optional[bool]:
        return False                            # close; connection_lost follows

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.client._on_lost(exc)

    def pause_writing(self) -> None:
        self.client._write_paused = True

    def resume_writing(self) -> None:
        self.client._resume_writing()


class JobStream:
    """The answers of one streamed job, as an async iterator.

    Yields a `Part` (a ``bytes``) for each part, then one `Response`
    (``.final`` True, ``.job_id``), always last; a failed job raises
    `JobFailed` after its parts. Leaving the loop early: call `aclose`
    (or use ``async with``) to drop the job's remaining answers at once;
    dropping the object does the same.
    """

    def __init__(self, client: "Client", tag: int) -> None:
        self._client = client
        self.tag = tag
        self._items: Deque[Tuple[Any, ...]] = deque()
        self._waiter: Optional[asyncio.Future[Any]] = None
        self._error: Optional[BaseException] = None
        self._finished = False
        self._full = False

    def _put(self, answer: Tuple[Any, ...]) -> None:
        self._items.append(answer)
        if not self._full and len(self._items) >= STREAM_HIGH_WATER:
            self._full = True
            self._client._stream_full(self, True)
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _fail(self, error: BaseException) -> None:
        self._error = error
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def __aiter__(self) -> "JobStream":
        return self

    async def __anext__(self) -> Union[Part, Response]:
        if self._finished:
            raise StopAsyncIteration
        client = self._client
        if client._write_paused:
            await client._drained()
        while not self._items:
            if self._error is not None:
                self._finish()
                raise self._error
            self._waiter = client._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        answer = self._items.popleft()
        if self._full and len(self._items) <= STREAM_HIGH_WATER // 2:
            self._full = False
            client._stream_full(self, False)
        kind = answer[0]
        if kind == PART:
            return Part(answer[2])
        self._finish()
        if kind == COMPLETED:
            out = Response(answer[4])
            out.job_id = f"{client.instance}-{answer[2]}"
            return out
        raise job_failed(client.instance, answer)

    def _finish(self) -> None:
        if not self._finished:
            self._finished = True
            self._items.clear()
            if self._full:
                self._full = False
                self._client._stream_full(self, False)
            self._client._streams.pop(self.tag, None)

    async def aclose(self) -> None:
        """Stop iterating; answers still to come for this job are dropped."""
        self._finish()

    async def __aenter__(self) -> "JobStream":
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._finish()

    def __del__(self) -> None:
        try:
            self._finish()
        except Exception:                       # interpreter shutdown: nothing to undo
            pass


class Client:
    """An asyncio connection to a taskmaster master.

    Connect with ``client = await Client.connect(addr, token=None)`` or
    ``async with Client(addr) as client:``. The arguments are those of the
    blocking `taskmaster.Client`: ``timeout`` is the default job time limit
    in seconds (None: the master's; 0: none), ``token`` defaults to the
    environment.

    Any number of calls may run at once, from any number of tasks, on the
    one connection; each gets its own answer. Use it from one event loop.
    """

    def __init__(self, addr: Address = DEFAULT_ADDR, token: Optional[str] = None,
                 timeout: Optional[float] = None,
                 connect_timeout: float = CONNECT_TIMEOUT) -> None:
        self.addr = addr
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._token = token
        self.max_payload = 0
        self.instance = ""
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._transport: Optional[asyncio.Transport] = None
        self._next_tag = 1
        self._pending: Dict[int, asyncio.Future[Any]] = {}
        self._streams: Dict[int, JobStream] = {}
        self._rbuf = bytearray()
        self._need = 0
        self._wbuf: List[bytes] = []
        self._wbytes = 0
        self._flush_handle: Optional[asyncio.Handle] = None
        self._write_paused = False
        self._drain_waiters: List[asyncio.Future[Any]] = []
        self._full_streams: Set[int] = set()
        self._welcome: Optional[asyncio.Future[Any]] = None
        self._error: Optional[BaseException] = None
        self._closed: Optional[asyncio.Future[Any]] = None

    # -- connecting ------------------------------------------------------------------------

    @classmethod
    async def connect(cls: Type["Client"], addr: Address = DEFAULT_ADDR,
                      token: Optional[str] = None, timeout: Optional[float] = None,
                      connect_timeout: float = CONNECT_TIMEOUT) -> "Client":
        """Connect, say hello and return the client. Raises `Refused` if the
        master refuses the hello, `TimeoutError` past ``connect_timeout``."""
        client = cls(addr, token, timeout, connect_timeout)
        await client._open()
        return client

    async def _open(self) -> None:
        if self._transport is not None:
            return
        token = self._token if self._token is not None else token_from_env()
        self._loop = asyncio.get_running_loop()
        self._welcome = self._loop.create_future()
        self._closed = self._loop.create_future()
        host, port = parse_addr(self.addr)

        async def handshake() -> None:
            await self._loop.create_connection(lambda: _Protocol(self), host, port)
            assert self._transport is not None
            self._transport.write(_wire.client_hello_frame(token))
            assert self._welcome is not None
            welcome(await self._welcome)            # raises Refused

        try:
            await asyncio.wait_for(handshake(), self.connect_timeout)
        except asyncio.TimeoutError:
            self._abort()
            raise TimeoutError(
                f"no welcome from the master within {self.connect_timeout} s") from None
        except BaseException:
            self._abort()
            raise

    def _abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    async def __aenter__(self) -> "Client":
        await self._open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the protocol side -----------------------------------------------------------------

    def _on_data(self, data: bytes) -> None:
        buf = self._rbuf
        if buf:                                     # a frame was cut between two reads
            buf += data
            if len(buf) < self._need:               # still incomplete: no copy, no parse
                return
            data = bytes(buf)
            buf.clear()
        try:
            if self._welcome is not None:
                self._on_welcome(data)
                return
            pos = self._dispatch(data)
        except ProtocolError as e:
            self._fail_all(e)
            self._abort()
            return
        if pos < len(data):                         # keep the partial frame for later
            buf += memoryview(data)[pos:]
            self._need = 4 + _BE32.unpack_from(data, pos)[0] if len(buf) >= 4 else 4

    def _on_welcome(self, data: bytes) -> None:
        """The first frame: Welcome or Refused."""
        buf = bytearray(data)
        frames = _wire.split_frames(buf, 0)
        if not frames:
            self._rbuf[:] = buf
            self._need = 0
            return
        answer = _wire.decode_answer(frames[0])
        if answer[0] == WELCOME:
            self.max_payload, self.instance = answer[2], answer[3]
        waiter, self._welcome = self._welcome, None
        if waiter is not None and not waiter.done():
            waiter.set_result(answer)
        if len(frames) > 1 or buf:
            raise ProtocolError("unexpected frames right after the Welcome")

    def _dispatch(self, buf: bytes) -> int:
        """Route every complete frame in ``buf`` by tag; return the bytes used."""
        pending = self._pending
        streams = self._streams
        limit = self.max_payload + _wire.HEADER_LIMIT
        end = len(buf)
        pos = 0
        unpack_len = _BE32.unpack_from
        unpack_iq = _IQ.unpack_from
        while end - pos >= 4:
            (length,) = unpack_len(buf, pos)
            if length > limit:
                raise ProtocolError(
                    f"frame of {length} bytes exceeds the limit of {limit} bytes")
            stop = pos + 4 + length
            if stop > end:
                break
            if length >= 28:
                kind, tag = unpack_iq(buf, pos + 4)
            else:
                kind = tag = -1
            if kind == COMPLETED:                   # the hot path: no Reader, no header copy
                fut = pending.pop(tag, None)
                if fut is not None:
                    job, clen = _QQ.unpack_from(buf, pos + 16)
                    if pos + 32 + clen > stop:
                        raise ProtocolError("truncated Completed header")
                    if not fut.done():
                        fut.set_result(buf[pos + 32 + clen:stop])
                    pos = stop
                    continue
            answer = _wire.decode_answer(buf[pos + 4:stop])
            pos = stop
            kind = answer[0]
            if kind in (WELCOME, REFUSED):
                raise ProtocolError("Welcome or Refused after the hello")
            tag = answer[1]
            stream = streams.get(tag)
            if stream is not None:
                if kind != PART:
                    streams.pop(tag, None)
                stream._put(answer)
                continue
            if kind == PART:
                continue                            # a part of a `do` job: dropped
            fut = pending.pop(tag, None)
            if fut is None or fut.done():
                continue
            if kind == COMPLETED:                   # a waiting submit's future: its output
                fut.set_result(answer[4])
            elif kind == FAILED:
                fut.set_exception(job_failed(self.instance, answer))
            else:
                fut.set_result(answer)
        return pos

    def _on_lost(self, exc: Optional[Exception]) -> None:
        if self._error is None:
            text = "the master closed the connection"
            if exc is not None:
                text = f"connection to the master lost: {exc}"
            self._fail_all(ConnectionLost(text))
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)

    def _fail_all(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        if self._welcome is not None and not self._welcome.done():
            self._welcome.set_exception(error)
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(_copy(error))
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            stream._fail(_copy(error))
        self._resume_writing()

    def _resume_writing(self) -> None:
        self._write_paused = False
        waiters, self._drain_waiters = self._drain_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def _drained(self) -> None:
        """Wait until the transport's write buffer is below its low-water mark."""
        while self._write_paused and self._error is None:
            fut = self._loop.create_future()
            self._drain_waiters.append(fut)
            await fut

    def _stream_full(self, stream: JobStream, full: bool) -> None:
        """Pause reading while any stream holds too many unread items."""
        was = bool(self._full_streams)
        if full:
            self._full_streams.add(stream.tag)
        else:
            self._full_streams.discard(stream.tag)
        now = bool(self._full_streams)
        if was != now and self._transport is not None and self._error is None:
            if now:
                self._transport.pause_reading()
            else:
                self._transport.resume_reading()

    # -- sending ---------------------------------------------------------------------------

    def _write(self, frame: bytes) -> None:
        """Queue one frame; the frames of one loop turn go out in one write."""
        self._wbuf.append(frame)
        self._wbytes += len(frame)
        if self._wbytes >= FLUSH_BYTES:
            self._flush()
        elif self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._wbuf and self._transport is not None and self._error is None:
            data = self._wbuf[0] if len(self._wbuf) == 1 else b"".join(self._wbuf)
            self._transport.write(data)
        self._wbuf.clear()
        self._wbytes = 0

    async def _request(self, make: Callable[[int], bytes]) -> Tuple[Any, ...]:
        """Send one request and wait for its one answer."""
        if self._write_paused:
            await self._drained()
        if self._error is not None:
            raise _copy(self._error)
        tag = self._next_tag
        self._next_tag = tag + 1
        fut = self._loop.create_future()
        self._pending[tag] = fut
        self._write(make(tag))
        try:
            answer: Tuple[Any, ...] = await fut
            return answer
        except asyncio.CancelledError:              # drop the answer when it comes
            self._pending.pop(tag, None)
            raise

    def _check_open(self) -> None:
        if self._transport is None:
            raise TaskmasterError("not connected: use `await Client.connect(...)` "
                                  "or `async with Client(...)`")

    # -- jobs ------------------------------------------------------------------------------

    async def do(self, module: str, data: Data = b"", timeout: Optional[float] = None,
                 priority: str = "normal", retries: int = 0) -> bytes:
        """Run one job and return its response; see `taskmaster.Client.do`.
        Raises `JobFailed` if the job fails or is refused."""
        # The hot path of the asyncio client, kept flat: no helper calls
        # but the frame's encoding, one future, one list append.
        if self._transport is None:
            self._check_open()
        if type(data) is not bytes:
            data = bytes(data)
        if len(data) > self.max_payload:
            check_submit(module, data, self.max_payload)        # raises TooLarge
        if self._write_paused:
            await self._drained()
        if self._error is not None:
            raise _copy(self._error)
        tag = self._next_tag
        self._next_tag = tag + 1
        limit = self.timeout if timeout is None else timeout
        if limit is None and priority == "normal" and not retries:
            try:
                tail = _wire.plain_submit_tail(module)
            except ValueError as e:
                raise TooLarge(str(e)) from None
            frame = _BE32.pack(12 + len(tail) + len(data)) + _IQ.pack(0, tag) + tail + data
        else:
            check_submit(module, data, self.max_payload)
            pri, retries = _wire.submit_options(priority, retries)
            frame = _wire.submit_frame(tag, module, data, b"", False, False, timeout_ms(limit),
                                       pri, retries)
        fut = self._loop.create_future()
        self._pending[tag] = fut
        self._wbuf.append(frame)
        self._wbytes += len(frame)
        if self._wbytes >= FLUSH_BYTES:
            self._flush()
        elif self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._flush)
        try:
            output: bytes = await fut       # the output; a failure is set as `JobFailed`
            return output
        except asyncio.CancelledError:              # drop the answer when it comes
            self._pending.pop(tag, None)
            raise

    def stream(self, module: str, data: Data = b"", timeout: Optional[float] = None,
               priority: str = "normal", retries: int = 0) -> JobStream:
        """Submit one job now and return a `JobStream` of its parts and then
        its response: ``async for item in client.stream("count", b"5"):``."""
        self._check_open()
        if self._error is not None:
            raise _copy(self._error)
        data = bytes(data)
        check_submit(module, data, self.max_payload)
        pri, retries = _wire.submit_options(priority, retries)
        limit = timeout_ms(self.timeout if timeout is None else timeout)
        tag = self._next_tag
        self._next_tag = tag + 1
        stream = JobStream(self, tag)
        self._streams[tag] = stream
        self._write(_wire.submit_frame(tag, module, data, b"", False, False, limit, pri, retries))
        return stream

    async def submit_detached(self, module: str, data: Data = b"", start_later: bool = False,
                              timeout: Optional[float] = None, priority: str = "normal",
                              retries: int = 0) -> str:
        """Submit without waiting for the job; return its id. See
        `taskmaster.Client.submit_detached`."""
        self._check_open()
        data = bytes(data)
        check_submit(module, data, self.max_payload)
        pri, retries = _wire.submit_options(priority, retries)
        limit = timeout_ms(self.timeout if timeout is None else timeout)
        answer = await self._request(
            lambda tag: _wire.submit_frame(tag, module, data, b"", True, start_later, limit,
                                           pri, retries))
        job_id: str = reply_ok(answer)["id"]
        return job_id

    # -- job operations ---------------------------------------------------------------------

    async def status(self, job_id: str) -> Dict[str, Any]:
        """What the master knows of a job; see `taskmaster.Client.status`."""
        self._check_open()
        return reply_ok(await self._request(
            lambda t: _wire.job_op_frame(_wire.STATUS, t, job_id)))

    async def result(self, job_id: str, wait: Optional[float] = None) -> bytes:
        """A job's response, waiting up to ``wait`` seconds; raises
        `JobFailed` or `NotFinished`. See `taskmaster.Client.result`."""
        self._check_open()
        ms = wait_ms(wait)
        return result_value(await self._request(lambda t: _wire.result_frame(t, job_id, ms)))

    async def start(self, job_id: str) -> Dict[str, Any]:
        """Queue a ``start-later`` job; see `taskmaster.Client.start`."""
        self._check_open()
        return reply_ok(await self._request(
            lambda t: _wire.job_op_frame(_wire.START, t, job_id)))

    async def cancel(self, job_id: str) -> Dict[str, Any]:
        """Cancel an unfinished job; see `taskmaster.Client.cancel`."""
        self._check_open()
        return reply_ok(await self._request(
            lambda t: _wire.job_op_frame(_wire.CANCEL, t, job_id)))

    async def jobs(self, limit: int = 100, status: Optional[str] = None) -> List[Dict[str, Any]]:
        """Recent jobs, newest first; see `taskmaster.Client.jobs`."""
        self._check_open()
        body = reply_ok(await self._request(lambda t: _wire.jobs_frame(t, limit, status or "")))
        return list(body.get("jobs", []))

    async def stats(self) -> Dict[str, Any]:
        """Pool, queue and job counters; see `taskmaster.Client.stats`."""
        self._check_open()
        answer = await self._request(_wire.stats_frame)
        if answer[0] != STATS_ANSWER:
            raise ProtocolError(f"expected a Stats answer, got variant {answer[0]}")
        return reply_json(answer)

    # -- lifetime ---------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether the connection is closed or lost."""
        return self._error is not None

    async def close(self) -> None:
        """Close the connection (after writing what is queued); calls still
        waiting raise `ConnectionLost`. Submitted jobs keep running."""
        if self._transport is None:
            return
        self._flush()
        if self._error is None:
            self._fail_all(ConnectionLost("the client was closed"))
        self._transport.close()                     # writes what is buffered, then closes
        if self._closed is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._closed), CLOSE_TIMEOUT)
            except asyncio.TimeoutError:            # the master does not read: drop it all
                self._transport.abort()

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("open" if self._transport else "not connected")
        return f"<taskmaster.aio.Client instance={self.instance} {state}>"
