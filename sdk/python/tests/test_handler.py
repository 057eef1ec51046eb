"""Tests of `taskmaster.handler`: Python handler children under the real master.

Most tests start the real ``taskmaster`` binary (``TASKMASTER_BIN``) with
``--handler`` pointing at ``tests/handlers/modules.py`` (one module per
behaviour) or at ``examples/handler.py``, and talk to it with
`taskmaster.Client`. `ProtocolTest` plays the master itself, on a socket of
its own, to check the bytes a Python child sends and when: the hello,
answers in order with prefetched jobs, `unknown-module`, heartbeats while a
module blocks, a clipped exception message with `retire`, and the exit when
the master hangs up mid-job.

Run: ``python3 -m unittest discover -s sdk/python/tests -t sdk/python -p 'test_handler*.py' -v``
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
import unittest
from pathlib import Path
from typing import Dict, List, Optional, Tuple

try:
    from . import support
except ImportError:        # run from inside tests/
    import support

import taskmaster
from taskmaster import _wire

HANDLERS = Path(__file__).resolve().parent / "handlers"
MODULES = HANDLERS / "modules.py"
EXAMPLE = support.SDK_DIR / "examples" / "handler.py"
#: The children import `taskmaster` from the source tree, not an installed copy.
ENV = {"PYTHONPATH": str(support.SDK_DIR)}
#: A child that dies mid-job right after its hello is a start-up failure
#: (back-off) unless it has been up this long.
QUICK_START = ("--start-secs", "0.05")


def master(*args: str, handler: Path = MODULES, env: Optional[Dict[str, str]] = None,
           ready: bool = True) -> support.Master:
    return support.start_master(*args, handler=handler, env={**ENV, **(env or {})},
                                ready=ready)


def failure(client: taskmaster.Client, module: str, data: bytes = b"",
            timeout: Optional[float] = None) -> taskmaster.JobFailed:
    """The `JobFailed` a job raises (the test fails if it completes)."""
    try:
        out = client.do(module, data, timeout=timeout)
    except taskmaster.JobFailed as e:
        return e
    raise AssertionError(f"{module} completed with {out[:100]!r}; expected a failure")


def stat(pid: int) -> Optional[List[bytes]]:
    """The fields of ``/proc/PID/stat`` after the command name (state, ppid,
    ...), None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read()
    except OSError:
        return None
    return text[text.rindex(b")") + 2:].split()


def alive(pid: int) -> bool:
    """Whether ``pid`` is a process, not yet a zombie."""
    fields = stat(pid)
    return fields is not None and fields[0] != b"Z"


def children_of(ppid: int) -> List[int]:
    """Pids whose parent is ``ppid``."""
    pids = []
    for entry in os.listdir("/proc"):
        fields = stat(int(entry)) if entry.isdigit() else None
        if fields is not None and int(fields[1]) == ppid:
            pids.append(int(entry))
    return pids


def kill_survivors(pids: List[int]) -> None:
    """SIGKILLs those of ``pids`` still alive (after a failed test)."""
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


