"""Request heads (sans-IO): parse once, refuse anything that could smuggle, rewrite minimally.

llhttp (``httptools``) validates the whole head in C: request line, token header names, no bare
CR or LF, no obs-fold, no control bytes, a single valid Content-Length, Content-Length together
with Transfer-Encoding, a Transfer-Encoding that does not end in ``chunked``. We add the checks
it leaves lenient (RFC 9112): Transfer-Encoding on HTTP/1.0, versions other than 1.0/1.1, extra
spaces in the request line, a missing or repeated Host, an absolute-form target that disagrees
with Host, CONNECT. The framing we forward is canonical (issue 10): exactly one
``Content-Length: <decimal>`` or exactly one ``Transfer-Encoding: chunked``. A value whose meaning
is clear but that we would not write so (``CHUNKED``, trailing whitespace) is rewritten; one that
servers read differently (gunicorn, Mongoose, ``strtoll(v, NULL, 0)``: ``Transfer-Encoding:
,chunked``, ``gzip, chunked``, ``Content-Length: 010``, a repeated line) is refused with 400,
because such a server would split the stream elsewhere than we do.

Protocol switches are tunnels into a parser we do not control: only the protocols the listener
allows (``upgrades``, default ``websocket``) go through. Any other ``Upgrade`` is removed with the
``upgrade`` connection option, and ``HTTP2-Settings`` always is, so an ``h2c`` upgrade becomes a
plain HTTP/1.1 request (RFC 9113 3.2 lets the server ignore it) and a server can never start
reading HTTP/2 frames that carry no forwarding headers of ours.

The fields a proxy acts on are then picked out of the validated head without a regex: one split
into lines, and per line a few index tests that find the colon only where a name of ours could end
(``_colon``), so most lines cost no lookup at all. Because llhttp has already checked the syntax,
every line after the request line is a real header line. (The case-insensitive regex this replaces,
one alternation tried at every line start, made ``parse`` 1,800 instructions dearer for
``GET / HTTP/1.1`` + Host and 8,100 for a 10-line browser request: callgrind, compiled.)
"""

from __future__ import annotations

from typing import Any, Final

import httptools

from edgeproxy.proto.http1 import HttpError, MessageCounter, decimal, field_value, trimmed

# Field codes. The forwarding headers come in any letter case and, for the spoofing trick that
# works on CGI/WSGI-style servers (which turn "-" into "_"), with underscores too.
HOST: Final = 1
CONTENT_LENGTH: Final = 2
TRANSFER_ENCODING: Final = 3
CONNECTION: Final = 4
UPGRADE: Final = 5
HTTP2_SETTINGS: Final = 6
XFF: Final = 7
X_REAL_IP: Final = 8
XF_PROTO: Final = 9
XF_HOST: Final = 10
XF_PORT: Final = 11
FORWARDED: Final = 12

_FORWARDING_BASE: Final = {
    b"x-forwarded-for": XFF,
    b"x-real-ip": X_REAL_IP,
    b"x-forwarded-proto": XF_PROTO,
    b"x-forwarded-host": XF_HOST,
    b"x-forwarded-port": XF_PORT,
    b"forwarded": FORWARDED,
}
FIELD_CODES: Final[dict[bytes, int]] = {
    b"host": HOST,
    b"content-length": CONTENT_LENGTH,
    b"transfer-encoding": TRANSFER_ENCODING,
    b"connection": CONNECTION,
    b"upgrade": UPGRADE,
    b"http2-settings": HTTP2_SETTINGS,
    **_FORWARDING_BASE,
}


def spellings(name: bytes) -> list[bytes]:
    """``x-real-ip`` -> every mix of ``-`` and ``_``: ``x-real-ip``, ``x_real-ip``, ... ``x_real_ip``."""
    out = [b""]
    for part_no, part in enumerate(name.split(b"-")):
        out = [o + sep + part for o in out for sep in ((b"",) if part_no == 0 else (b"-", b"_"))]
    return out


