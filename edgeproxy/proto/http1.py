"""HTTP/1.x framing shared by requests and responses (sans-IO): limits, errors, the short error
responses edgeproxy sends itself, and a streaming chunked-body reader.

Heads are validated by llhttp (``httptools``) in ``http_request`` / ``http_response``; bodies are
framed here because only our own reader can say *where* a message ends inside a buffer, which is
what a proxy must know to never forward the first bytes of the next message as part of this one
(RFC 9112 section 6.3, the root of request smuggling). Everything that is forwarded is also fed to
llhttp, so the two parsers check each other.
"""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Final

# RFC 9112 leaves head size to the implementation; 16 KiB is HAProxy's tune.bufsize default
# and what SPEC.md promises (431 above it). Responses may carry many Set-Cookie lines: 64 KiB.
MAX_REQUEST_HEAD: Final = 16 * 1024
MAX_RESPONSE_HEAD: Final = 64 * 1024
# A chunk-size line with extensions, and the trailer section: bounded like a head.
MAX_CHUNK_LINE: Final = 4096
MAX_TRAILERS: Final = 16 * 1024


class MessageCounter:
    """llhttp's on_message_complete, counted: request and response parsers use it to check that
    llhttp's framing agrees with ours."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0

    def on_message_complete(self) -> None:
        self.count += 1


class HttpError(Exception):
    """A message we refuse. ``status`` is what the client gets (400, 431, 502...), ``end`` the
    short reason that the access log shows, ``detail`` the human explanation."""

    def __init__(self, status: int, end: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.end = end
        self.detail = detail


def error_response(status: int) -> bytes:
    """A short, complete response that closes the connection (SPEC.md "Error responses")."""
    cached = _ERRORS.get(status)
    if cached is None:
        phrase = HTTPStatus(status).phrase
        body = f"{status} {phrase}\n".encode()
        cached = (
            f"HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\nCache-Control: no-store\r\n\r\n"
        ).encode() + body
        _ERRORS[status] = cached
    return cached


_ERRORS: Final[dict[int, bytes]] = {}


def blank_line(buf: bytes | bytearray, start: int, end: int) -> int:
    """Where the first head-ending blank line that uses a bare LF starts in ``buf[start:end]``
    (``\n\n`` or ``\n\r\n`` that is not part of CRLF CRLF), or -1.

    The caller found CRLF CRLF at ``end`` (or not at all: ``end`` is then ``len(buf)``), so
    the search is bounded by it: one regex search in C, over bytes not searched before.
    """
    # One regex search, not two ``find(sub, start, end)``: mypyc has no primitive for those, so
    # each is a generic method call whose arguments bytes.find parses as a tuple (callgrind:
    # ~2000 instructions each on a 170-byte response head, the search itself a tenth of that).
    m = _BARE_BLANK_LINE.search(buf, start, end + 2)
    return -1 if m is None else m.start()


_BARE_BLANK_LINE: Final = re.compile(rb"\n\r?\n")


def decimal(value: bytes) -> int:
    """``int(value)``, computed here for ASCII digits: compiled, int() on bytes is a generic call
    (~860 instructions for a two-digit Content-Length, the loop a tenth of that). Anything but
    digits (and the empty value) is int()'s: its result or its ValueError."""
    n = 0
    for c in value:
        if c < 48 or c > 57:
            return int(value)
        n = n * 10 + c - 48
    return n if value else int(value)


def field_value(line: bytes, colon: int) -> bytes:
    """The value of the header ``line`` whose name ends at ``colon``: after the colon and the
    optional whitespace (RFC 9112 5.1), to the end of the line, trailing whitespace kept (what
    the regex ``:[ \t]*([^\r]*)`` took). Index tests, not ``lstrip``: compiled, they are
    primitives where a method call on bytes is a generic call."""
    start = colon + 1
    n = len(line)
    while start < n and (line[start] == 32 or line[start] == 9):
        start += 1
    return line[start:]


def trimmed(value: bytes) -> bytes:
    """``value`` without trailing spaces and tabs; one index test in the usual case of none."""
    if value and (value[-1] == 32 or value[-1] == 9):
        return value.rstrip(b" \t")
    return value


class HeadBuffer:
    """The bytes of a head that did not come in one read, searched in O(n) overall.

    Each ``add`` appends to one ``bytearray`` and looks for the end of the head only in the new
    bytes (and the 3 before them, where a CRLF CRLF may straddle two reads), as h11's
    ``ReceiveBuffer`` does: a 16 KiB head sent one byte per read costs 16 Ki small appends and
    finds, not 16 Ki copies and searches of everything so far.
    """

    __slots__ = ("data", "scanned")

    def __init__(self, searched: bytes = b"") -> None:
        """``searched``: the first bytes, already searched by the caller (the end is not in them)."""
        self.data = bytearray(searched)
        self.scanned = len(searched)  # bytes already searched for the end of the head

    def __len__(self) -> int:
        return len(self.data)

    def add(self, chunk: bytes) -> tuple[int, int]:
        """Append ``chunk``; return ``(end, bare)``: ``end`` is the index just after the head's
        CRLF CRLF (-1: not there yet), ``bare`` where a blank line with a bare LF starts (-1:
        none before ``end``)."""
        data = self.data
        start = self.scanned - 3 if self.scanned > 3 else 0
        data += chunk
        crlf = data.find(b"\r\n\r\n", start)
        self.scanned = len(data)
        bare = blank_line(data, start, crlf if crlf >= 0 else len(data))
        return (crlf + 4 if crlf >= 0 else -1), bare

    def take(self) -> bytes:
        """Everything held, as bytes; the buffer is empty afterwards."""
        out = bytes(self.data)
        self.data = bytearray()
        self.scanned = 0
        return out