class Jobs(unittest.TestCase):
    """Jobs that leave their child in place, on one master with one child."""

    m: support.Master
    client: taskmaster.Client

    @classmethod
    def setUpClass(cls) -> None:
        cls.m = master("--pool-start", "1", "--pool-max", "1", "--max-payload", "1048576",
                       "--child-nofile", "256")
        cls.addClassCleanup(cls.m.stop)
        cls.client = taskmaster.Client(cls.m.addr)
        cls.addClassCleanup(cls.client.close)

    def pid(self) -> int:
        return int(self.client.do("pid"))

    def test_echo_round_trip(self) -> None:
        # 100 KB: the answer goes out uncopied; 700 KB: larger than the read buffer.
        for data in (b"hi", b"", bytes(range(256)) * 400, os.urandom(700_000)):
            self.assertEqual(self.client.do("echo", data), data)

    def test_parts_stream_before_the_response(self) -> None:
        items = list(self.client.stream("stream", b"3"))
        self.assertEqual(items, [b"1\n", b"2\n", b"3\n", b"done\n"])
        self.assertEqual([item.final for item in items], [False, False, False, True])

    def test_bytes_like_responses(self) -> None:
        self.assertEqual(self.client.do("sized", b"5"), bytes(5))        # a bytearray
        self.assertEqual(self.client.do("view", b"abc"), b"cba")         # a strided memoryview

    def test_bad_returns_fail_the_job_and_keep_the_child(self) -> None:
        before = self.pid()
        for module, words in (("text", "a str, not bytes"), ("nothing", "None, not bytes")):
            e = failure(self.client, module, b"x")
            self.assertEqual(e.reason, "failed")
            self.assertIn(words, e.message)
        e = failure(self.client, "fail", b"no such user")
        self.assertEqual((e.reason, e.message), ("failed", "no such user"))
        self.assertEqual(self.pid(), before)

    def test_sizes_are_bounded_by_max_payload(self) -> None:
        e = failure(self.client, "sized", b"1048577")
        self.assertEqual(e.reason, "failed")
        self.assertIn("response of 1048577 bytes exceeds the limit of 1048576", e.message)
        self.assertEqual(self.client.do("bigpart", b"1048577"),
                         b"ValueError: part of 1048577 bytes exceeds the limit of 1048576")
        self.assertEqual(self.client.do("bigpart", b"1048576"), b"sent")

    def test_parts_of_an_ended_job_refuse(self) -> None:
        self.assertEqual(self.client.do("keep"), b"kept")
        self.assertIn(b"RuntimeError: this job has ended", self.client.do("late"))

    def test_resource_limits_are_applied(self) -> None:
        self.assertEqual(self.client.do("limits"), b"nofile=256,256 core=0,0")


class Deaths(unittest.TestCase):
    """Jobs that end their child: each test has a master with one child."""

    def setUp(self) -> None:
        self.m = master("--pool-start", "1", "--pool-max", "1", *QUICK_START)
        self.addCleanup(self.m.stop)
        self.client = taskmaster.Client(self.m.addr)
        self.addCleanup(self.client.close)

    def test_exception_fails_the_job_and_replaces_the_child(self) -> None:
        first = int(self.client.do("pid"))
        e = failure(self.client, "boom", b"bad input")
        self.assertEqual((e.reason, e.message), ("failed", "ValueError: bad input"))
        second = int(self.client.do("pid"))
        self.assertNotEqual(second, first)
        support.wait_until(lambda: not alive(first), 5, f"the old child {first} to exit")
        self.m.wait_log("Traceback (most recent call last)")   # on stderr, the master's log

    def test_os_exit_fails_the_job_error(self) -> None:
        first = int(self.client.do("pid"))
        e = failure(self.client, "exit3")
        self.assertEqual(e.reason, "error")
        self.assertIn("exited with code 3", e.message)
        self.assertNotEqual(int(self.client.do("pid")), first)

    def test_job_timeout_kills_the_child(self) -> None:
        first = int(self.client.do("pid"))
        began = time.monotonic()
        e = failure(self.client, "sleep", b"30000", timeout=0.3)
        self.assertEqual(e.reason, "timeout")
        self.assertLess(time.monotonic() - began, 5)
        support.wait_until(lambda: not alive(first), 5, f"the timed-out child {first} to exit")


class Heartbeats(unittest.TestCase):
    def test_blocking_job_beats_and_a_frozen_child_is_killed(self) -> None:
        m = master("--pool-start", "1", "--pool-max", "1", "--heartbeat", "0.2", *QUICK_START)
        self.addCleanup(m.stop)
        with taskmaster.Client(m.addr) as client:
            pid = int(client.do("pid"))
            # 1.5 s blocked in the module: silent for 0.6 s would get it killed.
            self.assertEqual(int(client.do("sleep", b"1500")), pid)
            # A stopped process sends nothing: the master holds it to its beats
            # (without them, the time limit ends the job, and the test fails).
            e = failure(client, "freeze", timeout=5)
            self.assertEqual(e.reason, "error")
            self.assertIn("no heartbeat", e.message)


class DyingWithTheMaster(unittest.TestCase):
    def test_kill_9_of_the_master_ends_every_child_within_a_second(self) -> None:
        m = master("--pool-start", "3", "--pool-max", "3")
        self.addCleanup(m.stop)
        support.wait_until(lambda: len(children_of(m.pid)) == 3, 5, "three children")
        children = children_of(m.pid)
        self.addCleanup(kill_survivors, children)
        client = taskmaster.Client(m.addr)
        self.addCleanup(client.close)
        self.assertEqual(next(client.stream("block")), b"blocking")   # one child blocks in a module
        m.kill()
        began = time.monotonic()
        support.wait_until(lambda: not any(alive(pid) for pid in children), 2,
                           f"children {children} to exit")
        self.assertLess(time.monotonic() - began, 1.0)


