"""A request read by the worker's poller before any thread takes it (common/wsgi_server.py): how many bytes
make it whole, by when they must be in, and the small rewrites done on the way.

No sockets here: `Incoming` is fed what arrived and says what to do next. Standard library only (imported by
gunicorn's master, before prometheus_client may be)."""
import enum
import json
import os
import re
from dataclasses import dataclass

TIMEOUT_ENV = "SLOW_CLIENT_TIMEOUT"
DEFAULT_TIMEOUT_S = 5.0
BODY_AHEAD_MAX = 1 << 20  # bodies up to this (both servers' MAX_BODY_BYTES) are read before a thread is given
HELP = (f"env {TIMEOUT_ENV} (default {DEFAULT_TIMEOUT_S:g}): seconds a request's head, and then its body, may take "
        "to arrive; a slower connection gets a 408 and is closed, without ever taking a thread")
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_CONTENT_LENGTH = re.compile(rb"\ncontent-length:[ \t]*(\d{1,12})[ \t]*\r?\n", re.IGNORECASE)
_CHUNKED = re.compile(rb"\ntransfer-encoding:[^\n]*chunked[ \t]*\r?\n", re.IGNORECASE)
_EXPECT_CONTINUE = re.compile(rb"\r?\nexpect:[ \t]*100-continue[ \t]*(?=\r?\n)", re.IGNORECASE)
_UNSAFE_IN_TARGET = re.compile(rb"[^\x21-\x7e]")  # RFC 9112 3.2: a request target is printable ASCII
_CHUNK_SIZE = re.compile(rb"([0-9a-fA-F]{1,8})(?:[ \t]*;[^\r\n]*)?[ \t]*\r\n")  # size [;extensions] CRLF


def timeout_from_env(environ=os.environ) -> float:
    """SLOW_CLIENT_TIMEOUT in seconds (default 5); ValueError with a message the user can act on."""
    raw = (environ.get(TIMEOUT_ENV) or "").strip()
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        value = -1.0
    if not 0 < value <= 3600:
        raise ValueError(f"{TIMEOUT_ENV}={raw!r}: give the seconds a request may take to arrive, "
                         f"a number above 0 (default {DEFAULT_TIMEOUT_S:g})")
    return value


def timeout_response(timeout_s: float) -> bytes:
    """The 408 a connection gets when its request did not arrive in time (the servers' JSON error shape)."""
    body = json.dumps({"error": {
        "message": f"The request did not arrive within {timeout_s:g} s ({TIMEOUT_ENV}); send it without pausing.",
        "type": "invalid_request_error", "code": "request_timeout"}}).encode()
    return (b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)) + body


class Verdict(enum.Enum):
    WAIT = "wait"    # more bytes are due
    READY = "ready"  # hand the request to a thread (gunicorn's parser answers a malformed one with a 4xx)


@dataclass
class Incoming:
    """One request being read: the bytes so far, its deadline, and how far it has got."""
    data: bytearray
    deadline: float
    head_max: int  # past this many bytes with no end of head, the parser answers (431/400)
    part: str = "head"  # "head" until the request head is in, then "body"
    body_start: int = 0
    body_end: int | None = None  # with a Content-Length: where the read-ahead body ends
    chunked: bool = False
    chunk_pos: int = 0  # with a chunked body: where the next chunk's size line starts (scanned so far)
    send_continue: bool = False  # a 100 Continue is due (the client waits for it before its body)

    def verdict(self, now: float, timeout_s: float) -> Verdict:
        if self.part == "head":
            if not self._head_in():
                return Verdict.WAIT
            self.part, self.deadline = "body", now + timeout_s  # the body gets a deadline of its own
        if self.body_end is not None:
            return Verdict.READY if len(self.data) >= self.body_end else Verdict.WAIT
        if self.chunked:
            end, self.chunk_pos = chunked_end(self.data, self.body_start, self.chunk_pos or self.body_start)
            return Verdict.READY if end is not None else Verdict.WAIT
        return Verdict.READY

    def _head_in(self) -> bool:
        end = self.data.find(b"\r\n\r\n")
        if end < 0:
            bare = self.data.find(b"\n\n")  # a bare-LF head: the parser refuses it
            if bare < 0 and len(self.data) <= self.head_max:
                return False
            self.body_start = self.body_end = bare + 2 if bare >= 0 else len(self.data)
            return True
        head = rewrite_head(bytes(self.data[:end + 2]))  # up to the last field's CRLF
        self.chunked = _CHUNKED.search(head) is not None
        length = None if self.chunked else _CONTENT_LENGTH.search(head)
        size = int(length.group(1)) if length else 0
        http10 = head[:head.find(b"\r\n")].endswith(b"HTTP/1.0")
        # the body is read here, so the 100 Continue its client may wait for is sent here, and only here
        self.send_continue = ((self.chunked or 0 < size <= BODY_AHEAD_MAX) and not http10
                              and _EXPECT_CONTINUE.search(head) is not None)
        if self.send_continue:
            head = _EXPECT_CONTINUE.sub(b"", head)
        self.data[:end + 2] = head
        self.body_start = len(head) + 2
        if not self.chunked:  # a body over BODY_AHEAD_MAX is the app's 413, from the headers alone
            self.body_end = self.body_start + (size if size <= BODY_AHEAD_MAX else 0)
        return True


def chunked_end(data, start: int, pos: int):
    """(where a chunked body that begins at `start` ends, after its last chunk and trailers, or None while it
    is incomplete; where to scan on from next time, `pos` being where this scan starts: a chunk boundary).
    A malformed body, or one over BODY_AHEAD_MAX, "ends" where it is: the parser or the app refuses it."""
    while True:
        if len(data) - start > BODY_AHEAD_MAX + 65536:
            return len(data), pos  # over the limit: the app refuses it (413) from what is here
        line = _CHUNK_SIZE.match(data, pos)
        if line is None:
            incomplete = data.find(b"\r\n", pos) < 0 and len(data) - pos < 1024
            return (None if incomplete else len(data)), pos
        size = int(line.group(1), 16)
        if size == 0:
            trailers_end = data.find(b"\r\n\r\n", line.end() - 2)
            return (trailers_end + 4 if trailers_end >= 0 else None), pos
        if line.end() + size + 2 > len(data):
            return None, pos
        if data[line.end() + size:line.end() + size + 2] != b"\r\n":  # a chunk longer than its size said
            return len(data), pos
        pos = line.end() + size + 2


def rewrite_head(head: bytes) -> bytes:
    """Bytes a URL may not carry raw (non-ASCII, controls) %-escaped in the request target, as a browser
    sends them: `curl '...?q=Привет'` types UTF-8 raw, and gunicorn refuses every such byte with a 400
    (the Werkzeug server took them). The app then reads the same question either way; a NUL stays data."""
    line_end = head.find(b"\n")
    parts = head[:line_end].split(b" ", 2)
    if len(parts) != 3 or not _UNSAFE_IN_TARGET.search(parts[1]):
        return head
    target = _UNSAFE_IN_TARGET.sub(lambda m: b"%%%02X" % m.group()[0], parts[1])
    return b" ".join((parts[0], target, parts[2])) + head[line_end:]