# The spellings that nearly every client uses, looked up before lower-casing (saves a call
# per header on the hot path); 0: a common header we do not act on whose name has the length of
# one we do (see _colon), so it costs no lower() either.
_USUAL_SPELLING: Final[dict[bytes, int]] = {}
for _name in (b"user-agent", b"referer", b"accept-encoding", b"accept-language", b"accept-charset", b"keep-alive",
              b"sec-fetch-dest", b"sec-fetch-mode", b"sec-fetch-site", b"sec-fetch-user", b"sec-ch-ua",
              b"x-requested-with", b"x-forwarded-server"):  # fmt: skip
    for _spelling in (_name, _name.title(), _name.upper()):
        _USUAL_SPELLING[_spelling] = 0
for _name, _code in FIELD_CODES.items():
    for _spelling in (_name, _name.title(), _name.upper()):
        _USUAL_SPELLING[_spelling] = _code
_USUAL_SPELLING[b"X-Real-IP"] = X_REAL_IP
_USUAL_SPELLING[b"HTTP2-Settings"] = HTTP2_SETTINGS
_LOWER: Final = {code: name for name, code in FIELD_CODES.items()}
# The name lengths _colon tests; a new field code needs its length there.
assert {len(name) for name in FIELD_CODES} == {4, 7, 9, 10, 14, 15, 16, 17}


def _colon(line: bytes) -> int:
    """Where the colon after the name of a header line is, if the name has the length of one we
    act on (host 4 ... transfer-encoding 17); else -1.

    A header name is a token (llhttp checked it), so it holds no colon: testing the lengths in
    ascending order, the first colon found ends the name when its length is one of ours; any
    later hit (a colon in the value of a shorter name) gives a "name" with a colon in it, which
    no lookup matches.

    Unrolled on purpose: compiled, each test is a length compare and a byte load; a loop over a
    tuple of lengths would fetch and unbox a Python int per test (this runs on every header line
    of every request)."""
    n = len(line)
    if n > 4 and line[4] == 58:
        return 4
    if n > 7 and line[7] == 58:
        return 7
    if n > 9 and line[9] == 58:
        return 9
    if n > 10 and line[10] == 58:
        return 10
    if n > 14 and line[14] == 58:
        return 14
    if n > 15 and line[15] == 58:
        return 15
    if n > 16 and line[16] == 58:
        return 16
    if n > 17 and line[17] == 58:
        return 17
    return -1


# Every spelling of every forwarding header, lower case: what an untrusted client may not send,
# in the head or in chunked trailers.
FORWARDING_NAMES: Final = frozenset(spelling for name in _FORWARDING_BASE for spelling in spellings(name))


# Never strippable by a client's Connection header (RFC 9110 7.6.1 hop-by-hop list abuse): the
# framing and the routing of the request must stay what we parsed.
_NOT_HOP_BY_HOP: Final = frozenset({b"host", b"content-length", b"transfer-encoding", b"connection"})

DEFAULT_UPGRADES: Final = frozenset({b"websocket"})

# llhttp parsers between messages. An idle keep-alive connection holds none (0.6 KiB each, half of
# its parser: issue 15): a RequestParser takes one for a head and gives it back at the end of a
# message the connection may follow with another, where llhttp waits for a new message whoever
# feeds it. Bounded: a burst of connections does not leave its parsers here for good.
_FREE_LLHTTP: Final[list[tuple[Any, MessageCounter]]] = []
_FREE_MAX: Final = 256


_NO_COUNTER: Final = MessageCounter()  # what a parser between messages points at (never counted)


def _new_llhttp() -> tuple[Any, MessageCounter]:
    counter = MessageCounter()
    return httptools.HttpRequestParser(counter), counter


def upgrade_protocols(names: tuple[str, ...] | list[str]) -> frozenset[bytes]:
    """A listener's ``upgrades`` (protocol names, any case) as the parser matches them."""
    return frozenset(n.lower().encode("ascii") for n in names)