class StartUp(unittest.TestCase):
    def run_by_hand(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(MODULES), *args], stdin=subprocess.DEVNULL,
                              capture_output=True, env={**os.environ, **ENV}, timeout=10)

    def test_started_by_hand_it_refuses(self) -> None:
        for args, words in (((), "the taskmaster master starts it"),
                            (("--port", "80"), "unknown flag '--port'"),
                            (("--connect",), "--connect needs a value"),
                            (("--connect", "x:1", "--child-id", "one", "--master-pid", "1"),
                             "--child-id: not a number")):
            with self.subTest(args=args):
                done = self.run_by_hand(*args)
                self.assertEqual(done.returncode, 2, done.stderr)
                self.assertIn(words, done.stderr.decode())

    def test_exec_dir_is_refused(self) -> None:
        done = self.run_by_hand("--list-modules", "--exec-dir", "/tmp")
        self.assertEqual(done.returncode, 2)
        self.assertIn("use the stock taskmaster-handler", done.stderr.decode())
        # The master asks the handler that question before it starts, and stops.
        with tempfile.TemporaryDirectory() as tmp:
            done = subprocess.run([str(support.TASKMASTER_BIN), "--listen", "127.0.0.1:0",
                                   "--handler", str(MODULES), "--exec-dir", tmp],
                                  stdin=subprocess.DEVNULL, capture_output=True,
                                  env={**os.environ, **ENV}, timeout=10)
        self.assertEqual(done.returncode, 2)
        self.assertIn("does not run --exec-dir modules", done.stderr.decode())

    def test_list_modules(self) -> None:
        done = self.run_by_hand("--list-modules")
        self.assertEqual(done.returncode, 0, done.stderr)
        names = done.stdout.decode().splitlines()
        self.assertEqual(names, sorted(names))
        self.assertTrue({"echo", "pid", "stream", "boom"} <= set(names), names)

    def test_orphan_exits_quietly(self) -> None:
        # Not the master's child (our pid is not its parent): it exits 0 at once.
        done = self.run_by_hand("--connect", "127.0.0.1:9", "--child-id", "1",
                                "--master-pid", "1")
        self.assertEqual((done.returncode, done.stderr), (0, b""))

    def test_start_raising_is_a_start_up_failure(self) -> None:
        m = master("--pool-start", "1", "--pool-max", "1", env={"TM_TEST_START_FAILS": "1"},
                   ready=False)
        self.addCleanup(m.stop)
        m.wait_log("start() failed: RuntimeError: the test asked start() to fail")
        m.wait_log("child failed to start")
        self.assertFalse(any("pool ready" in line for line in m.log_lines()))


class Example(unittest.TestCase):
    def test_example_handler(self) -> None:
        m = master("--pool-start", "1", "--pool-max", "2", handler=EXAMPLE)
        self.addCleanup(m.stop)
        with taskmaster.Client(m.addr) as client:
            self.assertEqual(client.do("upper", "héllo".encode()), "HÉLLO".encode())
            self.assertEqual(list(client.stream("wordcount", b"a b\n\nc d  e\n")),
                             [b"1: 2\n", b"2: 0\n", b"3: 3\n", b"total 5\n"])
            e = failure(client, "upper", b"\xff")
            self.assertEqual(e.reason, "failed")
            self.assertIn("not UTF-8", e.message)
        m.wait_log("example handler starting")


