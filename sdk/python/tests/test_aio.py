"""Tests of `taskmaster.aio.Client` against the real master.

Many jobs in flight on one connection, answers matched by tag, streams
with flow control, every reason word, job operations, a refused hello,
and a master killed mid-job (every pending call must raise, not hang).
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import tempfile
import time
import unittest
from typing import Any, Awaitable, Callable, TypeVar

try:
    from . import support
except ImportError:        # run from inside tests/
    import support

import taskmaster
import taskmaster.aio
from taskmaster.aio import Client

ID = re.compile(r"^[0-9a-f]{12}-[1-9][0-9]*$")
T = TypeVar("T")


async def wait_for(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``cond()`` from the event loop until it is truthy, with a deadline."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.1)


class AioTest(unittest.TestCase):
    """Runs each test coroutine on a fresh event loop with a deadline."""

    def run_async(self, coro: Awaitable[T], timeout: float = 30) -> T:
        return asyncio.run(asyncio.wait_for(coro, timeout))


class Jobs(AioTest):
    master: support.Master

    @classmethod
    def setUpClass(cls) -> None:
        cls.master = support.start_master("--job-max", "5000", "--start-secs", "0.05")

    @classmethod
    def tearDownClass(cls) -> None:
        cls.master.stop()

    def test_echo_and_binary(self) -> None:
        async def main() -> None:
            async with Client(self.master.addr) as c:
                self.assertRegex(c.instance, r"^[0-9a-f]{12}$")
                big = os.urandom(1 << 20)
                for data in (b"hello", b"", bytes(range(256)), big):
                    self.assertEqual(await c.do("echo", data), data)
        self.run_async(main())

    def test_thousand_in_flight_on_one_connection(self) -> None:
        async def main() -> None:
            c = await Client.connect(self.master.addr)
            try:
                inputs = [f"job {i} ".encode() * random.randint(1, 20) for i in range(1000)]
                tasks = [asyncio.ensure_future(c.do("echo", d)) for d in inputs]
                await asyncio.sleep(0)              # every submit is now written
                self.assertEqual(len(c._pending), 1000)
                outputs = await asyncio.gather(*tasks)
                self.assertEqual(outputs, inputs)
                self.assertEqual(c._pending, {})
                # mixed with slower jobs answered out of order
                slow = asyncio.ensure_future(c.do("sleep", b"300"))
                fast = await asyncio.gather(*(c.do("echo", b"%d" % i) for i in range(50)))
                self.assertFalse(slow.done())
                self.assertEqual(fast, [b"%d" % i for i in range(50)])
                self.assertTrue((await slow).isdigit())
            finally:
                await c.close()
        self.run_async(main())

    def test_stream(self) -> None:
        async def main() -> None:
            async with Client(self.master.addr) as c:
                items = [item async for item in c.stream("count", b"5")]
                self.assertEqual(items, [b"1\n", b"2\n", b"3\n", b"4\n", b"5\n", b"done\n"])
                self.assertEqual([i.final for i in items], [False] * 5 + [True])
                self.assertRegex(items[-1].job_id, ID)
                # streams and plain jobs interleaved on one connection
                streams = [c.stream("count", b"%d" % n) for n in range(1, 20)]
                echoes = asyncio.gather(*(c.do("echo", b"e%d" % i) for i in range(20)))
                for n, stream in enumerate(streams, 1):
                    got = [bytes(i) async for i in stream]
                    self.assertEqual(got, [b"%d\n" % k for k in range(1, n + 1)] + [b"done\n"])
                self.assertEqual(await echoes, [b"e%d" % i for i in range(20)])
        self.run_async(main())

    def test_stream_flow_control(self) -> None:
        """A stream read late pauses the socket, then everything resumes."""
        async def main() -> None:
            async with Client(self.master.addr) as c:
                n = taskmaster.aio.STREAM_HIGH_WATER * 4
                stream = c.stream("count", b"%d" % n)
                transport = c._transport
                assert transport is not None
                await wait_for(lambda: not transport.is_reading(), 10, "reading to pause")
                items = [bytes(i) async for i in stream]
                self.assertEqual(len(items), n + 1)
                self.assertEqual(items[-1], b"done\n")
                self.assertTrue(transport.is_reading())
                self.assertEqual(await c.do("echo", b"after"), b"after")
                # an abandoned stream releases the socket too
                stream = c.stream("count", b"%d" % n)
                await wait_for(lambda: not transport.is_reading(), 10, "reading to pause")
                await stream.aclose()
                self.assertTrue(transport.is_reading())
                self.assertEqual(await c.do("echo", b"again"), b"again")
        self.run_async(main())

    def test_reasons(self) -> None:
        async def main() -> None:
            async with Client(self.master.addr) as c:
                async def reason(module: str, data: bytes, **kw: Any) -> taskmaster.JobFailed:
                    with self.assertRaises(taskmaster.JobFailed) as cm:
                        await c.do(module, data, **kw)
                    self.assertRegex(cm.exception.job_id, ID)
                    return cm.exception
                e = await reason("fail", b"boom")
                self.assertEqual((e.reason, e.message), ("failed", "boom"))
                self.assertEqual((await reason("crash", b"")).reason, "error")
                self.assertEqual((await reason("sleep", b"10000", timeout=0.2)).reason,
                                 "timeout")
                self.assertEqual((await reason("nope", b"")).reason, "unknown-module")
                with self.assertRaises(taskmaster.JobFailed) as cm:
                    [i async for i in c.stream("fail", b"x")]
                self.assertEqual(cm.exception.reason, "failed")
        self.run_async(main())

    def test_job_operations(self) -> None:
        async def main() -> None:
            async with Client(self.master.addr) as c:
                job_id = await c.submit_detached("echo", b"kept")
                self.assertEqual(await c.result(job_id, wait=10), b"kept")
                self.assertEqual((await c.status(job_id))["status"], "completed")
                later = await c.submit_detached("echo", b"later", start_later=True)
                with self.assertRaises(taskmaster.NotFinished):
                    await c.result(later)
                self.assertEqual(await c.start(later), {"id": later, "status": "queued"})
                self.assertEqual(await c.result(later, wait=10), b"later")
                held = await c.submit_detached("echo", b"x", start_later=True)
                self.assertEqual((await c.cancel(held))["status"], "cancelled")
                with self.assertRaises(taskmaster.Conflict):
                    await c.cancel(held)
                with self.assertRaises(taskmaster.NotFound):
                    await c.status("000000000000-1")
                stats = await c.stats()
                self.assertLessEqual({"start", "max", "size", "busy", "idle", "starting"},
                                     set(stats["pool"]))
                self.assertGreaterEqual(len(await c.jobs(10)), 3)
        self.run_async(main())

    def test_cancelled_call_leaves_connection_usable(self) -> None:
        async def main() -> None:
            async with Client(self.master.addr) as c:
                task = asyncio.ensure_future(c.do("sleep", b"300"))
                await wait_for(lambda: c._pending, 5, "the submit to be pending")
                task.cancel()
                with self.assertRaises(asyncio.CancelledError):
                    await task
                self.assertEqual(c._pending, {})
                self.assertEqual(await c.do("echo", b"ok"), b"ok")
        self.run_async(main())

    def test_not_connected(self) -> None:
        async def main() -> None:
            with self.assertRaises(taskmaster.TaskmasterError):
                await Client(self.master.addr).do("echo", b"")
        self.run_async(main())


class Overload(AioTest):
    def test_overload(self) -> None:
        async def main(addr: str) -> None:
            async with Client(addr) as c:
                results = await asyncio.gather(*(c.do("sleep", b"300") for _ in range(5)),
                                               return_exceptions=True)
                reasons = {r.reason if isinstance(r, taskmaster.JobFailed) else "ok"
                           for r in results}
                self.assertEqual(reasons, {"ok", "overload"})
        with support.start_master("--pool-start", "1", "--pool-max", "1", "--job-max", "1") as m:
            self.run_async(main(m.addr))


class Token(AioTest):
    def test_token(self) -> None:
        async def main(addr: str) -> None:
            with self.assertRaises(taskmaster.Refused):
                await Client.connect(addr, token="wrong")
            async with Client(addr, token="tok") as c:
                self.assertEqual(await c.do("echo", b"in"), b"in")
        with tempfile.NamedTemporaryFile("w") as f:
            f.write("tok\n")
            f.flush()
            with support.start_master("--token-file", f.name) as m:
                self.run_async(main(m.addr))


class BrokenMaster(AioTest):
    """A fake peer that breaks the protocol: every pending call fails."""

    def test_protocol_error_fails_pending_calls(self) -> None:
        fake = support.FakeMaster(support.WELCOME, b"\x00\x00\x00\x01\x00" + b"\xff\xff\xff\xff")

        async def main() -> None:
            async with Client(fake.addr) as c:
                results = await asyncio.gather(*(c.do("echo", b"x") for _ in range(5)),
                                               c.stats(), return_exceptions=True)
                for r in results:
                    self.assertIsInstance(r, taskmaster.ProtocolError)
                with self.assertRaises(taskmaster.ProtocolError):
                    await c.do("echo", b"x")
        try:
            self.run_async(main())
        finally:
            fake.close()

    def test_no_welcome_times_out(self) -> None:
        fake = support.FakeMaster()

        async def main() -> None:
            with self.assertRaises(TimeoutError):
                await Client.connect(fake.addr, connect_timeout=0.3)
        try:
            self.run_async(main(), timeout=5)
        finally:
            fake.close()


class MasterGoesAway(AioTest):
    def test_killed_mid_job(self) -> None:
        async def main(m: support.Master) -> None:
            c = await Client.connect(m.addr)
            jobs = [asyncio.ensure_future(c.do("sleep", b"30000")) for _ in range(2)]
            stream = c.stream("sleep", b"30000")
            streamed = asyncio.ensure_future(stream.__anext__())
            detached = await c.submit_detached("sleep", b"30000")
            result = asyncio.ensure_future(c.result(detached, wait=60))

            async def children_busy() -> None:
                while (await c.stats())["pool"]["busy"] < 4:
                    await asyncio.sleep(0.01)
            await asyncio.wait_for(children_busy(), 10)
            started = time.monotonic()
            m.kill()
            outcomes = await asyncio.wait_for(
                asyncio.gather(*jobs, streamed, result, return_exceptions=True), 10)
            self.assertLess(time.monotonic() - started, 5)
            for outcome in outcomes:
                self.assertIsInstance(outcome, taskmaster.ConnectionLost)
                self.assertIsInstance(outcome, ConnectionError)
            self.assertTrue(c.closed)
            with self.assertRaises(taskmaster.ConnectionLost):
                await c.do("echo", b"x")
            with self.assertRaises(taskmaster.ConnectionLost):
                c.stream("echo", b"x")
            await c.close()
        m = support.start_master("--pool-start", "4")
        try:
            self.run_async(main(m))
        finally:
            m.stop()


if __name__ == "__main__":
    unittest.main()
