"""A taskmaster handler child in Python: `run` serves modules to the master.

A handler program is an executable script that hands its modules to `run`::

    #!/usr/bin/env python3
    from taskmaster.handler import run

    def upper(data: bytes, parts) -> bytes:
        parts.send(b"working\\n")          # optional: a part, sent now
        return data.upper()               # the response

    run({"upper": upper})

The master pre-forks it (``taskmaster --handler ./handler.py``) as each of
its children, with a command line and a secret on stdin that only the master
gives (docs/protocol.md, section 7). `run` does what the Rust runtime
(`taskmaster_handler::run`) does:

* dies with the master, even after ``kill -9``: a parent-death signal, a
  parent check, and a thread that exits the process when the master's end
  of the socket hangs up, even while a module blocks;
* applies the resource limits the master asks for before module code runs,
  calls ``start()`` once, connects back and says hello;
* runs one job at a time, sends each answer before it reads the next job,
  and sends heartbeats from its own thread while a module works.

Layout: `run` (the entry point), `Parts` (sends parts of a job's response),
`Fail` (fails a job without replacing the child); private: `_Args` (the
command line), `_Conn` (the socket, shared by the job loop and the
heartbeats), `_serve` (start-up and the job loop), `_read_job` and
`_run_job` (one job in, one answer out), `_die_with_master` and
`_lifeline` (dying with the master, heartbeats). Framing and the header
encoding come from `taskmaster._wire`; the job loop's few fixed-layout
headers are packed here with precompiled `struct`s, for speed.
"""

from __future__ import annotations

import io
import os
import select
import socket
import struct
import sys
import threading
from typing import Callable, Dict, List, Mapping, NoReturn, Optional, Tuple, Union

from ._wire import (
    DEFAULT_MAX_PAYLOAD, MAX_MESSAGE, PROTOCOL_VERSION, REASON_INDEX,
    ConnectionLost, ProtocolError, Writer, encode_frame, frame_limit,
)

__all__ = ["run", "Parts", "Fail", "Module"]

BytesLike = Union[bytes, bytearray, memoryview]

#: What a module is: ``fn(data, parts) -> bytes``.
Module = Callable[[bytes, "Parts"], BytesLike]

_SECRET_LEN = 32

# Variant indexes of the messages this file sends and reads (protocol.md 3.1, 3.4, 3.5).
_HELLO_HANDLER = 0
_JOB = 0
_PART, _DONE, _FAILED, _HEARTBEAT = 0, 1, 2, 3
_REASON_FAILED = REASON_INDEX["failed"]
_REASON_UNKNOWN_MODULE = REASON_INDEX["unknown-module"]

#: Read buffer for the master's socket: a burst of prefetched jobs is read in one call.
_READ_BUFFER = 256 * 1024
#: Payloads up to this size are copied behind their header and sent in one
#: call; larger ones are sent from where they lie, after the header.
_COPY_LIMIT = 64 * 1024
_MSG_MORE = getattr(socket, "MSG_MORE", 0)
# The fixed fields of the messages of the job loop, by hand: it runs per job
# and a `Reader`/`Writer` would cost several calls per field.
_BE32 = struct.Struct(">I")               # a frame's length prefix
_JOB_FIELDS = struct.Struct("<IQQ")       # ToHandler::Job: variant, job, module length
_PART_FIELDS = struct.Struct("<IQ")       # FromHandler::Part: variant, job
_DONE_FIELDS = struct.Struct("<IQ?")      # FromHandler::Done: variant, job, retire

_USAGE = (
    "is a taskmaster handler program: the taskmaster master starts it "
    "(taskmaster --handler PATH) with --connect ADDR --child-id N --master-pid PID "
    "[--max-payload BYTES] [--nofile N] [--core BYTES] [--heartbeat-ms MS] "
    "and a secret on stdin; it is not run by hand. "
    "`--list-modules` prints its module names"
)


