"""The blocking client, `taskmaster.Client`, and the errors of both clients.

What lives here:

* The exceptions every client call may raise (`JobFailed`, `Refused`,
  `NotFound`, `Conflict`, `NotFinished`, `InvalidRequest`, `TooLarge`;
  `ProtocolError` and `ConnectionLost` come from `_wire`).
* Helpers shared with `taskmaster.aio`: address parsing, the client token
  from the environment, turning a `Reply` into a value or an exception,
  and the `Part` / `Response` item types of `stream`.
* `Client`: one TCP connection to a master, usable from several threads
  at once (requests are pipelined on the connection; whichever thread is
  waiting reads the socket and hands other threads their answers).

Wire format: docs/protocol.md. User guide: docs/python.md.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import socket
import threading
import time
from collections import deque
from typing import Any, Deque, Dict, Generator, List, Optional, Tuple, Union

from . import _wire
from ._wire import (COMPLETED, FAILED, PART, REFUSED, REPLY, STATS_ANSWER, WELCOME,
                    ConnectionLost, ProtocolError, TaskmasterError)

__all__ = [
    "Client", "Part", "Response",
    "TaskmasterError", "ProtocolError", "ConnectionLost", "Refused", "JobFailed",
    "RequestError", "NotFound", "Conflict", "NotFinished", "InvalidRequest", "TooLarge",
]

DEFAULT_ADDR = "127.0.0.1:7400"
#: How long `Client` waits for the TCP connection and the master's welcome.
CONNECT_TIMEOUT = 5.0
TOKEN_ENV = "TASKMASTER_TOKEN"
TOKEN_FILE_ENV = "TASKMASTER_TOKEN_FILE"

Address = Union[str, Tuple[str, int]]
Data = Union[bytes, bytearray, memoryview]


# --------------------------------------------------------------------------- errors

class Refused(TaskmasterError):
    """The master refused the hello: a missing or wrong token, a protocol
    version it does not speak, or too many connections. ``.message`` is
    the master's text."""

    def __init__(self, message: str) -> None:
        super().__init__(f"refused by the master: {message}")
        self.message = message


class JobFailed(TaskmasterError):
    """A job ended without a response, or the master refused it.

    ``.reason`` is a reason word (``overload``, ``error``,
    ``unknown-module``, ``failed``, ``timeout``, ``cancelled``,
    ``shutting-down``), ``.message`` the detail text, ``.job_id`` the job's
    id (refused jobs have one too) and ``.status`` ``failed`` or
    ``cancelled`` (the job's status word).
    """

    def __init__(self, reason: str, message: str, job_id: str, status: str = "failed") -> None:
        super().__init__(f"job {job_id} {status}: {reason}: {message}")
        self.reason = reason
        self.message = message
        self.job_id = job_id
        self.status = status


class RequestError(TaskmasterError):
    """A job operation answered with an outcome other than ``ok``.
    ``.outcome`` is the outcome word and ``.body`` the decoded JSON."""

    def __init__(self, text: str, outcome: str, body: Dict[str, Any]) -> None:
        super().__init__(text)
        self.outcome = outcome
        self.body = body


class NotFound(RequestError, LookupError):
    """No such job: never was, refused at submit, evicted from the job
    table, or from another master run."""


class InvalidRequest(RequestError, ValueError):
    """The master found the request malformed (an id that cannot be one, a
    limit or wait out of range, an unknown status word)."""


class Conflict(RequestError):
    """The job is not in a status that allows the request (starting a job
    that is not ``start-later``, cancelling a finished one).
    ``.job_id`` and ``.status`` (its status now) say where it stands."""

    def __init__(self, text: str, outcome: str, body: Dict[str, Any]) -> None:
        super().__init__(text, outcome, body)
        self.job_id: str = body.get("id", "")
        self.status: str = body.get("status", "")


class NotFinished(Conflict):
    """`result` found the job unfinished when its wait ended; ``.status``
    is ``start-later``, ``queued`` or ``processing``."""


class TooLarge(TaskmasterError, ValueError):
    """An input or context larger than the master accepts; nothing was sent."""


# --------------------------------------------------------------------------- shared helpers

class Part(bytes):
    """A part of a streamed job's output (``.final`` is False)."""

    final = False


