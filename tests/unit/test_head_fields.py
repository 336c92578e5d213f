"""The header fields the request and response parsers act on, found by index tests per line
(proto/http_request._colon, ResponseParser.parse), against the regexes they replaced as the
oracle: every spelling (letter case, ``_`` for ``-`` where SPEC.md says so), colons in values,
whitespace around values, names of the same length as ours."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from edgeproxy.proto.http1 import HttpError, decimal
from edgeproxy.proto.http_request import FIELD_CODES, HOST, XFF, RequestParser
from edgeproxy.proto.http_response import CHUNKED, LENGTH, NO_BODY, UNTIL_CLOSE, ResponseParser

_REQUEST_FIELDS = re.compile(
    rb"\r\n(host|content-length|transfer-encoding|connection|upgrade|http2-settings"
    rb"|x[-_]forwarded[-_](?:for|proto|host|port)|x[-_]real[-_]ip|forwarded):[ \t]*([^\r]*)",
    re.IGNORECASE,
)
_RESPONSE_FIELDS = re.compile(rb"\r\n(content-length|transfer-encoding|connection):[ \t]*([^\r]*)", re.IGNORECASE)

# Names of every length _colon tests (and one more or less), ours and others.
_OTHER_NAMES = [
    b"Date", b"Hosts", b"Referer", b"Upgrades", b"Sec-Ch-Ua", b"X-Real-IPs", b"User-Agent", b"Connections",
    b"Sec-Fetch-Dest", b"Content-Lengths", b"Accept-Encoding", b"X-Forwarded-Fo", b"X-Requested-With",
    b"Transfer-Encodin", b"Set-Cookie", b"Keep-Alive", b"Content-Type", b"a",
]  # fmt: skip


@st.composite
def _spelling(draw: st.DrawFn, names: list[bytes]) -> bytes:
    name = draw(st.sampled_from(names))
    if name.startswith((b"x-", b"forwarded")) or b"real" in name:
        name = bytes(draw(st.sampled_from(b"-_")) if c == 45 else c for c in name)
    return bytes(c ^ 0x20 if 97 <= c <= 122 and draw(st.booleans()) else c for c in name)


_VALUE = st.binary(max_size=12).map(lambda b: bytes(c for c in b if 33 <= c < 127)).map(lambda v: v or b"x")
_OWS = st.sampled_from([b"", b" ", b"\t", b"  "])


@st.composite
def _line(draw: st.DrawFn, ours: list[bytes]) -> bytes:
    name = draw(st.one_of(_spelling(ours), st.sampled_from(_OTHER_NAMES)))
    value = draw(_VALUE) + draw(st.sampled_from([b"", b":", b"a:b", b": x"]))
    return name + b":" + draw(_OWS) + value + draw(_OWS)


_FORWARDING_AND_HOST = [n for n, code in FIELD_CODES.items() if code >= XFF or code == HOST]


@given(st.lists(_line(_FORWARDING_AND_HOST), max_size=8))
@settings(max_examples=400, deadline=None)
def test_request_fields_are_what_the_regex_found(lines: list[bytes]) -> None:
    head = b"GET / HTTP/1.1\r\n" + b"".join(line + b"\r\n" for line in lines) + b"\r\n"
    parser = RequestParser()
    try:
        parser.parse(head)
    except HttpError as e:
        hosts = [m for m in _REQUEST_FIELDS.findall(head) if m[0].lower() == b"host"]
        assert len(hosts) != 1, e.detail  # only a missing or repeated Host is refused here
        return
    found = [(name.lower(), value.rstrip(b" \t")) for name, value in _REQUEST_FIELDS.findall(head)]
    assert parser.host == next(value for name, value in found if name == b"host")
    assert [(lname, value) for _, lname, value in parser.forwarding] == [f for f in found if f[0] != b"host"]
    for code, lname, _ in parser.forwarding:
        assert FIELD_CODES[lname.replace(b"_", b"-")] == code


def _expected_response(head: bytes, head_request: bool) -> tuple[int, int, bool, bool] | str:
    """(framing, content_length, close, has_connection) as the regex and the replaced loop said."""
    status = int(head[9:12])
    close = head[7] == 0x30
    cl: int | None = None
    te: bytes | None = None
    has_connection = False
    for name, value in _RESPONSE_FIELDS.findall(head):
        name = name.lower()
        if name == b"content-length":
            try:
                cl = decimal(value)
            except ValueError:
                return "502"
        elif name == b"transfer-encoding":
            te = value.rstrip(b" \t").rsplit(b",", 1)[-1].strip(b" \t").lower()
        else:
            has_connection = True
            tokens = {t.strip(b" \t") for t in value.lower().split(b",")}
            close = True if b"close" in tokens else False if b"keep-alive" in tokens else close
    if status < 200 or status in (204, 304) or head_request:
        return NO_BODY, 0, close, has_connection
    if te is not None:
        return (CHUNKED if te == b"chunked" else UNTIL_CLOSE), 0, close, has_connection
    if cl is not None:
        return LENGTH, cl, close, has_connection
    return UNTIL_CLOSE, 0, close, has_connection


_FRAMING_NAMES = [b"content-length", b"transfer-encoding", b"connection"]
_FRAMING_VALUES = [b"5", b"12 ", b"0", b"chunked", b"gzip, chunked", b"CHUNKED ", b"close", b"keep-alive",
                   b"Keep-Alive", b"upgrade, close", b"x:y", b"-1", b"1_0"]  # fmt: skip


@given(
    st.sampled_from([b"HTTP/1.1 200 OK", b"HTTP/1.0 200 OK", b"HTTP/1.1 204 No Content", b"HTTP/1.1 101 Switching"]),
    st.lists(
        st.one_of(
            _line(_FRAMING_NAMES),
            st.tuples(_spelling(_FRAMING_NAMES), _OWS, st.sampled_from(_FRAMING_VALUES)).map(lambda t: b"%s:%s%s" % t),
        ),
        max_size=6,
    ),
    st.booleans(),
)
@settings(max_examples=400, deadline=None)
def test_response_framing_is_what_the_regex_found(status: bytes, lines: list[bytes], head_request: bool) -> None:
    head = status + b"\r\n" + b"".join(line + b"\r\n" for line in lines) + b"\r\n"
    parser = ResponseParser()
    expected = _expected_response(head, head_request)
    try:
        parser.parse(head, head_request)
    except HttpError as e:
        assert expected == "502", e.detail
        return
    length = parser.content_length if parser.framing == LENGTH else 0
    assert (parser.framing, length, parser.close, parser.has_connection) == expected


def test_a_colon_in_a_value_where_a_longer_name_would_end_hides_no_field() -> None:
    """``Connection: ab:cd`` has a colon at 14, where Content-Length's would be: still Connection."""
    parser = ResponseParser()
    parser.parse(b"HTTP/1.1 200 OK\r\nConnection: ab:close\r\nContent-Length: 3\r\n\r\n", False)
    assert (parser.has_connection, parser.framing, parser.content_length) == (True, LENGTH, 3)
    parser.parse(b"HTTP/1.1 200 OK\r\nCONNECTION: close\r\nContent-Length: 3\r\n\r\n", False)
    assert parser.close and parser.has_connection  # an odd spelling of Connection counts too
    request = RequestParser()
    request.parse(b"GET / HTTP/1.1\r\nab:c:x-forwarded-for:1\r\nHost: a\r\nX_Forwarded_For: 2 \r\n\r\n")
    assert request.host == b"a"
    assert request.forwarding == [(XFF, b"x_forwarded_for", b"2")]


