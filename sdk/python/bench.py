#!/usr/bin/env python3
"""Load-test a master with the Python clients: jobs/s and latency percentiles.

    python3 sdk/python/bench.py --connect 127.0.0.1:7400 --mode aio --jobs 50000 --concurrency 100

``--mode blocking``: ``--concurrency`` threads, each with its own
`taskmaster.Client`, each running one job at a time. ``--mode aio``: one
`taskmaster.aio.Client` connection with ``--concurrency`` jobs in flight
(that many tasks, each submitting its next job when the last one is
answered). Every job runs ``--module`` (default ``echo``) on ``--size``
random bytes; echo responses are checked. ``--profile FILE`` writes
cProfile statistics of the run (aio mode profiles the event loop thread).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))

import taskmaster            # noqa: E402
import taskmaster.aio        # noqa: E402


def percentile(sorted_ns: List[int], p: float) -> float:
    """The p-th percentile of sorted nanosecond samples, in milliseconds."""
    if not sorted_ns:
        return 0.0
    i = min(len(sorted_ns) - 1, max(0, round(p / 100 * len(sorted_ns)) - 1))
    return sorted_ns[i] / 1e6


def run_blocking(args: argparse.Namespace, inputs: List[bytes]) -> List[int]:
    """``args.concurrency`` threads, one client each; returns latencies (ns)."""
    latencies: List[int] = []
    lock = threading.Lock()
    counter = iter(range(args.jobs))
    errors: List[BaseException] = []
    check = args.module == "echo"

    def worker() -> None:
        mine: List[int] = []
        clock = time.perf_counter_ns
        try:
            with taskmaster.Client(args.connect, token=args.token) as tm:
                for i in counter:
                    data = inputs[i % len(inputs)]
                    t0 = clock()
                    out = tm.do(args.module, data)
                    mine.append(clock() - t0)
                    if check and out != data:
                        raise AssertionError(f"job {i}: wrong response")
        except BaseException as e:  # noqa: BLE001 - reported by main
            errors.append(e)
        with lock:
            latencies.extend(mine)

    if args.concurrency == 1:                  # in this thread, so --profile sees it
        worker()
        if errors:
            raise errors[0]
        return latencies
    threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return latencies


async def run_aio(args: argparse.Namespace, inputs: List[bytes]) -> List[int]:
    """One connection, ``args.concurrency`` jobs in flight; returns latencies (ns)."""
    latencies: List[int] = []
    counter = iter(range(args.jobs))
    check = args.module == "echo"
    async with taskmaster.aio.Client(args.connect, token=args.token) as tm:
        async def worker() -> None:
            clock = time.perf_counter_ns
            do = tm.do
            module = args.module
            record = latencies.append
            for i in counter:
                data = inputs[i % len(inputs)]
                t0 = clock()
                out = await do(module, data)
                record(clock() - t0)
                if check and out != data:
                    raise AssertionError(f"job {i}: wrong response")

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    return latencies


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connect", default="127.0.0.1:7400", help="the master's HOST:PORT")
    p.add_argument("--mode", choices=("blocking", "aio"), default="aio")
    p.add_argument("--jobs", type=int, default=20000, help="jobs in all")
    p.add_argument("--concurrency", type=int, default=None,
                   help="blocking: threads (default 1); aio: jobs in flight (default 100)")
    p.add_argument("--size", type=int, default=64, help="bytes of random input per job")
    p.add_argument("--module", default="echo")
    p.add_argument("--token", default=None, help="client token (default: the environment)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--profile", metavar="FILE", help="write cProfile stats to FILE")
    args = p.parse_args()
    if args.concurrency is None:
        args.concurrency = 1 if args.mode == "blocking" else 100
    inputs = [os.urandom(args.size) for _ in range(256)]

    profiler = None
    if args.profile:
        import cProfile
        profiler = cProfile.Profile()
        profiler.enable()
    started = time.perf_counter()
    if args.mode == "blocking":
        latencies = run_blocking(args, inputs)
    else:
        latencies = asyncio.run(run_aio(args, inputs))
    elapsed = time.perf_counter() - started
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(args.profile)

    latencies.sort()
    result: Dict[str, object] = {
        "mode": args.mode, "jobs": len(latencies), "concurrency": args.concurrency,
        "size": args.size, "seconds": round(elapsed, 3),
        "jobs_per_sec": round(len(latencies) / elapsed, 1),
        "p50_ms": round(percentile(latencies, 50), 3),
        "p99_ms": round(percentile(latencies, 99), 3),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.mode}: {result['jobs']} jobs of {args.size} bytes, concurrency "
              f"{args.concurrency}, in {result['seconds']} s")
        print(f"  {result['jobs_per_sec']} jobs/s   p50 {result['p50_ms']} ms   "
              f"p99 {result['p99_ms']} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