class Response(bytes):
    """The final response of a streamed job (``.final`` is True);
    ``.job_id`` is the job's id."""

    final = True
    job_id: str = ""


def parse_addr(addr: Address) -> Tuple[str, int]:
    """``"host:port"``, ``"[v6]:port"`` or a ``(host, port)`` tuple."""
    if isinstance(addr, tuple):
        return addr[0], int(addr[1])
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"address {addr!r} is not host:port")
    return host.strip("[]") or "127.0.0.1", int(port)


def token_from_env() -> Optional[str]:
    """The client token the environment gives, as the Rust CLI reads it: the
    first line of the file ``TASKMASTER_TOKEN_FILE`` names, else
    ``TASKMASTER_TOKEN``; None if neither is set (empty counts as unset).
    An unreadable or empty token file is an error, so a typo never
    silently means "no token"."""
    path = os.environ.get(TOKEN_FILE_ENV)
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                token = f.readline().rstrip("\n").rstrip("\r")
        except (OSError, UnicodeDecodeError) as e:
            raise TaskmasterError(f"client token: {path}: {e}") from e
        if not token:
            raise TaskmasterError(f"client token: {path}: the token file is empty")
        return token
    return os.environ.get(TOKEN_ENV) or None


def timeout_ms(timeout: Optional[float]) -> Optional[int]:
    """A job time limit in seconds as the wire's ``timeout_ms``: None is the
    master's ``--job-timeout``, 0 no limit."""
    if timeout is None:
        return None
    if timeout < 0:
        raise ValueError(f"timeout must be >= 0, got {timeout!r}")
    return math.ceil(timeout * 1000)            # rounded up, as the Rust client does


def wait_ms(wait: Optional[float]) -> int:
    """`result`'s ``wait`` in seconds as the wire's ``wait_ms`` (None: 0)."""
    if wait is None:
        return 0
    if wait < 0:
        raise ValueError(f"wait must be >= 0, got {wait!r}")
    return round(wait * 1000)


def check_submit(module: str, data: Data, max_payload: int) -> None:
    """Raise `TooLarge` for a submit the master would close the connection for."""
    try:
        _wire.check_submit(module, data, b"", max_payload)
    except ValueError as e:
        raise TooLarge(str(e)) from None


def job_failed(instance: str, answer: Tuple[Any, ...]) -> JobFailed:
    """The exception for a `Failed` answer tuple."""
    _, _, job, reason, message, _ = answer
    return JobFailed(reason, message, f"{instance}-{job}",
                     "cancelled" if reason == "cancelled" else "failed")


def welcome(answer: Tuple[Any, ...]) -> Tuple[int, str]:
    """``(max_payload, instance)`` from the first answer, or raise `Refused`."""
    if answer[0] == REFUSED:
        raise Refused(answer[1])
    if answer[0] != WELCOME:
        raise ProtocolError(f"expected Welcome or Refused, got variant {answer[0]}")
    return answer[2], answer[3]


def reply_json(answer: Tuple[Any, ...]) -> Dict[str, Any]:
    """The JSON body of a `Stats` or `Reply` answer."""
    try:
        body = json.loads(answer[3] if answer[0] == REPLY else answer[2])
    except ValueError as e:
        raise ProtocolError(f"bad JSON from the master: {e}") from None
    if not isinstance(body, dict):
        raise ProtocolError(f"expected a JSON object from the master, got {body!r}")
    return body


def reply_error(answer: Tuple[Any, ...], body: Dict[str, Any]) -> TaskmasterError:
    """The exception for a `Reply` whose outcome is not ``ok``."""
    outcome = answer[2]
    if outcome == "failed":
        return JobFailed(body.get("reason", "failed"), body.get("message", ""),
                         body.get("id", ""), body.get("status", "failed"))
    if outcome == "conflict":
        return Conflict(f"job {body.get('id')} is {body.get('status')}", outcome, body)
    text = body.get("error", answer[3])
    if outcome == "not-found":
        return NotFound(text, outcome, body)
    return InvalidRequest(text, outcome, body)