def test_a_chunked_body_refused_after_its_head_is_the_same_failure_whatever_the_cut() -> None:
    # fuzz http_response: a bad trailer after a valid head. In one read the refusal comes before
    # anything is sent (the client gets our 502); cut after the head, the head went out first and
    # the response is cut short. The harness takes that as the same failure, and nothing else.
    from fuzz.harness_http_response import _run, _same_failure, test_one_input

    data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\x00\x00\r\n\xff\n"
    cut = data.index(b"\r\n\r\n") + 4
    whole, split = _run(data, 0, False), _run(data, cut, False)
    assert whole == (b"", "502 bad_response")
    assert split == (data[:cut], "502 bad_response")
    assert _same_failure(whole, split)
    # the harness's first byte: the cut (its value modulo len + 1), and even (not a HEAD request)
    first = next(b for b in range(0, 256, 2) if b % (len(data) + 1) == cut)
    test_one_input(bytes([first]) + data)
    # what the exception does not cover: a different byte, a different end, a response not refused
    assert not _same_failure((b"HTTP/1.1 200 OK\r\n\r\n", "502 bad_response"), (b"HTTP/1.1 201", "502 bad_response"))
    assert not _same_failure((b"", "502 bad_response"), (b"", "504 timeout"))
    assert not _same_failure((b"", "done"), (b"x", "done"))