class Fail(Exception):
    """Raise it in a module to fail the job ``failed`` with this message.

    Unlike any other exception it does not cost the child: the job fails
    and the child takes the next one (the Rust `Module::call` returning
    ``Err``). Any other exception means the module's state can no longer be
    trusted: the job fails ``failed`` with the exception's text and the
    child exits to be replaced.
    """


class _Stop(BaseException):
    """Ends the handler: a message for stderr (if any) and an exit status.

    A `BaseException`, like `SystemExit`: a module's ``except Exception``
    around `Parts.send` must not swallow a lost connection."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class _Args:
    """The command line the master gives each child (handler/src/args.rs)."""

    __slots__ = ("connect", "child_id", "master_pid", "max_payload", "nofile", "core",
                 "heartbeat_ms")

    def __init__(self, argv: List[str]) -> None:
        values: Dict[str, str] = {}
        numbers = ("--child-id", "--master-pid", "--max-payload", "--nofile", "--core",
                   "--heartbeat-ms")
        it = iter(argv)
        for flag in it:
            value = next(it, None)
            if value is None:
                raise _Stop(f"{flag} needs a value; {_prog()} {_USAGE}", 2)
            if flag != "--connect" and flag not in numbers:
                raise _Stop(f"unknown flag {flag!r}; {_prog()} {_USAGE}", 2)
            if flag in numbers and not (value.isascii() and value.isdigit()):
                raise _Stop(f"{flag}: not a number: {value!r}", 2)
            values[flag] = value
        if not {"--connect", "--child-id", "--master-pid"} <= values.keys():
            raise _Stop(f"{_prog()} {_USAGE}", 2)

        def number(flag: str) -> Optional[int]:
            return int(values[flag]) if flag in values else None

        self.connect = values["--connect"]
        self.child_id: int = int(values["--child-id"])
        self.master_pid: int = int(values["--master-pid"])
        self.max_payload: int = int(values.get("--max-payload", DEFAULT_MAX_PAYLOAD))
        #: Resource limits to set on itself (None: inherit).
        self.nofile = number("--nofile")
        self.core = number("--core")
        #: Milliseconds between heartbeats (None, or 0 on the command line: none).
        self.heartbeat_ms = number("--heartbeat-ms") or None


class _Conn:
    """The socket to the master. Every write holds `lock`, so a heartbeat
    from the lifeline thread never lands inside another frame."""

    __slots__ = ("sock", "lock", "max_payload")

    def __init__(self, sock: socket.socket, max_payload: int) -> None:
        self.sock = sock
        self.lock = threading.Lock()
        self.max_payload = max_payload

    def write(self, header: bytes, payload: BytesLike = b"") -> None:
        """Writes one frame; the caller holds `lock`."""
        try:
            if len(payload) <= _COPY_LIMIT:
                self.sock.sendall(encode_frame(header, payload))
            else:   # no copy of a big payload; MSG_MORE: header and payload share packets
                self.sock.sendall(_BE32.pack(len(header) + len(payload)) + header, _MSG_MORE)
                self.sock.sendall(payload)
        except OSError as e:
            raise _Stop(f"talking to the master: {e}", 1) from None

    def send(self, header: bytes, payload: BytesLike = b"") -> None:
        """Writes one frame, taking `lock`."""
        with self.lock:
            self.write(header, payload)


class Parts:
    """Sends parts of the running job's response, before its final one.

    Each part reaches the submitting client as it is sent (``taskmaster
    submit`` writes it to stdout, ``Client.stream`` yields it). A `Parts`
    works only while its job's function runs; it is safe to call from
    other threads meanwhile.
    """

    __slots__ = ("_conn", "_job")

    def __init__(self, conn: _Conn, job: int) -> None:
        self._conn = conn
        self._job: Optional[int] = job

    def send(self, data: BytesLike) -> None:
        """Sends one part now.

        Raises `TypeError` for anything but bytes-like data (a `str` must be
        encoded first), `ValueError` for a part over the master's
        ``--max-payload`` and `RuntimeError` once the job has ended.
        """
        payload = _as_bytes(data, "parts.send() was given")
        limit = self._conn.max_payload
        if len(payload) > limit:
            raise ValueError(f"part of {len(payload)} bytes exceeds the limit of {limit}")
        with self._conn.lock:
            if self._job is None:
                raise RuntimeError("this job has ended: send parts only while its function runs")
            self._conn.write(_PART_FIELDS.pack(_PART, self._job), payload)


def run(modules: Mapping[str, Module], start: Optional[Callable[[], None]] = None) -> NoReturn:
    """Runs this process as a handler child with ``modules``; never returns.

    ``modules`` maps each module name to ``fn(data: bytes, parts: Parts) ->
    bytes``. ``fn`` may block: it runs in its own process, one job at a
    time. Its outcome:

    * it returns bytes-like data: the job completes with it as response;
      a response over ``--max-payload``, a `str` or another type fails the
      job ``failed`` (the child stays);
    * it raises `Fail`: the job fails ``failed`` with its message (the
      child stays);
    * it raises any other exception: the job fails ``failed`` with the
      exception's type and text, the traceback goes to stderr (the
      master's log), and the child exits to be replaced;
    * the process dies (``os._exit``, a signal): the job fails ``error``.

    ``start``, if given, runs once before the child reports ready; if it
    raises, the child exits 1 and the master counts a start-up failure.

    Besides the master's command line, ``--list-modules`` prints the module
    names, one a line, and exits 0. Exit status: 0 when the master hangs up
    or is gone, or after a job that replaced the child; 2 on a bad command
    line; 1 on any other error, with one line on stderr.
    """
    table: Dict[bytes, Module] = {}
    for name, fn in modules.items():
        if not isinstance(name, str) or not callable(fn):
            raise TypeError(f"run() takes a dict of name -> function, got {name!r}: {fn!r}")
        table[name.encode("utf-8")] = fn
    argv = sys.argv[1:]
    if "--exec-dir" in argv:    # the master asks `--list-modules --exec-dir DIR` first
        _exit_with("the Python handler does not run --exec-dir modules; "
                   "use the stock taskmaster-handler", 2)
    if "--list-modules" in argv:
        sys.stdout.write("".join(f"{name}\n" for name in sorted(modules)))
        sys.stdout.flush()
        sys.exit(0)
    try:
        _serve(_Args(argv), table, start)
    except _Stop as stop:
        _exit_with(str(stop), stop.status)
    sys.exit(0)


def _serve(args: _Args, table: Dict[bytes, Module],
           start: Optional[Callable[[], None]]) -> None:
    """Start-up as in handler/src/lib.rs, then the job loop until the master hangs up."""
    # The death signal first, then the parent check: if the master died
    # before prctl, only getppid() can tell.
    _die_with_master()
    if os.getppid() != args.master_pid:
        raise _Stop("", 0)
    secret = _read_secret()
    _set_limits(args)
    if start is not None:
        try:
            start()
        except Exception as e:
            _print_traceback(e)
            raise _Stop(f"start() failed: {_describe(e)}", 1) from None

    host, _, port = args.connect.rpartition(":")
    try:
        sock = socket.create_connection((host.strip("[]"), int(port)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, ValueError) as e:
        raise _Stop(f"connecting to the master at {args.connect}: {e}", 1) from None
    conn = _Conn(sock, args.max_payload)
    names = sorted(name.decode("utf-8") for name in table)
    w = Writer().variant(_HELLO_HANDLER).u32(PROTOCOL_VERSION).u64(args.child_id)
    conn.send(w.u32(os.getpid()).raw(secret).seq(names, w.str).getvalue())
    threading.Thread(target=_lifeline, args=(conn, args.heartbeat_ms), name="lifeline",
                     daemon=True).start()

    # Each answer is written before the next job is read, let alone run: if
    # that job crashes the process, an answer still held here would be
    # lost, its job reported failed although it ran.
    read = io.open(sock.fileno(), "rb", buffering=_READ_BUFFER, closefd=False).read
    limit = frame_limit(args.max_payload)
    while True:
        try:
            got = _read_job(read, limit)
        except (ProtocolError, ConnectionLost) as e:
            raise _Stop(f"bad frame from the master: {e}", 1) from None
        except OSError as e:
            raise _Stop(f"talking to the master: {e}", 1) from None
        if got is None:
            return                          # the master hung up
        job, module, data = got
        fn = table.get(module)
        if fn is None:
            text = f"this child does not run module {module.decode('utf-8', 'replace')!r}"
            conn.send(_failed(job, _REASON_UNKNOWN_MODULE, text, False))
        else:
            _run_job(conn, fn, job, data, module)


def _read_job(read: Callable[[int], bytes], limit: int) -> Optional[Tuple[int, bytes, bytes]]:
    """The next `ToHandler::Job` as ``(job, module, input)``; None at the end of the stream.

    The hot path, so not `read_frame` and a `Reader`: the fixed fields,
    the module name and the input are read with one buffered call each,
    and the input is never copied out of a frame body.
    """
    head = read(24)                         # length prefix, variant, job, module length
    if len(head) < 24:
        if not head:
            return None
        raise ConnectionLost("connection closed inside a frame")
    (length,) = _BE32.unpack_from(head)
    variant, job, name_len = _JOB_FIELDS.unpack_from(head, 4)
    if length > limit:
        raise ProtocolError(f"frame of {length} bytes exceeds the limit of {limit} bytes")
    if variant != _JOB or length < 20 + name_len:
        raise ProtocolError(f"not a ToHandler::Job (variant {variant}, {length} bytes)")
    module = read(name_len)
    data = read(length - 20 - name_len)
    if len(module) + len(data) < length - 20:
        raise ConnectionLost("connection closed inside a frame")
    return job, module, data


def _run_job(conn: _Conn, fn: Module, job: int, data: bytes, module: bytes) -> None:
    """Runs one job and sends its answer; raises `_Stop` if the child must go."""
    parts = Parts(conn, job)
    retire = False
    try:
        out = fn(data, parts)
        if type(out) is not bytes:
            out = _as_bytes(out, "the module returned")
    except Fail as e:
        header, out = _failed(job, _REASON_FAILED, str(e), False), b""
    except _BadReturn as e:
        header, out = _failed(job, _REASON_FAILED, str(e), False), b""
    except Exception as e:
        _print_traceback(e, f"module {module.decode()!r} raised in job {job}; "
                            "this child exits to be replaced")
        header, out, retire = _failed(job, _REASON_FAILED, _describe(e), True), b"", True
    else:
        if len(out) > conn.max_payload:
            text = f"response of {len(out)} bytes exceeds the limit of {conn.max_payload}"
            header, out = _failed(job, _REASON_FAILED, text, False), b""
        else:
            header = _DONE_FIELDS.pack(_DONE, job, False)
    with conn.lock:
        parts._job = None
        conn.write(header, out)
    if retire:
        raise _Stop("", 0)


def _failed(job: int, reason: int, message: str, retire: bool) -> bytes:
    """The header of `FromHandler::Failed`, its message clipped to 8 KiB."""
    text = message.encode("utf-8", "backslashreplace")
    if len(text) > MAX_MESSAGE:   # cut at a character boundary, as codec::clip_message
        text = text[:MAX_MESSAGE].decode("utf-8", "ignore").encode("utf-8") + b"..."
    return Writer().variant(_FAILED).u64(job).u32(reason).bytes(text).bool(retire).getvalue()


class _BadReturn(TypeError):
    """A module returned something that is not bytes-like."""


def _as_bytes(value: object, what: str) -> BytesLike:
    """``value`` as bytes-like data (bytes, bytearray, a flat byte view);
    `_BadReturn` naming ``what`` ("the module returned", ...) otherwise."""
    if type(value) is bytes or type(value) is bytearray:
        return value
    if isinstance(value, str):
        raise _BadReturn(f"{what} a str, not bytes (encode it, e.g. text.encode())")
    try:
        view = memoryview(value)  # type: ignore[arg-type]
    except TypeError:
        shown = "None" if value is None else type(value).__name__
        raise _BadReturn(f"{what} {shown}, not bytes") from None
    return view.cast("B") if view.c_contiguous else view.tobytes()


def _die_with_master() -> None:
    """Asks the kernel to SIGKILL this process when the master goes (Linux).

    The death signal follows the master's thread that forked us, and is
    lost if the master died before this call: the parent check after it
    and the lifeline thread cover both gaps.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        pass        # no prctl: the lifeline thread alone watches the master


