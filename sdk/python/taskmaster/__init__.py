"""taskmaster: a Python client (and handler) for the taskmaster process pool.

What lives here: the package's public names. The blocking `Client` and the
errors come from `taskmaster.client`; the asyncio client is
`taskmaster.aio.Client`; the wire primitives are in `taskmaster._wire`.
Guide: docs/python.md; wire contract: docs/protocol.md.

    import taskmaster
    with taskmaster.Client("127.0.0.1:7400") as tm:
        print(tm.do("echo", b"hello"))
"""

from typing import TYPE_CHECKING, Any

from ._wire import PROTOCOL_VERSION, REASONS, ConnectionLost, ProtocolError, TaskmasterError

if TYPE_CHECKING:
    from .client import (Client, Conflict, InvalidRequest, JobFailed, NotFinished, NotFound,
                         Part, Refused, RequestError, Response, TooLarge, token_from_env)

# The client is imported on first use (PEP 562): a pre-forked handler child
# (`taskmaster.handler`) never needs it, and every child saves its import
# time (about 11 ms) at start-up.
_CLIENT_NAMES = frozenset({
    "Client", "Conflict", "InvalidRequest", "JobFailed", "NotFinished", "NotFound", "Part",
    "Refused", "RequestError", "Response", "TooLarge", "token_from_env",
})


def __getattr__(name: str) -> Any:
    if name in _CLIENT_NAMES:
        from . import client
        return getattr(client, name)
    raise AttributeError(f"module 'taskmaster' has no attribute {name!r}")

__version__ = "0.1.0"

__all__ = [
    "Client", "Part", "Response", "token_from_env",
    "TaskmasterError", "ProtocolError", "ConnectionLost", "Refused", "JobFailed",
    "RequestError", "NotFound", "Conflict", "NotFinished", "InvalidRequest", "TooLarge",
    "PROTOCOL_VERSION", "REASONS", "__version__",
]