def reply_ok(answer: Tuple[Any, ...]) -> Dict[str, Any]:
    """The JSON body of an ``ok`` `Reply`; any other outcome raised."""
    if answer[0] != REPLY:
        raise ProtocolError(f"expected a Reply, got variant {answer[0]}")
    body = reply_json(answer)
    if answer[2] != "ok":
        raise reply_error(answer, body)
    return body


def result_value(answer: Tuple[Any, ...]) -> bytes:
    """`result`'s return value from its `Reply`: the response bytes; a
    failed or cancelled job is `JobFailed`, an unfinished one `NotFinished`."""
    if answer[0] != REPLY:
        raise ProtocolError(f"expected a Reply, got variant {answer[0]}")
    if answer[2] == "ok":
        output: bytes = answer[4]
        return output
    body = reply_json(answer)
    if answer[2] == "conflict":
        raise NotFinished(f"job {body.get('id')} has not finished: it is {body.get('status')}",
                          "conflict", body)
    raise reply_error(answer, body)


# --------------------------------------------------------------------------- the client

class Client:
    """A blocking connection to a taskmaster master.

    ``Client(addr="127.0.0.1:7400", token=None, timeout=None)`` connects at
    once and says hello; it raises `Refused` if the master refuses (a bad
    or missing token, say) and `OSError`/`ConnectionLost` if it cannot
    connect. ``token`` defaults to the environment (`token_from_env`).

    ``timeout`` is the default **job time limit** in seconds for the jobs
    this client submits (each call may give its own): None leaves the
    master's ``--job-timeout``, 0 means no limit. A job over it fails with
    reason ``timeout``. ``connect_timeout`` bounds connecting and the hello.

    Every call blocks until its answer arrives. The client may be shared by
    threads: their requests go out on the one connection and each gets its
    own answer. If the connection is lost, every pending and later call
    raises `ConnectionLost` (a `ConnectionError`).

    Use it as a context manager, or call `close`.
    """

    def __init__(self, addr: Address = DEFAULT_ADDR, token: Optional[str] = None,
                 timeout: Optional[float] = None,
                 connect_timeout: float = CONNECT_TIMEOUT) -> None:
        if token is None:
            token = token_from_env()
        self.timeout = timeout
        self._tags = itertools.count(1)
        self._boxes: Dict[int, Deque[Tuple[Any, ...]]] = {}
        self._cond = threading.Condition()
        self._send_lock = threading.Lock()
        self._reading = False
        self._error: Optional[BaseException] = None
        self._rbuf = bytearray()
        host, port = parse_addr(addr)
        self._sock = socket.create_connection((host, port), connect_timeout)
        try:
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock.sendall(_wire.client_hello_frame(token))
            deadline = time.monotonic() + connect_timeout
            body = None
            while body is None:
                self._sock.settimeout(max(0.001, deadline - time.monotonic()))
                frames = self._recv(_wire.frame_limit(0))
                body = frames[0] if frames else None
            self.max_payload, self.instance = welcome(_wire.decode_answer(body))
            self._sock.settimeout(None)
        except socket.timeout:
            self._sock.close()
            raise TimeoutError(f"no welcome from the master within {connect_timeout} s") from None
        except BaseException:
            self._sock.close()
            raise

    # -- plumbing --------------------------------------------------------------------------

    def _recv(self, max_payload: int) -> List[bytes]:
        """One recv into the read buffer; the complete frames it holds now."""
        want = max(65536, min(_wire.needed(self._rbuf, max_payload), 1 << 22))
        chunk = self._sock.recv(want)
        if not chunk:
            raise ConnectionLost("the master closed the connection"
                                 + (" inside a frame" if self._rbuf else ""))
        self._rbuf += chunk
        return _wire.split_frames(self._rbuf, max_payload)

    def _fail(self, error: BaseException) -> None:
        """Mark the connection dead (lock held): every waiter raises."""
        if self._error is None:
            self._error = error
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._cond.notify_all()

    def _raise_dead(self) -> None:
        err = self._error
        if isinstance(err, TaskmasterError):
            raise err
        raise ConnectionLost(f"connection to the master lost: {err}") from err

    def _send(self, tag: int, frame: bytes) -> None:
        """Register ``tag`` for answers and send its request."""
        with self._cond:
            if self._error is not None:
                self._raise_dead()
            self._boxes[tag] = deque()
        try:
            with self._send_lock:
                self._sock.sendall(frame)
        except OSError as e:
            with self._cond:
                self._boxes.pop(tag, None)
                self._fail(ConnectionLost(f"connection to the master lost: {e}"))
            self._raise_dead()

    def _next(self, tag: int) -> Tuple[Any, ...]:
        """The next answer for ``tag``, reading the socket if no other thread is."""
        with self._cond:
            while True:
                box = self._boxes[tag]
                if box:
                    return box.popleft()
                if self._error is not None:
                    self._raise_dead()
                if self._reading:
                    self._cond.wait()
                    continue
                self._reading = True
                self._cond.release()
                frames: List[bytes] = []
                error: Optional[BaseException] = None
                try:
                    frames = self._recv(self.max_payload)
                except (OSError, TaskmasterError) as e:
                    error = e
                finally:
                    self._cond.acquire()
                    self._reading = False
                    self._cond.notify_all()
                try:
                    for body in frames:
                        answer = _wire.decode_answer(body)
                        if answer[0] in (WELCOME, REFUSED):
                            raise ProtocolError("Welcome or Refused after the hello")
                        owner = self._boxes.get(answer[1])
                        if owner is not None:    # else an abandoned request: drop it
                            owner.append(answer)
                except ProtocolError as e:
                    error = e
                if error is not None:
                    self._fail(error)

    def _call(self, frame_of: Any) -> Tuple[Any, ...]:
        """One request with exactly one answer."""
        tag = next(self._tags)
        self._send(tag, frame_of(tag))
        try:
            return self._next(tag)
        finally:
            with self._cond:
                self._boxes.pop(tag, None)

    def _submit(self, module: str, data: Data, timeout: Optional[float],
                detach: bool = False, start_later: bool = False,
                priority: str = "normal", retries: int = 0) -> int:
        if type(data) is not bytes:
            data = bytes(data)
        check_submit(module, data, self.max_payload)
        pri, retries = _wire.submit_options(priority, retries)
        limit = timeout_ms(self.timeout if timeout is None else timeout)
        tag = next(self._tags)
        self._send(tag, _wire.submit_frame(tag, module, data, b"", detach, start_later, limit,
                                           pri, retries))
        return tag

    # -- jobs ------------------------------------------------------------------------------

    def do(self, module: str, data: Data = b"", timeout: Optional[float] = None,
           priority: str = "normal", retries: int = 0) -> bytes:
        """Run one job and return its response (parts, if any, are dropped).

        ``timeout``: the job's time limit in seconds (default: the client's).
        ``priority``: ``"high"``, ``"normal"`` or ``"low"``: high jobs run
        before normal ones, normal before low. ``retries``: the job is
        idempotent: if its child dies or its time limit passes, it runs again
        on another child, up to this many more times (a job that has killed
        3 children fails ``error``, "poison job").
        Raises `JobFailed` if the job fails or the master refuses it, and
        `ValueError` for a bad ``priority`` or ``retries``.
        """
        tag = self._submit(module, data, timeout, priority=priority, retries=retries)
        try:
            while True:
                answer = self._next(tag)
                if answer[0] == COMPLETED:
                    output: bytes = answer[4]
                    return output
                if answer[0] == FAILED:
                    raise job_failed(self.instance, answer)
        finally:
            with self._cond:
                self._boxes.pop(tag, None)

    def stream(self, module: str, data: Data = b"", timeout: Optional[float] = None,
               priority: str = "normal",
               retries: int = 0) -> Generator[Union[Part, Response], None, None]:
        """Run one job and iterate over its parts, then its response.

        The job is submitted at once. Every item is a ``bytes`` subclass: a
        `Part` for each part, in order, then one `Response`, always last,
        with ``.final`` True (``item.final`` tells them apart) and
        ``.job_id``. A failed job raises `JobFailed` after its parts.
        Leaving the loop early abandons the answers (the job still runs).
        ``priority`` and ``retries`` as for `do` (a retried job sends its
        parts again).
        """
        tag = self._submit(module, data, timeout, priority=priority, retries=retries)
        return self._stream(tag)

    def _stream(self, tag: int) -> Generator[Union[Part, Response], None, None]:
        try:
            while True:
                answer = self._next(tag)
                if answer[0] == PART:
                    yield Part(answer[2])
                elif answer[0] == COMPLETED:
                    out = Response(answer[4])
                    out.job_id = f"{self.instance}-{answer[2]}"
                    yield out
                    return
                elif answer[0] == FAILED:
                    raise job_failed(self.instance, answer)
        finally:
            with self._cond:
                self._boxes.pop(tag, None)

    def submit_detached(self, module: str, data: Data = b"", start_later: bool = False,
                        timeout: Optional[float] = None, priority: str = "normal",
                        retries: int = 0) -> str:
        """Submit a job without waiting for it; return its id at once.

        With ``start_later`` the job is held until `start`. Its outcome is
        kept by the master: fetch it with `result`. A refusal (``overload``,
        ``unknown-module``, ...) raises `JobFailed`.
        """
        tag = self._submit(module, data, timeout, detach=True, start_later=start_later,
                           priority=priority, retries=retries)
        try:
            job_id: str = reply_ok(self._next(tag))["id"]
            return job_id
        finally:
            with self._cond:
                self._boxes.pop(tag, None)

    # -- job operations ---------------------------------------------------------------------

    def status(self, job_id: str) -> Dict[str, Any]:
        """What the master knows of a job: a dict with ``id``, ``module``,
        ``status``, ``created_at`` and, where they apply, ``reason``,
        ``message``, ``started_at``, ``finished_at``. Raises `NotFound`
        or `InvalidRequest`."""
        return reply_ok(self._call(lambda t: _wire.job_op_frame(_wire.STATUS, t, job_id)))

    def result(self, job_id: str, wait: Optional[float] = None) -> bytes:
        """A job's response, waiting up to ``wait`` seconds (at most 3600;
        None or 0: answer at once) for it to finish.

        Returns the response bytes. Raises `JobFailed` if the job failed or
        was cancelled, `NotFinished` (a `Conflict`) if it has not finished
        when the wait ends, `NotFound` if the master does not know it. (The
        CLI's ``taskmaster result`` exits 75 and HTTP answers 409 in the
        `NotFinished` case.) A result can be read any number of times.
        """
        ms = wait_ms(wait)
        return result_value(self._call(lambda t: _wire.result_frame(t, job_id, ms)))

    def start(self, job_id: str) -> Dict[str, Any]:
        """Queue a ``start-later`` job; returns ``{"id", "status": "queued"}``.
        Raises `Conflict` if it is not ``start-later``, `JobFailed` if it
        cannot join the queue now (it stays ``start-later``)."""
        return reply_ok(self._call(lambda t: _wire.job_op_frame(_wire.START, t, job_id)))

    def cancel(self, job_id: str) -> Dict[str, Any]:
        """Cancel an unfinished job; returns ``{"id", "status": "cancelled"}``.
        Raises `Conflict` if it has already finished."""
        return reply_ok(self._call(lambda t: _wire.job_op_frame(_wire.CANCEL, t, job_id)))

    def jobs(self, limit: int = 100, status: Optional[str] = None) -> List[Dict[str, Any]]:
        """Recent jobs, newest first, as `status` dicts; only those with
        ``status`` if given. ``limit``: 1 to 10000 (the answer must fit in
        64 KiB, so ask for a few hundred at most)."""
        body = reply_ok(self._call(lambda t: _wire.jobs_frame(t, limit, status or "")))
        return list(body.get("jobs", []))

    def stats(self) -> Dict[str, Any]:
        """Pool, queue and job counters (``pool``, ``queue``, ``jobs``,
        ``children``, ``uptime_secs``), as ``taskmaster stats`` prints them."""
        answer = self._call(_wire.stats_frame)
        if answer[0] != STATS_ANSWER:
            raise ProtocolError(f"expected a Stats answer, got variant {answer[0]}")
        return reply_json(answer)

    # -- lifetime ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection; calls still waiting raise `ConnectionLost`.
        Jobs already submitted keep running on the master."""
        with self._cond:
            self._fail(ConnectionLost("the client was closed"))
        self._sock.close()

    @property
    def closed(self) -> bool:
        """Whether the connection is closed or lost."""
        return self._error is not None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<taskmaster.Client instance={self.instance} {state}>"
