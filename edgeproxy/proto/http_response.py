"""Response heads from a backend (sans-IO): validated by llhttp, framing decided here.

A response we cannot frame for sure is a 502: forwarding it could put the backend's extra bytes in
front of the client's next response (response desync). Only the three fields that frame the
response are read (index tests per line of the head); the head is forwarded as received, except
for ``Connection`` when edgeproxy closes the client connection after this response.
"""

from __future__ import annotations

import re
from typing import Final

import httptools

from edgeproxy.proto.http1 import HttpError, MessageCounter, decimal, field_value, trimmed

# How the body of a response is delimited (RFC 9112 6.3).
NO_BODY: Final = 0
LENGTH: Final = 1
CHUNKED: Final = 2
UNTIL_CLOSE: Final = 3

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
        cl = 0
        has_length = False
        te: bytes | None = None
        has_connection = False
        # The three fields that frame a response, in any letter case, by the length of the name
        # (Connection 10, Content-Length 14, Transfer-Encoding 17) and its first letter, then
        # the name itself: most lines cost two index tests, and lower() runs only for an odd
        # spelling. (Two regexes did this, the usual spellings then, without a length field,
        # any case: 3,150 instructions more for nginx's 7 lines, callgrind, compiled.)
        for line in head.split(b"\r\n"):
            n = len(line)
            if n < 11:
                continue
            first = line[0] | 0x20  # ASCII lower case ("c" and "t" here)
            if first == 99:  # c
                if line[10] == 58:
                    name = line[:10]
                    if name == b"Connection" or name == b"connection" or name.lower() == b"connection":
                        has_connection = True
                        close = _closes(field_value(line, 10), close)
                        continue
                if n > 14 and line[14] == 58:
                    name = line[:14]
                    if name == b"Content-Length" or name == b"content-length" or name.lower() == b"content-length":
                        value = field_value(line, 14)
                        try:
                            # what int() takes beyond digits ("+1", "1_0"), llhttp refuses in feed()
                            cl = decimal(value)
                        except ValueError:
                            raise HttpError(502, "bad_response", f"invalid Content-Length {value[:20]!r}") from None
                        has_length = True
            elif first == 116 and n > 17 and line[17] == 58:  # t
                name = line[:17]
                if name == b"Transfer-Encoding" or name == b"transfer-encoding" or name.lower() == b"transfer-encoding":
                    value = field_value(line, 17)
                    te = value if value == b"chunked" else trimmed(value).rsplit(b",", 1)[-1].strip(b" \t").lower()
        self.close = close
        self.has_connection = has_connection
        if bodyless:
            self.framing = NO_BODY
        elif te is not None:
            self.framing = CHUNKED if te == b"chunked" else UNTIL_CLOSE
        elif has_length:
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


def _closes(value: bytes, close: bool) -> bool:
    """Whether the connection closes after a response with ``Connection: value``; ``close``:
    what the version says without it."""
    if value == b"keep-alive" or value == b"Keep-Alive":  # what servers send, before lower()
        return False
    tokens = {t.strip(b" \t") for t in value.lower().split(b",")}
    if b"close" in tokens:
        return True
    if b"keep-alive" in tokens:
        return False
    return close


def with_connection_close(head: bytes) -> bytes:
    """The head with its Connection lines replaced by ``Connection: close``."""
    return _CONNECTION_LINE.sub(b"", head[:-2]) + b"Connection: close\r\n\r\n"