_HEX: Final = b"0123456789abcdefABCDEF"
_TOKEN: Final = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"

# ChunkedReader states
_SIZE: Final = 0
_DATA: Final = 1
_DATA_END: Final = 2
_TRAILER: Final = 3
_DONE: Final = 4


class ChunkedReader:
    """Frames one chunked body as it streams through, without decoding it.

    ``feed(data)`` returns ``(out, rest)``: ``out`` is the validated bytes of this body to forward
    (chunk data passes through as slices of the input, never copied into a buffer), ``rest`` is
    None while the body continues, or the bytes after its last CRLF once it has ended (the next
    pipelined message). A line that is not complete yet (a chunk-size line split across reads) is
    held back until it can be checked, so nothing unchecked is ever forwarded.

    Strict where lenient parsers have been exploited: chunk size is 1-16 hex digits and nothing
    else (no sign, no ``0x``, no spaces), every line ends in CRLF, chunk data is followed by
    exactly CRLF. ``forbidden_trailers``: trailer field names (lower case) that make the body
    invalid, e.g. the forwarding headers from an untrusted client, which some servers merge into
    the head.
    """

    __slots__ = ("_forbidden", "_left", "_line", "_state", "_trailer_size")

    def __init__(self, forbidden_trailers: frozenset[bytes] = frozenset()) -> None:
        self._state = _SIZE
        self._left = 0
        self._line = b""
        self._trailer_size = 0
        self._forbidden = forbidden_trailers

    @property
    def done(self) -> bool:
        return self._state == _DONE

    def feed(self, data: bytes) -> tuple[bytes, bytes | None]:
        if self._state == _DATA and self._left > len(data):
            self._left -= len(data)  # the bulk of a large body: one comparison per read
            return data, None
        out: list[bytes] = []
        pos = 0
        n = len(data)
        while pos < n:
            state = self._state
            if state == _DATA:
                take = min(self._left, n - pos)
                out.append(data[pos : pos + take])
                pos += take
                self._left -= take
                if not self._left:
                    self._state = _DATA_END
                continue
            nl = data.find(b"\n", pos)
            if nl < 0:
                self._line += data[pos:]
                self._check_partial()
                break
            line = self._line + data[pos : nl + 1] if self._line else data[pos : nl + 1]
            self._line = b""
            pos = nl + 1
            if line[-2:-1] != b"\r" or b"\r" in line[:-2]:
                raise HttpError(400, "bad_chunk", "chunked body: line not ended by CRLF")
            if state == _SIZE:
                if len(line) > MAX_CHUNK_LINE:  # the same limit as for a line split across reads
                    raise HttpError(400, "bad_chunk", "chunked body: line too long")
                self._size_line(line)
            elif state == _DATA_END:
                if line != b"\r\n":
                    raise HttpError(400, "bad_chunk", "chunked body: chunk data not followed by CRLF")
                self._state = _SIZE
            else:  # _TRAILER
                out.append(line)
                if line == b"\r\n":
                    self._state = _DONE
                    return b"".join(out), data[pos:]
                self._trailer_line(line)
                continue
            out.append(line)
        return b"".join(out), None

    def _size_line(self, line: bytes) -> None:
        size, _, _ext = line[:-2].partition(b";")
        # bytes.strip(chars) removes every leading/trailing hex digit: empty means all were.
        if not size or len(size) > 16 or size.strip(_HEX):
            raise HttpError(400, "bad_chunk", f"chunked body: invalid chunk size {size[:20]!r}")
        self._left = int(size, 16)
        self._state = _DATA if self._left else _TRAILER

    def _trailer_line(self, line: bytes) -> None:
        self._trailer_size += len(line)
        if self._trailer_size > MAX_TRAILERS:
            raise HttpError(400, "bad_chunk", "chunked body: trailer section too large")
        name, colon, _ = line.partition(b":")
        if not colon or not name or name.strip(_TOKEN):
            raise HttpError(400, "bad_chunk", "chunked body: invalid trailer field")
        if name.lower() in self._forbidden:
            raise HttpError(400, "bad_chunk", f"chunked body: {name.decode('latin-1')} not allowed in trailers")

    def _check_partial(self) -> None:
        limit = 2 if self._state == _DATA_END else MAX_CHUNK_LINE if self._state == _SIZE else MAX_TRAILERS
        if len(self._line) > limit:
            raise HttpError(400, "bad_chunk", "chunked body: line too long")