class FakeMaster:
    """Plays the master for one child: spawns it as the master does, with
    the secret on stdin, and reads and writes frames on its connection."""

    SECRET = bytes(range(32))

    def __init__(self, *flags: str, child_id: int = 7) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(10)
        port = self.listener.getsockname()[1]
        self.proc = subprocess.Popen(
            [str(MODULES), "--connect", f"127.0.0.1:{port}", "--child-id", str(child_id),
             "--master-pid", str(os.getpid()), *flags],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env={**os.environ, **ENV})
        assert self.proc.stdin is not None
        self.proc.stdin.write(self.SECRET)
        self.proc.stdin.close()
        self.sock, _ = self.listener.accept()
        self.sock.settimeout(10)
        self.reader = self.sock.makefile("rb")

    def frame(self) -> _wire.Reader:
        body = _wire.read_frame(self.reader, _wire.DEFAULT_MAX_PAYLOAD)
        assert body is not None, "the child closed its connection"
        return _wire.Reader(body)

    def answer(self) -> Tuple[int, _wire.Reader]:
        """The next frame other than a heartbeat: (variant, reader after it)."""
        while True:
            r = self.frame()
            kind = r.variant()
            if kind != 3:
                return kind, r

    @staticmethod
    def job(job: int, module: str, data: bytes) -> bytes:
        return _wire.encode_frame(_wire.Writer().variant(0).u64(job).str(module).getvalue(),
                                  data)

    def hang_up(self) -> None:
        """Closes the connection (the file object too: it holds the socket open)."""
        self.reader.close()
        self.sock.close()

    def close(self) -> None:
        self.hang_up()
        self.listener.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        assert self.proc.stderr is not None
        self.proc.stderr.close()


class ProtocolTest(unittest.TestCase):
    def setUp(self) -> None:
        self.fake = FakeMaster("--max-payload", "65536", "--heartbeat-ms", "50")
        self.addCleanup(self.fake.close)

    def test_hello_is_byte_exact(self) -> None:
        r = self.fake.frame()
        self.assertEqual(r.variant(), 0)                       # Hello::Handler
        self.assertEqual(r.u32(), _wire.PROTOCOL_VERSION)
        self.assertEqual(r.u64(), 7)                           # child_id
        self.assertEqual(r.u32(), self.fake.proc.pid)          # the spawned process says hello
        self.assertEqual(r.raw(32), FakeMaster.SECRET)
        names = r.seq(r.str)
        self.assertEqual(names, sorted(names))
        self.assertIn("echo", names)
        r.done()

    def test_prefetched_jobs_are_answered_in_order(self) -> None:
        self.fake.frame()                                      # the hello
        self.fake.sock.sendall(self.fake.job(1, "stream", b"2") + self.fake.job(2, "echo", b"hi")
                               + self.fake.job(3, "nope", b""))
        got: List[Tuple[object, ...]] = []
        for _ in range(5):
            kind, r = self.fake.answer()
            job = r.u64()
            if kind == 0:                                      # Part
                got.append(("part", job, r.rest()))
            elif kind == 1:                                    # Done
                got.append(("done", job, r.bool(), r.rest()))
            else:                                              # Failed
                self.assertEqual(kind, 2)
                got.append(("failed", job, _wire.REASONS[r.variant()], r.str(), r.bool()))
                r.done()
        self.assertEqual(got, [
            ("part", 1, b"1\n"), ("part", 1, b"2\n"), ("done", 1, False, b"done\n"),
            ("done", 2, False, b"hi"),
            ("failed", 3, "unknown-module", "this child does not run module 'nope'", False),
        ])

    def test_heartbeats_flow_while_a_module_blocks(self) -> None:
        self.fake.frame()
        self.fake.sock.sendall(self.fake.job(1, "sleep", b"500"))
        beats = 0
        while True:
            r = self.fake.frame()
            kind = r.variant()
            if kind != 3:
                break
            r.done()
            beats += 1
        self.assertEqual(kind, 1)
        self.assertGreaterEqual(beats, 5, "heartbeats every 50 ms during a 0.5 s job")

    def test_exception_answers_failed_retire_then_exits_0(self) -> None:
        self.fake.frame()
        self.fake.sock.sendall(self.fake.job(1, "boom", b"x" * 10000))
        kind, r = self.fake.answer()
        self.assertEqual((kind, r.u64(), r.variant()), (2, 1, _wire.REASON_INDEX["failed"]))
        message = r.str()
        self.assertEqual(message, "ValueError: " + "x" * (8192 - 12) + "...")   # clipped
        self.assertTrue(r.bool())                               # retire
        self.assertEqual(self.fake.proc.wait(10), 0)

    def test_hang_up_ends_the_child_at_once(self) -> None:
        self.fake.frame()
        self.fake.sock.sendall(self.fake.job(1, "block", b""))
        kind, r = self.fake.answer()
        self.assertEqual((kind, r.u64(), r.rest()), (0, 1, b"blocking"))   # the module blocks
        began = time.monotonic()
        self.fake.hang_up()
        self.assertEqual(self.fake.proc.wait(10), 0)
        self.assertLess(time.monotonic() - began, 1.0)


if __name__ == "__main__":
    unittest.main()
