#!/usr/bin/env python3
"""An example taskmaster handler in Python, with two modules.

* ``upper``: UTF-8 text in, the same text in upper case out; input that is
  not UTF-8 fails the job ``failed`` (and the child stays).
* ``wordcount``: text in; one part per line, ``LINE: WORDS``, as it goes,
  then the response ``total N``.

Run it (the script must be executable and find the package, e.g. after
``pip install ./sdk/python``)::

    taskmaster --handler ./handler.py
    taskmaster submit upper 'héllo'            # HÉLLO
    printf 'a b\\nc\\n' | taskmaster submit wordcount
    # 1: 2
    # 2: 1
    # total 3
"""

import re
import sys

from taskmaster.handler import Fail, Parts, run

WORD = re.compile(rb"\S+")


def start() -> None:
    """Runs once per child before it takes jobs: the place for set-up that
    should not run per job (load a model, open a connection pool). If it
    raises, the child exits and the master counts a start-up failure."""
    print(f"example handler starting (Python {sys.version.split()[0]})", file=sys.stderr)


def upper(data: bytes, parts: Parts) -> bytes:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Fail(f"input is not UTF-8 text: {e}") from None
    return text.upper().encode("utf-8")


def wordcount(data: bytes, parts: Parts) -> bytes:
    total = 0
    for number, line in enumerate(data.splitlines(), 1):
        words = len(WORD.findall(line))
        total += words
        parts.send(b"%d: %d\n" % (number, words))   # reaches the client now
    return b"total %d\n" % total


if __name__ == "__main__":
    run({"upper": upper, "wordcount": wordcount}, start=start)
