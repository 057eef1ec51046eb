"""Tests of `taskmaster._wire`: the client-side worked hex examples of
docs/protocol.md section 4, encoded and decoded byte for byte, and the
error cases of the bincode reader and the framing.

The hex is read from the document itself (as proto/tests/doc_examples.rs
does), so the examples and this package cannot drift apart unnoticed.
"""

from __future__ import annotations

import io
import re
import socket
import threading
import unittest
from typing import Dict

import support  # noqa: F401  (sys.path)
from taskmaster import _wire
from taskmaster._wire import (COMPLETED, FAILED, PART, REFUSED, REPLY, STATS_ANSWER, WELCOME,
                              ConnectionLost, ProtocolError, Reader, Writer)

PROTOCOL_MD = support.REPO_DIR / "docs" / "protocol.md"
INSTANCE = "3f9a0c12b7e4"


def doc_examples() -> Dict[str, bytes]:
    """Section 4's examples: title -> frame bytes (the leading hex of each line)."""
    text = PROTOCOL_MD.read_text(encoding="utf-8")
    section = text.split("## 4. Worked hex examples", 1)[1].split("\n## 5.", 1)[0]
    examples: Dict[str, bytes] = {}
    for m in re.finditer(r"^### (.+?)\n+```text\n(.*?)```", section, re.S | re.M):
        title, block = m.group(1).strip(), m.group(2)
        raw = bytearray()
        for line in block.splitlines():
            hexpart = re.split(r"\s{2,}", line.strip(), 1)[0]
            raw += bytes.fromhex(hexpart)
        examples[title] = bytes(raw)
    return examples


EXAMPLES = doc_examples()


def example(prefix: str) -> bytes:
    """The one example whose title starts with ``prefix``."""
    hits = [v for k, v in EXAMPLES.items() if k.startswith(prefix)]
    if len(hits) != 1:
        raise AssertionError(f"{len(hits)} examples titled {prefix!r}...: {list(EXAMPLES)}")
    return hits[0]


def body(frame: bytes) -> bytes:
    """A frame's body, after checking its length prefix."""
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4, frame.hex()
    return frame[4:]


class DocExamplesFound(unittest.TestCase):
    def test_sizes_in_titles(self) -> None:
        """Every example has as many bytes as its title says."""
        self.assertGreaterEqual(len(EXAMPLES), 20)
        for title, frame in EXAMPLES.items():
            m = re.search(r"\((\d+) bytes\)$", title)
            self.assertIsNotNone(m, title)
            assert m is not None
            self.assertEqual(len(frame), int(m.group(1)), title)


