#!/usr/bin/env python3
"""A complete taskmaster client: python3 examples/client.py [HOST:PORT].

Runs a job and prints its response, streams a job's parts, handles a
failure, submits a detached job and fetches its result, prints pool
figures, then runs 100 jobs at once over one asyncio connection. Works
against a master started with the stock handler:

    taskmaster --listen 127.0.0.1:7400
    python3 examples/client.py 127.0.0.1:7400

The token, if the master wants one, comes from TASKMASTER_TOKEN_FILE or
TASKMASTER_TOKEN.
"""

import asyncio
import sys

import taskmaster
import taskmaster.aio


def blocking(addr: str) -> None:
    with taskmaster.Client(addr) as tm:
        print("echo:", tm.do("echo", b"hello"))

        for item in tm.stream("count", b"3"):        # parts, then the response
            print("response:" if item.final else "part:", bytes(item))

        try:
            tm.do("fail", b"bad input")
        except taskmaster.JobFailed as e:            # e.reason is the reason word
            print(f"failed: {e.reason}: {e.message} (job {e.job_id})")

        job_id = tm.submit_detached("echo", b"later", start_later=True)
        tm.start(job_id)
        print(f"detached {job_id}:", tm.result(job_id, wait=10))

        pool = tm.stats()["pool"]
        print(f"pool: {pool['size']} children, {pool['busy']} busy")


async def many(addr: str) -> None:
    async with taskmaster.aio.Client(addr) as tm:
        inputs = [str(i).encode() for i in range(100)]
        outputs = await asyncio.gather(*(tm.do("echo", data) for data in inputs))
        assert outputs == inputs
        print(f"aio: {len(outputs)} jobs ok")


def main() -> int:
    addr = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:7400"
    try:
        blocking(addr)
        asyncio.run(many(addr))
    except taskmaster.Refused as e:
        print(f"error: {e} (set TASKMASTER_TOKEN_FILE or TASKMASTER_TOKEN)", file=sys.stderr)
        return 1
    except (taskmaster.TaskmasterError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