def _lifeline(conn: _Conn, heartbeat_ms: Optional[int]) -> None:
    """Exits the process when the master's end of the socket hangs up, and
    sends a heartbeat every ``heartbeat_ms`` (None: none).

    It waits in the kernel for hang-up only (not for data), so it costs
    nothing per job, and runs while a module blocks the main thread. A beat
    that falls due while the main thread is writing is skipped: that frame
    proves the child alive just as well, and the lifeline goes on watching
    instead of waiting behind a write the master may be holding back.
    """
    hangup = select.POLLRDHUP | select.POLLHUP | select.POLLERR | select.POLLNVAL
    poller = select.poll()
    poller.register(conn.sock.fileno(), hangup)
    beat = encode_frame(Writer().variant(_HEARTBEAT).getvalue())
    while True:
        try:
            events = poller.poll(heartbeat_ms)
        except OSError:
            os._exit(1)
        if any(revents & hangup for _fd, revents in events):
            os._exit(0)
        if not events and conn.lock.acquire(blocking=False):
            try:
                conn.sock.sendall(beat)
            except OSError:
                os._exit(0)
            finally:
                conn.lock.release()


def _read_secret() -> bytes:
    """Exactly the 32 bytes the master writes on stdin."""
    try:
        if os.isatty(0):
            raise _Stop(f"the secret comes on stdin from the master; {_prog()} {_USAGE}", 2)
        secret = b""
        while len(secret) < _SECRET_LEN:
            chunk = os.read(0, _SECRET_LEN - len(secret))
            if not chunk:
                raise _Stop(f"reading the secret from stdin: got {len(secret)} of "
                            f"{_SECRET_LEN} bytes", 1)
            secret += chunk
        return secret
    except OSError as e:
        raise _Stop(f"reading the secret from stdin: {e}", 1) from None