class RequestParser:
    """One client connection's request parser; ``parse`` fills the attributes for one head.

    The attributes are overwritten per request instead of building an object per request: the
    relay reads them right away.
    """

    __slots__ = (
        "_complete",
        "_llhttp",
        "allowed_upgrades",
        "chunked",
        "connection_value",
        "content_length",
        "drop",
        "forwarding",
        "host",
        "keep_alive",
        "method",
        "path",
        "restated",
        "target",
        "upgrade",
        "version_11",
    )

    def __init__(self, upgrades: frozenset[bytes] = DEFAULT_UPGRADES) -> None:
        self._llhttp: Any = None  # taken for a message, given back after it (see _FREE_LLHTTP)
        self._complete = _NO_COUNTER
        # lower-case protocol names (RFC 9110 7.8, without "/version") that may switch
        self.allowed_upgrades = upgrades
        self.method = b""
        self.target = b""
        self.path = b""
        self.host: bytes | None = None
        self.version_11 = True
        self.content_length = 0
        self.chunked = False
        self.keep_alive = True
        self.upgrade = False
        # (code, lower-case name as sent, value) of each forwarding header line
        self.forwarding: list[tuple[int, bytes, bytes]] = []
        # lower-case names of header lines the rewrite must drop (hop-by-hop), or empty
        self.drop: set[bytes] = set()
        # when ``drop`` has b"connection": the Connection value to send instead (may be empty)
        self.connection_value = b""
        # the lines to append in place of dropped ones: Connection (connection_value), and a
        # framing field said canonically ("Transfer-Encoding: CHUNKED" -> "chunked")
        self.restated = b""

    def parse(self, head: bytes) -> None:
        """``head``: a complete head, request line to the empty line. Raises HttpError."""
        llhttp = self._llhttp
        if llhttp is None:
            llhttp, self._complete = _FREE_LLHTTP.pop() if _FREE_LLHTTP else _new_llhttp()
            self._llhttp = llhttp
        complete = self._complete
        before = complete.count
        upgrade = False
        try:
            llhttp.feed_data(head)
        except httptools.HttpParserUpgrade:
            upgrade = True  # Connection: upgrade + Upgrade, or CONNECT: decided below
        except httptools.HttpParserError as e:
            raise HttpError(400, "bad_request", f"invalid request head: {e}") from None
        try:
            method, target, rest = head.split(b" ", 2)
        except ValueError:
            raise HttpError(400, "bad_request", "request line must be METHOD SP target SP version") from None
        version = rest[:10]
        if version == b"HTTP/1.1\r\n":
            v11 = True
        elif version == b"HTTP/1.0\r\n":
            v11 = False
        elif version[:5] == b"HTTP/" and version[8:] == b"\r\n":
            raise HttpError(505, "bad_version", f"HTTP version {version[5:8].decode('latin-1')} not supported")
        else:
            raise HttpError(400, "bad_request", "request line must be METHOD SP target SP HTTP/1.x")
        if not target or 10 in target:  # 10: LF ("in" with an int: 1/6 the cost of b"\n" here)
            # llhttp tolerates "GET  / HTTP/1.1", and takes an HTTP/0.9-style "GET /x" line ended
            # by CRLF or a bare LF, whose missing version the split finds on the next line
            # (fuzzing found both): the request line is the first line, three fields. (A CR
            # alone in the target is llhttp's "invalid URL".)
            raise HttpError(400, "bad_request", "request line must be METHOD SP target SP version")
        if method == b"CONNECT":
            raise HttpError(405, "connect_refused", "CONNECT tunnels are not offered")
        self.method = method
        self.version_11 = v11
        self.target = target

        host: bytes | None = None
        hosts = 0
        chunked = False
        close = ka_token = upgrade_token = False
        content_length = -1  # no Content-Length line (yet)
        framing_line = b""
        protocols: bytes | None = None  # the Upgrade value(s)
        forwarding = self.forwarding
        if forwarding:
            forwarding.clear()
        drop = self.drop
        if drop:
            drop.clear()
        # llhttp validated the head: CRLF line ends only, token names, no CR or LF in a value.
        lines = head.split(b"\r\n")  # the request line, the header lines, b"", b""
        for i in range(1, len(lines)):
            line = lines[i]
            colon = _colon(line)
            if colon < 0:
                continue
            name = line[:colon]
            code = _USUAL_SPELLING.get(name)
            if code is not None:
                if not code:
                    continue
                lname = _LOWER[code]
            else:
                lname = name.lower()
                code = FIELD_CODES.get(lname)
                if code is None:
                    # an underscore spelling of a forwarding header (and only of those)
                    code = FIELD_CODES.get(lname.replace(b"_", b"-"))
                    if code is None or code < XFF:
                        continue
            value = field_value(line, colon)
            if code == HOST:
                host = trimmed(value)
                hosts += 1
            elif code >= XFF:
                forwarding.append((code, lname, trimmed(value)))
            elif code == CONTENT_LENGTH:
                if content_length >= 0:
                    raise HttpError(400, "bad_request", "repeated Content-Length")
                if not value.isdigit() or value[0] == 48:  # 48: "0"; "0" itself is rare
                    content_length = _canonical_length(value)
                    if value != b"%d" % content_length:
                        framing_line = b"Content-Length: %d\r\n" % content_length
                        drop.add(b"content-length")
                else:
                    content_length = decimal(value)  # digits that llhttp parsed as a uint64
            elif code == TRANSFER_ENCODING:
                if not v11:
                    raise HttpError(400, "bad_request", "Transfer-Encoding in an HTTP/1.0 request")
                if chunked:
                    raise HttpError(400, "bad_request", "repeated Transfer-Encoding")
                if value != b"chunked":
                    if value.rstrip(b" \t").lower() != b"chunked":
                        raise HttpError(400, "bad_request", "Transfer-Encoding must be chunked alone")
                    framing_line = b"Transfer-Encoding: chunked\r\n"  # "CHUNKED", "chunked ": said plainly
                    drop.add(b"transfer-encoding")
                chunked = True
            elif code == UPGRADE:
                protocols = value if protocols is None else protocols + b"," + value
            elif code == HTTP2_SETTINGS:
                drop.add(b"http2-settings")  # only meaningful with an h2c upgrade, never allowed
            elif code == CONNECTION:
                if value == b"keep-alive" or value == b"Keep-Alive":  # what browsers send
                    ka_token = True
                    continue
                for token in value.lower().split(b","):
                    token = token.strip(b" \t")
                    if token == b"close":
                        close = True
                    elif token == b"keep-alive":
                        ka_token = True
                    elif token == b"upgrade":
                        upgrade_token = True
                    elif token and token not in _NOT_HOP_BY_HOP:
                        drop.add(token)
                        drop.add(b"connection")
        if close:
            drop.add(b"connection")
        if protocols is not None:
            upgrade_token = upgrade_token and v11 and self._allowed(protocols)
            if not upgrade_token:
                # Not a switch we relay: the request goes on as plain HTTP/1.1 without it.
                drop.add(b"upgrade")
                drop.add(b"connection")
                if upgrade:  # llhttp stopped where it expected the switch: it reads what we send
                    before = self._reparse(without_lines(head, {b"upgrade"}) + b"\r\n")
        elif upgrade_token:
            drop.add(b"connection")  # "Connection: upgrade" alone: nothing to switch to
            upgrade_token = False
        keep_alive = not close and (v11 or ka_token)
        if drop and b"connection" in drop:
            # The line goes; what it said that the backend must still hear is said again.
            tokens = [t for t, on in ((b"keep-alive", ka_token and not close), (b"upgrade", upgrade_token)) if on]
            said = self.connection_value = b", ".join(tokens)
            self.restated = b"Connection: " + said + b"\r\n" + framing_line if said else framing_line
        else:
            self.connection_value = b""
            self.restated = framing_line
        if hosts > 1:
            raise HttpError(400, "bad_request", "repeated Host header")
        if v11 and not hosts:
            raise HttpError(400, "bad_request", "missing Host header (required in HTTP/1.1)")
        if target[:1] != b"/":
            host = self._absolute_form(target, host)
        else:
            self.path = b""  # computed on demand: only routing needs it
        self.host = host
        if content_length < 0:
            content_length = 0
        self.content_length = content_length
        self.chunked = chunked
        self.keep_alive = keep_alive
        self.upgrade = upgrade and upgrade_token
        if (chunked or content_length > 0) == (complete.count != before):
            # Our framing and llhttp's must agree on whether a body follows.
            raise HttpError(400, "bad_request", "ambiguous request framing")
        if keep_alive and not self.upgrade and complete.count != before:
            self._give_back()  # the whole message: the connection holds no llhttp until its next head

    def between_messages(self) -> bool:
        """No message under way (no llhttp held): the parser may serve another connection."""
        return self._llhttp is None

    def _give_back(self) -> None:
        if len(_FREE_LLHTTP) < _FREE_MAX:
            _FREE_LLHTTP.append((self._llhttp, self._complete))
        self._llhttp = None
        self._complete = _NO_COUNTER

    def _reparse(self, head: bytes) -> int:
        """A fresh llhttp parser reads ``head``; returns the message count before it."""
        complete = self._complete
        before = complete.count
        self._llhttp = httptools.HttpRequestParser(complete)
        try:
            self._llhttp.feed_data(head)
        except httptools.HttpParserUpgrade:
            raise HttpError(400, "bad_request", "ambiguous protocol switch") from None
        except httptools.HttpParserError as e:
            raise HttpError(400, "bad_request", f"invalid request head: {e}") from None
        return before

    def _allowed(self, protocols: bytes) -> bool:
        """Every protocol the client offers is one the listener relays (RFC 9110 7.8:
        ``protocol-name["/"protocol-version]``, comma-separated, names case-insensitive)."""
        allowed = self.allowed_upgrades
        if not allowed:
            return False
        for offer in protocols.split(b","):
            name = offer.strip(b" \t").partition(b"/")[0].lower()
            if name not in allowed:
                return False
        return True

    def _absolute_form(self, target: bytes, host: bytes | None) -> bytes | None:
        if target == b"*":
            self.path = b"*"
            return host
        scheme, sep, rest = target.partition(b"://")
        if not sep or scheme.lower() not in (b"http", b"https"):
            raise HttpError(400, "bad_request", "request target must be /path, * or http://host/path")
        end = len(rest)
        for stop in (b"/", b"?"):
            i = rest.find(stop)
            if 0 <= i < end:
                end = i
        authority = rest[:end]
        # RFC 9112 3.2.2: the target's authority wins over Host. Routing on one while the
        # backend reads the other is a classic bypass, so when both are there they must agree.
        if host is not None and host.lower() != authority.lower():
            raise HttpError(400, "bad_request", "absolute-form target and Host disagree")
        path = rest[end:] or b"/"
        q = path.find(b"?")
        self.path = path if q < 0 else path[:q]
        return authority

    def routing_path(self) -> bytes:
        """The target's path (no query) for routing."""
        path = self.path
        if not path:
            target = self.target
            q = target.find(b"?")
            path = self.path = target if q < 0 else target[:q]
        return path

    def feed_body(self, data: bytes) -> bool:
        """Feed forwarded body bytes to llhttp; True once it has seen the end of the message."""
        complete = self._complete
        before = complete.count
        try:
            self._llhttp.feed_data(data)  # held since the head: a body follows it
        except httptools.HttpParserUpgrade:
            return True
        except httptools.HttpParserError as e:
            raise HttpError(400, "bad_request", f"invalid request body framing: {e}") from None
        if complete.count == before:
            return False
        if self.keep_alive:
            self._give_back()
        return True


def _canonical_length(value: bytes) -> int:
    """A Content-Length value that is not plain digits without a leading zero: its number if the
    meaning is clear (trailing OWS), else 400. ``010`` is refused, not read as 10: a backend using
    ``strtoll(v, NULL, 0)`` reads 8."""
    digits = value.rstrip(b" \t")
    if not digits.isdigit() or (digits[0] == 48 and len(digits) > 1):
        raise HttpError(400, "bad_request", "Content-Length must be a decimal number without leading zeros")
    return int(digits)


def without_lines(head: bytes, names: set[bytes] | frozenset[bytes]) -> bytes:
    """The head minus the header lines whose lower-case name is in ``names``, and minus its final
    empty line (the caller appends its own lines and the CRLF). Only for validated heads."""
    lines = head[:-4].split(b"\r\n")
    kept = [lines[0]]
    for line in lines[1:]:
        if line[: line.find(b":")].lower() not in names:
            kept.append(line)
    kept.append(b"")
    return b"\r\n".join(kept)
