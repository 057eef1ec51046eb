"""Test support: start the real taskmaster master and wait on conditions.

What lives here:

* `sys.path` set-up so the tests import `taskmaster` from `sdk/python`
  without installing it.
* `start_master(...)` / `Master`: runs ``taskmaster --listen 127.0.0.1:0
  --handler HANDLER ARGS...``, captures its log (stderr) in a thread,
  waits for its ``listening addr=...`` line (with a deadline) and stops it
  again (SIGTERM, then SIGKILL past a deadline).
* `wait_until(cond, timeout, what)`: poll a condition with a deadline.
* `FakeMaster`: a socket that plays a master breaking the protocol, for
  the tests of what a client does then.

Binaries: ``TASKMASTER_BIN`` (default ``<repo>/target/debug/taskmaster``)
and ``TASKMASTER_HANDLER_BIN`` (default ``<repo>/target/debug/taskmaster-handler``,
the stock handler: echo, sleep, pid, fail, crash, sha256, count).
Set ``TASKMASTER_TEST_ECHO_LOG=1`` to copy the master's log to stderr.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Union

SDK_DIR = Path(__file__).resolve().parent.parent          # sdk/python
REPO_DIR = SDK_DIR.parent.parent                           # the repository root
if str(SDK_DIR) not in sys.path:
    sys.path.insert(0, str(SDK_DIR))

from taskmaster import _wire  # noqa: E402  (after the sys.path set-up)

TASKMASTER_BIN = Path(os.environ.get("TASKMASTER_BIN", REPO_DIR / "target/debug/taskmaster"))
HANDLER_BIN = Path(os.environ.get("TASKMASTER_HANDLER_BIN",
                                  REPO_DIR / "target/debug/taskmaster-handler"))

#: How long to wait for the master to say it listens, or to exit.
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


def wait_until(cond: Callable[[], object], timeout: float = 10.0, what: str = "condition",
               interval: float = 0.01) -> object:
    """Poll ``cond()`` until it returns something truthy; return that value.

    Raises `AssertionError` naming ``what`` if ``timeout`` seconds pass
    first. The poll interval grows from ``interval`` to 0.1 s.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        now = time.monotonic()
        if now >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(min(interval, deadline - now))
        interval = min(interval * 2, 0.1)


class Master:
    """A running master process (see `start_master`)."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], want_http: bool) -> None:
        self.argv: List[str] = list(argv)
        self._lines: List[str] = []
        self._eof = False
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, env=dict(env))
        self.pid: int = self.proc.pid
        self._thread = threading.Thread(target=self._pump, name=f"master-{self.pid}-log",
                                        daemon=True)
        self._thread.start()
        try:
            self.addr: str = self._addr_in("listening")
            self.http_addr: Optional[str] = (self._addr_in("HTTP API listening")
                                             if want_http else None)
        except BaseException:
            self.stop()
            raise

    def _pump(self) -> None:
        echo = bool(os.environ.get("TASKMASTER_TEST_ECHO_LOG"))
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if echo:
                print(f"master {self.pid}: {line}", file=sys.stderr)
            with self._cond:
                self._lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def _addr_in(self, what: str) -> str:
        line = self.wait_log(what, START_TIMEOUT)
        try:
            return line.split("addr=", 1)[1].split()[0]
        except IndexError:
            raise AssertionError(f"no addr= in the {what!r} line: {line!r}") from None

    def log_lines(self) -> List[str]:
        """Every log line so far."""
        with self._cond:
            return list(self._lines)

    def wait_log(self, substr: str, timeout: float = 10.0) -> str:
        """Wait for a log line containing ``substr`` and return it.

        Raises `AssertionError` with the log so far if ``timeout`` seconds
        pass, or the master's stderr closes, before such a line appears.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self._lines:
                    if substr in line:
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or self._eof:
                    log = "\n".join(self._lines[-50:])
                    why = "its log ended" if self._eof else f"{timeout} s passed"
                    raise AssertionError(
                        f"no log line with {substr!r} ({why}); log so far:\n{log}")
                self._cond.wait(left)

    def wait_ready(self, timeout: float = 10.0) -> "Master":
        """Wait until the pool is ready (its ``pool ready`` line)."""
        self.wait_log("pool ready", timeout)
        return self

    def alive(self) -> bool:
        """Whether the master process is still running."""
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the master and reap it (its children die with it)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(STOP_TIMEOUT)

    def stop(self, timeout: float = STOP_TIMEOUT) -> Optional[int]:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL; return the exit status."""
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        self._thread.join(timeout)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return self.proc.returncode

    def __enter__(self) -> "Master":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class FakeMaster:
    """A listening socket that plays a broken master: it answers the hello
    with ``welcome`` (if given), then sends ``after`` once a request comes.
    Without ``welcome`` it accepts nothing (the kernel completes the TCP
    handshake) and never answers."""

    def __init__(self, welcome: bytes = b"", after: bytes = b"") -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.addr = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.welcome, self.after = welcome, after
        self.thread = threading.Thread(target=self._serve, daemon=True)
        if welcome:
            self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            _wire.read_frame(conn, 0)                        # the hello
            conn.sendall(self.welcome)
            if _wire.read_frame(conn, 1 << 20) is not None:  # a request
                conn.sendall(self.after)
                conn.recv(1)                                 # until the client closes

    def close(self) -> None:
        """Stop listening and wait for the serving thread."""
        self.sock.close()
        if self.thread.is_alive():
            self.thread.join(5)


#: A `Welcome` with max_payload 1024 and instance "000000000000", as a frame.
WELCOME = _wire.encode_frame(_wire.Writer().variant(0).u32(2).u64(1024).str("0" * 12).getvalue())


def start_master(*args: str, handler: Union[str, "os.PathLike[str]", None] = None,
                 env: Optional[Mapping[str, str]] = None, http: bool = False,
                 ready: bool = True) -> Master:
    """Start ``taskmaster --listen 127.0.0.1:0 --handler HANDLER ARGS...``.

    ``handler`` defaults to the stock handler. Every ``TASKMASTER_*``
    variable of this process is removed from the master's environment (so
    a developer's token or pool size cannot leak in); ``env`` adds
    variables on top. ``http=True`` adds ``--http 127.0.0.1:0`` and fills
    ``.http_addr``. With ``ready`` (the default) this also waits for the
    ``pool ready`` line, so the first job does not race the children.
    """
    if not TASKMASTER_BIN.exists():
        raise FileNotFoundError(
            f"{TASKMASTER_BIN} is missing: build it (cargo build) or set TASKMASTER_BIN")
    argv = [str(TASKMASTER_BIN), "--listen", "127.0.0.1:0",
            "--handler", str(handler if handler is not None else HANDLER_BIN)]
    if http:
        argv += ["--http", "127.0.0.1:0"]
    argv += list(args)
    child_env: Dict[str, str] = {k: v for k, v in os.environ.items()
                                 if not k.startswith("TASKMASTER_")}
    child_env["RUST_LOG"] = os.environ.get("TASKMASTER_TEST_RUST_LOG", "info")
    if env:
        child_env.update(env)
    master = Master(argv, child_env, http)
    if ready:
        try:
            master.wait_ready()
        except BaseException:
            master.stop()
            raise
    return master
