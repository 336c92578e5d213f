"""Response heads from a backend (sans-IO): validated by llhttp, framing decided here.

A response we cannot frame for sure is a 502: forwarding it could put the backend's extra bytes in
front of the client's next response (response desync). Only the three fields that frame the
response are read (one regex over the validated head); the head is forwarded as received, except
for ``Connection`` when edgeproxy closes the client connection after this response.
"""

from __future__ import annotations

import re
from typing import Final

import httptools

from edgeproxy.proto.http1 import HttpError, MessageCounter, decimal

# How the body of a response is delimited (RFC 9112 6.3).
NO_BODY: Final = 0
LENGTH: Final = 1
CHUNKED: Final = 2
UNTIL_CLOSE: Final = 3

_FIELD_RE: Final = re.compile(rb"\r\n(content-length|transfer-encoding|connection):[ \t]*([^\r]*)", re.IGNORECASE)
# The spellings servers use, matched case-sensitively (twice as fast as IGNORECASE here). When it
# finds neither length field, the case-insensitive one runs, so an odd spelling still frames.
_USUAL_FIELD_RE: Final = re.compile(
    rb"\r\n(Content-Length|content-length|Transfer-Encoding|transfer-encoding|Connection|connection)"
    rb":[ \t]*([^\r]*)"
)
# "HTTP/1.x NNN" -> status: one slice and one lookup check the protocol, version and status.
_STATUS_LINE: Final = {b"HTTP/1.%d %d" % (minor, status): status for minor in (0, 1) for status in range(100, 600)}
_CONNECTION_LINE: Final = re.compile(rb"\r\nconnection:[^\r]*", re.IGNORECASE)


_LENIENT_HEAD_END: Final = re.compile(rb"\r?\n\r?\n")
_LINE_END: Final = re.compile(rb"\r?\n")


def crlf_head(buf: bytes) -> bytes:
    """``buf`` with its head's bare LF line ends made CRLF; ``http1.blank_line`` found that the
    head ends with a bare LF (before any CRLF CRLF).

    RFC 9112 2.2 lets a recipient accept a bare LF as a line end, and CGI servers such as busybox
    httpd end their header lines that way; nginx and HAProxy accept it from backends, so refusing
    it (502) would only break working apps. Requests stay strict: a bare LF there is a smuggling
    vector; here the backend is the trusted side. The check (two bounded finds) keeps the usual
    CRLF response at ~0.1 us extra.
    """
    m = _LENIENT_HEAD_END.search(buf)
    assert m is not None
    return _LINE_END.sub(b"\r\n", buf[: m.end()]) + buf[m.end() :]


class ResponseParser:
    """One upstream connection's response parser; ``parse`` fills the attributes for one head."""

    __slots__ = ("_complete", "_llhttp", "close", "content_length", "framing", "has_connection", "status")

    def __init__(self) -> None:
        self._complete = MessageCounter()
        self._llhttp = httptools.HttpResponseParser(self._complete)
        self.status = 0
        self.framing = NO_BODY
        self.content_length = 0
        self.close = False  # the backend will close after this response
        self.has_connection = False

    def parse(self, head: bytes, head_request: bool) -> None:
        """Framing fields of ``head`` (status line to the empty line); ``head_request``: it
        answers a HEAD. The syntax is checked when the bytes go through ``feed``."""
        status = _STATUS_LINE.get(head[:12])
        if status is None:
            raise HttpError(502, "bad_response", f"invalid status line {head[:20]!r}")
        self.status = status
        bodyless = status < 200 or status == 204 or status == 304 or head_request
        close = head[7] == 0x30  # HTTP/1.0: closes unless it says keep-alive
        cl, te, close, has_connection = _fields(_USUAL_FIELD_RE.findall(head), close)
        if cl is None and te is None and not bodyless:
            # No length field in the usual spelling: look again, ignoring case.
            cl, te, close, has_connection = _fields(_FIELD_RE.findall(head), head[7] == 0x30)
        self.close = close
        self.has_connection = has_connection
        if bodyless:
            self.framing = NO_BODY
        elif te is not None:
            self.framing = CHUNKED if te == b"chunked" else UNTIL_CLOSE
        elif cl is not None:
            self.framing = LENGTH
            self.content_length = cl
        else:
            self.framing = UNTIL_CLOSE

    def feed(self, data: bytes) -> bool:
        """Pass forwarded bytes (head and/or body) through llhttp; True once it has seen the end
        of the message. Raises HttpError (502) on anything it refuses."""
        complete = self._complete
        before = complete.count
        try:
            self._llhttp.feed_data(data)
        except httptools.HttpParserUpgrade:
            return True
        except httptools.HttpParserError as e:
            raise HttpError(502, "bad_response", f"invalid response: {e}") from None
        return complete.count != before

    def reset(self) -> None:
        """After a response to HEAD: llhttp cannot be told that it has no body, so it waits for
        one that never comes; a fresh parser takes the next response."""
        self._llhttp = httptools.HttpResponseParser(self._complete)


def _fields(found: list[tuple[bytes, bytes]], close: bool) -> tuple[int | None, bytes | None, bool, bool]:
    """(Content-Length, last Transfer-Encoding coding, closes?, has Connection?) of the fields."""
    cl = te = None
    has_connection = False
    for name, value in found:
        # The regexes match only Content-Length, Transfer-Encoding and Connection, whose lengths
        # differ (14, 17, 10): the length says which, in any spelling, without hashing the name.
        size = len(name)
        if size == 14:
            try:
                cl = decimal(value)  # what int() takes beyond digits ("+1", "1_0"), llhttp refuses in feed()
            except ValueError:
                raise HttpError(502, "bad_response", f"invalid Content-Length {value[:20]!r}") from None
        elif size == 17:
            te = value.rstrip(b" \t").rsplit(b",", 1)[-1].strip(b" \t").lower()
        else:
            has_connection = True
            if value == b"keep-alive" or value == b"Keep-Alive":  # what servers send, before lower()
                close = False
                continue
            tokens = {t.strip(b" \t") for t in value.lower().split(b",")}
            if b"close" in tokens:
                close = True
            elif b"keep-alive" in tokens:
                close = False
    return cl, te, close, has_connection


def with_connection_close(head: bytes) -> bytes:
    """The head with its Connection lines replaced by ``Connection: close``."""
    return _CONNECTION_LINE.sub(b"", head[:-2]) + b"Connection: close\r\n\r\n"
