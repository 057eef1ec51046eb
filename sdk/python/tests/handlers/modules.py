#!/usr/bin/env python3
"""The test suite's Python handler: one module per behaviour test_handler.py checks.

Environment switches (the tests set them; the master passes its
environment on to its children):

* ``TM_TEST_START_FAILS=1``: ``start()`` raises, so no child ever starts.
"""

import os
import signal
import threading
import time

from taskmaster.handler import Fail, run


def echo(data: bytes, parts) -> bytes:
    return data


def pid(data: bytes, parts) -> bytes:
    return str(os.getpid()).encode()


def stream(data: bytes, parts) -> bytes:
    """Input N: parts ``1\\n`` .. ``N\\n``, then the response ``done\\n`` (the stock ``count``)."""
    for i in range(1, int(data) + 1):
        parts.send(b"%d\n" % i)
    return b"done\n"


def boom(data: bytes, parts) -> bytes:
    raise ValueError(data.decode())


def fail(data: bytes, parts) -> bytes:
    raise Fail(data.decode())


def exit3(data: bytes, parts) -> bytes:
    os._exit(3)


def sleep(data: bytes, parts) -> bytes:
    """Input milliseconds: sleeps that long, then answers its pid (as the stock ``sleep``)."""
    time.sleep(int(data) / 1000)
    return str(os.getpid()).encode()


def block(data: bytes, parts) -> bytes:
    """Sends the part ``blocking``, then blocks for good."""
    parts.send(b"blocking")
    threading.Event().wait()
    return b""


def freeze(data: bytes, parts) -> bytes:
    """Stops the whole process (every thread): its heartbeats stop too."""
    os.kill(os.getpid(), signal.SIGSTOP)
    return b"thawed"


def sized(data: bytes, parts) -> bytes:
    """Input N: a response of N bytes (as a bytearray)."""
    return bytearray(int(data))


def view(data: bytes, parts) -> memoryview:
    return memoryview(data)[::-1]


def text(data: bytes, parts) -> str:
    return data.decode()


def nothing(data: bytes, parts) -> None:
    return None


def bigpart(data: bytes, parts) -> bytes:
    """Input N: tries to send a part of N bytes; answers what happened."""
    try:
        parts.send(bytes(int(data)))
    except ValueError as e:
        return f"ValueError: {e}".encode()
    return b"sent"


KEPT = []


def keep(data: bytes, parts) -> bytes:
    """Keeps its `Parts` past the end of its job (for ``late``)."""
    KEPT.append(parts)
    return b"kept"


def late(data: bytes, parts) -> bytes:
    """Sends a part with the `Parts` of an earlier job; answers what happened."""
    try:
        KEPT[-1].send(b"late")
    except RuntimeError as e:
        return f"RuntimeError: {e}".encode()
    return b"sent"


def limits(data: bytes, parts) -> bytes:
    import resource
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)
    core = resource.getrlimit(resource.RLIMIT_CORE)
    return f"nofile={nofile[0]},{nofile[1]} core={core[0]},{core[1]}".encode()


def start() -> None:
    if os.environ.get("TM_TEST_START_FAILS"):
        raise RuntimeError("the test asked start() to fail")


run({"echo": echo, "pid": pid, "stream": stream, "boom": boom, "fail": fail,
     "exit3": exit3, "sleep": sleep, "block": block, "freeze": freeze, "sized": sized,
     "view": view, "text": text, "nothing": nothing, "bigpart": bigpart, "keep": keep,
     "late": late, "limits": limits},
    start=start)