def _set_limits(args: _Args) -> None:
    """The limits the master asked for, set before any module code runs."""
    import resource
    for name, limit in (("RLIMIT_NOFILE", args.nofile), ("RLIMIT_CORE", args.core)):
        if limit is not None:
            try:
                resource.setrlimit(getattr(resource, name), (limit, limit))
            except (OSError, ValueError) as e:
                raise _Stop(f"setrlimit {name} {limit}: {e}", 2) from None


def _describe(exc: BaseException) -> str:
    """``Type: text`` for an exception, the type qualified unless built in."""
    cls = type(exc)
    name = cls.__qualname__
    if cls.__module__ not in ("builtins", "__main__"):
        name = f"{cls.__module__}.{name}"
    try:
        text = str(exc)
    except Exception:
        text = "<unprintable>"
    return f"{name}: {text}" if text else name


def _print_traceback(exc: BaseException, what: str = "") -> None:
    import traceback
    if what:
        print(f"{_prog()}[{os.getpid()}]: {what}", file=sys.stderr)
    traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)


def _prog() -> str:
    return os.path.basename(sys.argv[0]) or "handler"


def _exit_with(message: str, status: int) -> NoReturn:
    if message:
        print(f"{_prog()}[{os.getpid()}]: {message}", file=sys.stderr)
    sys.exit(status)
