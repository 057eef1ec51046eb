"""Tests of the blocking `taskmaster.Client` against the real master.

Each test class starts its own ``taskmaster`` (``TASKMASTER_BIN``) with the
stock handler (echo, sleep, pid, fail, crash, sha256, count) on a free
port; no mocks. Also runs ``examples/client.py`` as a subprocess.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from typing import Any, Dict, List
from unittest import mock

try:
    from . import support
except ImportError:        # run from inside tests/
    import support

import taskmaster
from taskmaster import _wire

ID = re.compile(r"^[0-9a-f]{12}-[1-9][0-9]*$")


class Jobs(unittest.TestCase):
    """Waiting submits and their failures, on one shared master."""

    master: support.Master
    client: taskmaster.Client

    @classmethod
    def setUpClass(cls) -> None:
        cls.master = support.start_master("--pool-start", "2", "--start-secs", "0.05")
        cls.client = taskmaster.Client(cls.master.addr)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.client.close()
        cls.master.stop()

    def failure(self, module: str, data: bytes = b"", **kw: Any) -> taskmaster.JobFailed:
        with self.assertRaises(taskmaster.JobFailed) as cm:
            self.client.do(module, data, **kw)
        self.assertRegex(cm.exception.job_id, ID)
        self.assertTrue(cm.exception.job_id.startswith(self.client.instance + "-"))
        return cm.exception

    def test_echo(self) -> None:
        self.assertEqual(self.client.do("echo", b"hello"), b"hello")
        self.assertEqual(self.client.do("echo", bytearray(b"ba")), b"ba")
        self.assertRegex(self.client.instance, r"^[0-9a-f]{12}$")
        self.assertEqual(self.client.max_payload, 16 * 1024 * 1024)

    def test_binary_payloads(self) -> None:
        big = os.urandom(1 << 20)
        for data in (b"", bytes(range(256)), b"\x00" * 3, big):
            with self.subTest(len=len(data)):
                self.assertEqual(self.client.do("echo", data), data)
        self.assertEqual(self.client.do("sha256", big).decode(), hashlib.sha256(big).hexdigest())

    def test_stream(self) -> None:
        items = list(self.client.stream("count", b"5"))
        self.assertEqual(items, [b"1\n", b"2\n", b"3\n", b"4\n", b"5\n", b"done\n"])
        self.assertEqual([i.final for i in items], [False] * 5 + [True])
        self.assertIsInstance(items[0], taskmaster.Part)
        self.assertIsInstance(items[-1], taskmaster.Response)
        self.assertRegex(items[-1].job_id, ID)
        self.assertEqual(self.client.status(items[-1].job_id)["status"], "completed")

    def test_stream_left_early(self) -> None:
        """Answers of an abandoned stream are dropped; the connection goes on."""
        stream = self.client.stream("count", b"50")
        self.assertEqual(next(stream), b"1\n")
        stream.close()
        self.assertEqual(self.client.do("echo", b"after"), b"after")

    def test_do_drops_parts(self) -> None:
        self.assertEqual(self.client.do("count", b"3"), b"done\n")

    def test_fail(self) -> None:
        e = self.failure("fail", b"it broke")
        self.assertEqual((e.reason, e.message, e.status), ("failed", "it broke", "failed"))
        self.assertIn("it broke", str(e))
        self.assertEqual(self.client.status(e.job_id)["reason"], "failed")

    def test_crash(self) -> None:
        e = self.failure("crash")
        self.assertEqual(e.reason, "error")
        self.assertIn("child", e.message)

    def test_timeout(self) -> None:
        started = time.monotonic()
        e = self.failure("sleep", b"10000", timeout=0.3)
        self.assertEqual(e.reason, "timeout")
        self.assertLess(time.monotonic() - started, 5)

    def test_retries_end_in_a_poison_job(self) -> None:
        with self.assertRaises(taskmaster.JobFailed) as ctx:
            self.client.do("crash", b"", retries=5)
        self.assertEqual(ctx.exception.reason, "error")
        self.assertTrue(ctx.exception.message.startswith("poison job"), ctx.exception.message)
        self.assertGreaterEqual(self.client.stats()["jobs"]["retried"], 2)

    def test_priority_and_retries_are_checked(self) -> None:
        self.assertEqual(self.client.do("echo", b"hi", priority="high", retries=1), b"hi")
        self.assertEqual(self.client.do("echo", b"lo", priority="low"), b"lo")
        with self.assertRaises(ValueError):
            self.client.do("echo", b"x", priority="urgent")
        with self.assertRaises(ValueError):
            self.client.do("echo", b"x", retries=101)

    def test_unknown_module(self) -> None:
        e = self.failure("no-such-module", b"x")
        self.assertEqual(e.reason, "unknown-module")
        self.assertIn("no-such-module", e.message)

    def test_threads_share_one_client(self) -> None:
        errors: List[BaseException] = []

        def work(n: int) -> None:
            try:
                for i in range(40):
                    data = f"{n}:{i}".encode()
                    assert self.client.do("echo", data) == data
                    if i % 10 == 0:
                        assert list(self.client.stream("count", b"2"))[-1] == b"done\n"
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        self.assertEqual(errors, [])

    def test_too_large(self) -> None:
        with self.assertRaises(taskmaster.TooLarge):
            self.client.do("echo", bytes(self.client.max_payload + 1))
        self.assertEqual(self.client.do("echo", b"still open"), b"still open")


class JobOperations(unittest.TestCase):
    """Detached and start-later jobs, status, result, start, cancel, stats."""

    master: support.Master
    client: taskmaster.Client

    @classmethod
    def setUpClass(cls) -> None:
        cls.master = support.start_master()
        cls.client = taskmaster.Client(cls.master.addr)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.client.close()
        cls.master.stop()

    def test_detached(self) -> None:
        job_id = self.client.submit_detached("sleep", b"200")
        self.assertRegex(job_id, ID)
        self.assertIn(self.client.status(job_id)["status"], ("queued", "processing"))
        pid = self.client.result(job_id, wait=10)
        self.assertTrue(pid.isdigit(), pid)
        view = self.client.status(job_id)
        self.assertEqual((view["id"], view["module"], view["status"]),
                         (job_id, "sleep", "completed"))
        self.assertIn("finished_at", view)
        self.assertEqual(self.client.result(job_id), pid)      # read it again

    def test_detached_failure(self) -> None:
        job_id = self.client.submit_detached("fail", b"nope")
        with self.assertRaises(taskmaster.JobFailed) as cm:
            self.client.result(job_id, wait=10)
        self.assertEqual((cm.exception.reason, cm.exception.message, cm.exception.job_id),
                         ("failed", "nope", job_id))

    def test_start_later(self) -> None:
        job_id = self.client.submit_detached("echo", b"later", start_later=True)
        self.assertEqual(self.client.status(job_id)["status"], "start-later")
        with self.assertRaises(taskmaster.NotFinished) as cm:
            self.client.result(job_id)
        self.assertEqual((cm.exception.status, cm.exception.job_id), ("start-later", job_id))
        self.assertEqual(self.client.start(job_id), {"id": job_id, "status": "queued"})
        self.assertEqual(self.client.result(job_id, wait=10), b"later")
        with self.assertRaises(taskmaster.Conflict) as conflict:
            self.client.start(job_id)
        self.assertEqual(conflict.exception.status, "completed")

    def test_cancel_start_later(self) -> None:
        job_id = self.client.submit_detached("echo", b"never", start_later=True)
        self.assertEqual(self.client.cancel(job_id), {"id": job_id, "status": "cancelled"})
        self.assertEqual(self.client.status(job_id)["status"], "cancelled")
        with self.assertRaises(taskmaster.JobFailed) as cm:
            self.client.result(job_id, wait=1)
        self.assertEqual((cm.exception.reason, cm.exception.status), ("cancelled", "cancelled"))
        with self.assertRaises(taskmaster.Conflict):
            self.client.cancel(job_id)

    def test_cancel_running_job_fails_its_waiter(self) -> None:
        """A waiting `do` learns of a cancel made on another connection."""
        box: Dict[str, Any] = {}

        def waiter() -> None:
            with taskmaster.Client(self.master.addr) as other:
                try:
                    other.do("sleep", b"20000")
                except taskmaster.JobFailed as e:
                    box["error"] = e

        t = threading.Thread(target=waiter)
        t.start()
        running = support.wait_until(
            lambda: [j for j in self.client.jobs(20, "processing") if j["module"] == "sleep"],
            10, "the sleep job to be processing")
        self.client.cancel(running[0]["id"])
        t.join(10)
        self.assertEqual(box["error"].reason, "cancelled")

    def test_not_found_and_invalid(self) -> None:
        with self.assertRaises(taskmaster.NotFound):
            self.client.status("000000000000-99999")
        with self.assertRaises(taskmaster.InvalidRequest):
            self.client.status("not-an-id")
        with self.assertRaises(taskmaster.InvalidRequest):
            self.client.jobs(0)
        self.assertIsInstance(self.client.jobs(5), list)

    def test_stats(self) -> None:
        stats = self.client.stats()
        for key in ("start", "max", "size", "busy", "idle", "starting"):
            self.assertIsInstance(stats["pool"][key], int, key)
        self.assertEqual(stats["pool"]["max"], 4)
        self.assertIn("submitted", stats["jobs"])
        self.assertIn("len", stats["queue"])


class Overload(unittest.TestCase):
    def test_overload(self) -> None:
        with support.start_master("--pool-start", "1", "--pool-max", "1", "--job-max", "1") as m, \
                taskmaster.Client(m.addr) as client:
            outcomes: List[str] = []
            lock = threading.Lock()

            def one() -> None:
                try:
                    client.do("sleep", b"300")
                    result = "ok"
                except taskmaster.JobFailed as e:
                    result = e.reason
                with lock:
                    outcomes.append(result)

            threads = [threading.Thread(target=one) for _ in range(5)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(20)
            self.assertEqual(len(outcomes), 5)
            self.assertIn("overload", outcomes)
            self.assertIn("ok", outcomes)
            self.assertEqual(set(outcomes), {"ok", "overload"})


class Token(unittest.TestCase):
    master: support.Master
    token_file: str

    @classmethod
    def setUpClass(cls) -> None:
        fd, cls.token_file = tempfile.mkstemp(prefix="tm-token-")
        with os.fdopen(fd, "w") as f:
            f.write("s3cret\nsecond line ignored\n")
        cls.master = support.start_master("--token-file", cls.token_file)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.master.stop()
        os.unlink(cls.token_file)

    def env(self, **values: str) -> Any:
        """Patch os.environ: no TASKMASTER_* but ``values``."""
        clean = {k: v for k, v in os.environ.items() if not k.startswith("TASKMASTER_")}
        return mock.patch.dict(os.environ, {**clean, **values}, clear=True)

    def test_refused_without_token(self) -> None:
        with self.env(), self.assertRaises(taskmaster.Refused) as cm:
            taskmaster.Client(self.master.addr)
        self.assertIn("token", cm.exception.message)

    def test_refused_wrong_token(self) -> None:
        with self.env(), self.assertRaises(taskmaster.Refused):
            taskmaster.Client(self.master.addr, token="wrong")

    def test_token_argument(self) -> None:
        with self.env(TASKMASTER_TOKEN="wrong"), \
                taskmaster.Client(self.master.addr, token="s3cret") as c:
            self.assertEqual(c.do("echo", b"in"), b"in")

    def test_token_file_env(self) -> None:
        # the file comes before TASKMASTER_TOKEN, as in the Rust CLI
        with self.env(TASKMASTER_TOKEN_FILE=self.token_file, TASKMASTER_TOKEN="wrong"), \
                taskmaster.Client(self.master.addr) as c:
            self.assertEqual(c.do("echo", b"in"), b"in")

    def test_token_env(self) -> None:
        with self.env(TASKMASTER_TOKEN="s3cret"), taskmaster.Client(self.master.addr) as c:
            self.assertEqual(c.do("echo", b"in"), b"in")

    def test_empty_token_file_is_an_error(self) -> None:
        with tempfile.NamedTemporaryFile("w") as f, self.env(TASKMASTER_TOKEN_FILE=f.name), \
                self.assertRaises(taskmaster.TaskmasterError) as cm:
            taskmaster.Client(self.master.addr)
        self.assertIn("empty", str(cm.exception))


class MasterGoesAway(unittest.TestCase):
    def test_killed_mid_job(self) -> None:
        m = support.start_master()
        try:
            client = taskmaster.Client(m.addr)
            errors: List[BaseException] = []

            def call(fn: Any) -> None:
                try:
                    fn()
                except BaseException as e:  # noqa: BLE001 - checked below
                    errors.append(e)

            threads = [threading.Thread(target=call, args=(lambda: client.do("sleep", b"30000"),)),
                       threading.Thread(target=call,
                                        args=(lambda: list(client.stream("sleep", b"30000")),)),
                       threading.Thread(target=call,
                                        args=(lambda: client.result(
                                            client.submit_detached("sleep", b"30000"), 60),))]
            for t in threads:
                t.start()
            support.wait_until(lambda: client.stats()["pool"]["busy"] >= 2, 10, "busy children")
            started = time.monotonic()
            m.kill()
            for t in threads:
                t.join(10)
                self.assertFalse(t.is_alive(), "a call hangs after the master died")
            self.assertLess(time.monotonic() - started, 5)
            self.assertEqual(len(errors), 3, errors)
            for e in errors:
                self.assertIsInstance(e, taskmaster.ConnectionLost)
                self.assertIsInstance(e, ConnectionError)
            with self.assertRaises(taskmaster.ConnectionLost):
                client.do("echo", b"x")
            self.assertTrue(client.closed)
            client.close()
        finally:
            m.stop()

    def test_connect_to_nothing(self) -> None:
        m = support.start_master()
        addr = m.addr
        m.stop()
        with self.assertRaises(ConnectionError):
            taskmaster.Client(addr)


class BrokenMaster(unittest.TestCase):
    """What the client does when the peer breaks the protocol (a fake peer)."""

    def test_oversized_frame_is_a_protocol_error(self) -> None:
        fake = support.FakeMaster(support.WELCOME, b"\xff\xff\xff\xff")
        try:
            with taskmaster.Client(fake.addr) as c:
                self.assertEqual(c.max_payload, 1024)
                with self.assertRaises(taskmaster.ProtocolError) as cm:
                    c.do("echo", b"x")
                self.assertIn("exceeds the limit", str(cm.exception))
                with self.assertRaises(taskmaster.ProtocolError):
                    c.stats()
        finally:
            fake.close()

    def test_unknown_variant_is_a_protocol_error(self) -> None:
        fake = support.FakeMaster(support.WELCOME, _wire.encode_frame(b"\x09\x00\x00\x00" + b"\x01" + b"\x00" * 7))
        try:
            with taskmaster.Client(fake.addr) as c, self.assertRaises(taskmaster.ProtocolError):
                c.do("echo", b"x")
        finally:
            fake.close()

    def test_no_welcome_times_out(self) -> None:
        fake = support.FakeMaster()                  # accepts (in the kernel) but never answers
        try:
            started = time.monotonic()
            with self.assertRaises(TimeoutError):
                taskmaster.Client(fake.addr, connect_timeout=0.3)
            self.assertLess(time.monotonic() - started, 3)
        finally:
            fake.close()


class Example(unittest.TestCase):
    def test_example_client(self) -> None:
        with support.start_master() as m:
            env = {k: v for k, v in os.environ.items() if not k.startswith("TASKMASTER_")}
            env["PYTHONPATH"] = str(support.SDK_DIR)
            run = subprocess.run(
                [sys.executable, str(support.SDK_DIR / "examples" / "client.py"), m.addr],
                capture_output=True, text=True, timeout=30, env=env)
        self.assertEqual(run.returncode, 0, run.stderr)
        lines = run.stdout.splitlines()
        self.assertEqual(lines[0], "echo: b'hello'")
        self.assertIn("part: b'1\\n'", lines)
        self.assertIn("response: b'done\\n'", lines)
        self.assertTrue(any(re.match(r"failed: failed: bad input \(job [0-9a-f]{12}-\d+\)$", l)
                            for l in lines), lines)
        self.assertTrue(any(re.match(r"detached [0-9a-f]{12}-\d+: b'later'$", l)
                            for l in lines), lines)
        self.assertTrue(any(l.startswith("pool: ") for l in lines), lines)
        self.assertIn("aio: 100 jobs ok", lines)


if __name__ == "__main__":
    unittest.main()