class ClientToMaster(unittest.TestCase):
    """Frames a client sends: encoded byte for byte, and decoded back."""

    def test_hello_no_token(self) -> None:
        frame = example("Client hello, token None")
        self.assertEqual(_wire.client_hello_frame(None), frame)
        r = Reader(body(frame))
        self.assertEqual((r.variant(), r.u32(), r.option(r.str)), (1, _wire.PROTOCOL_VERSION, None))
        r.done()

    def test_hello_token(self) -> None:
        frame = example("Client hello, token Some")
        self.assertEqual(_wire.client_hello_frame("abc"), frame)
        r = Reader(body(frame))
        self.assertEqual((r.variant(), r.u32(), r.option(r.str)), (1, _wire.PROTOCOL_VERSION, "abc"))
        r.done()

    def test_submit_default(self) -> None:
        frame = example("Submit: tag 1")
        self.assertEqual(_wire.submit_frame(1, "echo", b"hi"), frame)
        r = Reader(body(frame))
        self.assertEqual((r.variant(), r.u64(), r.str(), r.bytes()), (0, 1, "echo", b""))
        self.assertEqual((r.bool(), r.bool(), r.option(r.u64)), (False, False, None))
        self.assertEqual((r.u32(), r.u32()), (1, 0))          # priority normal, no retries
        self.assertEqual(r.rest(), b"hi")
        # The hot path's cached tail is the same bytes.
        tail = _wire.plain_submit_tail("echo")
        self.assertEqual(frame[4:], _wire._IQ.pack(0, 1) + tail + b"hi")

    def test_submit_start_later(self) -> None:
        frame = example("Submit: tag 2, start later")
        pri, retries = _wire.submit_options("high", 2)
        self.assertEqual(_wire.submit_frame(2, "echo", b"hi", detach=True, start_later=True,
                                            timeout_ms=1500, priority=pri, retries=retries), frame)
        # start_later implies detach, whatever the caller says
        self.assertEqual(_wire.submit_frame(2, "echo", b"hi", start_later=True,
                                            timeout_ms=1500, priority=pri, retries=retries), frame)
        r = Reader(body(frame))
        self.assertEqual((r.variant(), r.u64(), r.str(), r.bytes()), (0, 2, "echo", b""))
        self.assertEqual((r.bool(), r.bool(), r.option(r.u64)), (True, True, 1500))
        self.assertEqual((r.u32(), r.u32()), (0, 2))
        self.assertEqual(r.rest(), b"hi")

    def test_stats_request(self) -> None:
        frame = example("Stats request")
        self.assertEqual(_wire.stats_frame(2), frame)

    def test_status_start_cancel(self) -> None:
        for title, variant, tag, job in (("Status request", _wire.STATUS, 3, 17),
                                         ("Start request", _wire.START, 6, 18),
                                         ("Cancel request", _wire.CANCEL, 7, 17)):
            with self.subTest(title):
                frame = example(title)
                self.assertEqual(_wire.job_op_frame(variant, tag, f"{INSTANCE}-{job}"), frame)
                r = Reader(body(frame))
                self.assertEqual((r.variant(), r.u64(), r.str()),
                                 (variant, tag, f"{INSTANCE}-{job}"))
                r.done()

    def test_result_request(self) -> None:
        frame = example("Result request")
        self.assertEqual(_wire.result_frame(5, f"{INSTANCE}-17", 2000), frame)

    def test_jobs_request(self) -> None:
        frame = example("Jobs request")
        self.assertEqual(_wire.jobs_frame(8, 100, "failed"), frame)


class MasterToClient(unittest.TestCase):
    """Frames a client receives: decoded, and re-encoded with `Writer`."""

    def test_welcome(self) -> None:
        frame = example("Welcome")
        self.assertEqual(_wire.decode_answer(body(frame)), (WELCOME, _wire.PROTOCOL_VERSION, 16777216, INSTANCE))
        w = Writer().variant(0).u32(_wire.PROTOCOL_VERSION).u64(16 * 1024 * 1024).str(INSTANCE)
        self.assertEqual(_wire.encode_frame(w.getvalue()), frame)

    def test_refused(self) -> None:
        frame = example("Refused")
        self.assertEqual(_wire.decode_answer(body(frame)), (REFUSED, "no"))
        self.assertEqual(_wire.encode_frame(Writer().variant(1).str("no").getvalue()), frame)

    def test_part(self) -> None:
        frame = example("Part: tag 1")
        self.assertEqual(_wire.decode_answer(body(frame)), (PART, 1, b"1\n"))
        self.assertEqual(_wire.encode_frame(Writer().variant(2).u64(1).getvalue(), b"1\n"), frame)

    def test_completed(self) -> None:
        frame = example("Completed")
        self.assertEqual(_wire.decode_answer(body(frame)), (COMPLETED, 1, 17, b"", b"hi"))
        header = Writer().variant(3).u64(1).u64(17).bytes(b"").getvalue()
        self.assertEqual(_wire.encode_frame(header, b"hi"), frame)

    def test_failed(self) -> None:
        frame = example("Failed: tag 4")
        self.assertEqual(_wire.decode_answer(body(frame)),
                         (FAILED, 4, 19, "overload", "busy", b""))
        header = (Writer().variant(4).u64(4).u64(19).variant(_wire.REASON_INDEX["overload"])
                  .str("busy").bytes(b"").getvalue())
        self.assertEqual(_wire.encode_frame(header), frame)

    def test_stats_answer(self) -> None:
        frame = example("Stats answer")
        self.assertEqual(_wire.decode_answer(body(frame)), (STATS_ANSWER, 2, "{}"))

    def test_replies(self) -> None:
        cases = (
            ("Reply to that submit", 2, "ok", '{"id":"3f9a0c12b7e4-18","status":"start-later"}',
             b""),
            ("Reply to the Result request", 5, "ok",
             '{"id":"3f9a0c12b7e4-17","status":"completed"}', b"hi"),
            ("Reply to the Cancel request", 7, "conflict",
             '{"id":"3f9a0c12b7e4-17","status":"completed"}', b""),
            ("Reply to a Result request: Failed", 9, "failed",
             '{"id":"3f9a0c12b7e4-19","status":"failed","reason":"failed","message":"boom"}', b""),
            ("Reply to a Status request: NotFound", 10, "not-found",
             '{"error":"no job 3f9a0c12b7e4-99 (unknown, evicted, or from another master run)"}',
             b""),
        )
        for title, tag, outcome, text, payload in cases:
            with self.subTest(title):
                frame = example(title)
                self.assertEqual(_wire.decode_answer(body(frame)),
                                 (REPLY, tag, outcome, text, payload))
                header = (Writer().variant(6).u64(tag).variant(_wire.OUTCOME_INDEX[outcome])
                          .str(text).getvalue())
                self.assertEqual(_wire.encode_frame(header, payload), frame)

    def test_event(self) -> None:
        answer = _wire.decode_answer(body(example("Event: tag 11")))
        self.assertEqual(answer[:3], (_wire.EVENT, 11, "job-started"))
        self.assertIn('"job":"3f9a0c12b7e4-17"', answer[3])
        self.assertEqual(_wire.events_frame(11, ""), example("Events request: tag 11"))

    def test_status_reply(self) -> None:
        answer = _wire.decode_answer(body(example("Reply to the Status request")))
        self.assertEqual(answer[:3], (REPLY, 3, "ok"))
        self.assertIn('"created_at":"2026-11-23T10:00:00.123Z"', answer[3])
        self.assertEqual(answer[4], b"")


class Primitives(unittest.TestCase):
    def test_round_trip(self) -> None:
        w = Writer()
        w.u8(7).u16(0x1234).u32(0xDEADBEEF).u64(2 ** 64 - 1).i64(-2).bool(True)
        w.bytes(b"\x00\xff").str("h\u00e9").option(None, w.u64).option(5, w.u64).variant(6)
        w.seq(["a", "bc"], w.str).raw(b"\xab" * 3)
        data = w.getvalue()
        self.assertEqual(data[:15], bytes.fromhex("07 3412 efbeadde ffffffffffffffff"))
        r = Reader(data + b"tail")
        self.assertEqual([r.u8(), r.u16(), r.u32(), r.u64(), r.i64(), r.bool()],
                         [7, 0x1234, 0xDEADBEEF, 2 ** 64 - 1, -2, True])
        self.assertEqual((r.bytes(), r.str(), r.option(r.u64), r.option(r.u64), r.variant()),
                         (b"\x00\xff", "h\u00e9", None, 5, 6))
        self.assertEqual((r.seq(r.str), r.raw(3)), (["a", "bc"], b"\xab" * 3))
        self.assertEqual(r.remaining(), 4)
        with self.assertRaises(ProtocolError):
            r.done()
        self.assertEqual(r.rest(), b"tail")
        r.done()

    def test_out_of_range(self) -> None:
        for call in (lambda: Writer().u8(256), lambda: Writer().u32(-1),
                     lambda: Writer().u64(2 ** 64), lambda: Writer().i64(2 ** 63)):
            with self.assertRaises(ProtocolError):
                call()

    def test_malformed(self) -> None:
        cases = {
            "truncated u64": (b"\x01\x02", lambda r: r.u64()),
            "bool 2": (b"\x02", lambda r: r.bool()),
            "option tag 2": (b"\x02", lambda r: r.option(r.u8)),
            "string past the end": (b"\x05" + b"\x00" * 7 + b"ab", lambda r: r.str()),
            "invalid utf-8": (b"\x01" + b"\x00" * 7 + b"\xff", lambda r: r.str()),
            "huge sequence": (b"\xff" * 8, lambda r: r.seq(r.u8)),
            "empty": (b"", lambda r: r.u8()),
        }
        for what, (data, read) in cases.items():
            with self.subTest(what), self.assertRaises(ProtocolError):
                read(Reader(data))

    def test_decode_answer_malformed(self) -> None:
        cases = {
            "unknown variant": bytes.fromhex("09000000") + b"\x00" * 8,
            "unknown reason": (Writer().variant(4).u64(1).u64(2).variant(7).str("")
                               .bytes(b"").getvalue()),
            "trailing bytes after Stats": Writer().variant(5).u64(1).str("{}").getvalue() + b"x",
            "truncated Completed": Writer().variant(3).u64(1).u64(2).u64(5).getvalue() + b"ab",
            "too short": b"\x03\x00",
        }
        for what, data in cases.items():
            with self.subTest(what), self.assertRaises(ProtocolError):
                _wire.decode_answer(data)


class Framing(unittest.TestCase):
    def test_read_frame_stream(self) -> None:
        frames = _wire.encode_frame(b"ab", b"cd") + _wire.encode_frame(b"")
        stream = io.BytesIO(frames)
        self.assertEqual(_wire.read_frame(stream, 1024), b"abcd")
        self.assertEqual(_wire.read_frame(stream, 1024), b"")
        self.assertIsNone(_wire.read_frame(stream, 1024))

    def test_read_frame_socket(self) -> None:
        a, b = socket.socketpair()
        with a, b:
            frame = _wire.encode_frame(b"x" * 300_000)
            writer = threading.Thread(target=lambda: (a.sendall(frame[:50]), a.sendall(frame[50:])))
            writer.start()
            self.assertEqual(_wire.read_frame(b, 1 << 20), b"x" * 300_000)
            writer.join()
            a.sendall(b"\x00\x00\x00\x05ab")
            a.shutdown(socket.SHUT_WR)
            with self.assertRaises(ConnectionLost):
                _wire.read_frame(b, 1024)

    def test_truncated_and_oversized(self) -> None:
        with self.assertRaises(ConnectionLost):
            _wire.read_frame(io.BytesIO(b"\x00\x00"), 1024)
        with self.assertRaises(ConnectionLost):
            _wire.read_frame(io.BytesIO(b"\x00\x00\x00\x09abc"), 1024)
        limit = _wire.frame_limit(1024)
        with self.assertRaises(ProtocolError):
            _wire.read_frame(io.BytesIO((limit + 1).to_bytes(4, "big")), 1024)
        self.assertEqual(len(_wire.read_frame(
            io.BytesIO(limit.to_bytes(4, "big") + b"\x00" * limit), 1024) or b""), limit)

    def test_split_frames(self) -> None:
        stream = b"".join(_wire.encode_frame(bytes([i]) * i) for i in range(1, 6))
        for cut in range(len(stream) + 1):
            buf = bytearray(stream[:cut])
            got = _wire.split_frames(buf, 1024)
            buf += stream[cut:]
            got += _wire.split_frames(buf, 1024)
            self.assertEqual(got, [bytes([i]) * i for i in range(1, 6)], cut)
            self.assertEqual(buf, b"")
        with self.assertRaises(ProtocolError):
            _wire.split_frames(bytearray(b"\xff\xff\xff\xff"), 1024)
        self.assertEqual(_wire.needed(bytearray(b"\x00\x00\x00\x05ab"), 1024), 3)


if __name__ == "__main__":
    unittest.main()
