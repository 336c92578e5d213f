"""Sans-IO HTTP/1 pieces with byte literals: request and response heads, chunked framing,
error responses, routing precedence."""

from __future__ import annotations

import asyncio
import itertools

import httptools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeproxy.config import Forwarded, Listener, Route, Timeouts
from edgeproxy.config.values import Address
from edgeproxy.proto.forwarded import ForwardingPolicy
from edgeproxy.proto.http1 import ChunkedReader, HeadBuffer, HttpError, blank_line, decimal, error_response
from edgeproxy.proto.http_request import (
    FORWARDED,
    FORWARDING_NAMES,
    X_REAL_IP,
    XF_HOST,
    XF_PORT,
    XF_PROTO,
    XFF,
    RequestParser,
    spellings,
    without_lines,
)
from edgeproxy.proto.http_response import (
    CHUNKED,
    LENGTH,
    NO_BODY,
    UNTIL_CLOSE,
    ResponseParser,
    crlf_head,
    with_connection_close,
)
from edgeproxy.proto.routing import RouteTable, normalize_host


def parse(head: bytes) -> RequestParser:
    p = RequestParser()
    p.parse(head)
    return p


# -- requests --------------------------------------------------------------------------------------
def test_simple_get() -> None:
    p = parse(b"GET /a/b?x=1 HTTP/1.1\r\nHost: Example.com:8080\r\nAccept: */*\r\n\r\n")
    assert (p.method, p.target, p.host, p.version_11) == (b"GET", b"/a/b?x=1", b"Example.com:8080", True)
    assert p.routing_path() == b"/a/b"
    assert (p.content_length, p.chunked, p.keep_alive, p.upgrade) == (0, False, True, False)
    assert p.forwarding == [] and not p.drop


def test_body_framing_and_keep_alive() -> None:
    p = RequestParser()
    p.parse(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n")
    assert p.content_length == 3
    assert p.feed_body(b"ab") is False
    assert p.feed_body(b"c") is True
    p.parse(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert p.chunked
    assert p.feed_body(b"0\r\n\r\n") is True
    p.parse(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")  # one parser per connection
    assert p.keep_alive and not p.drop  # passed on as it is: the backend keeps it alive too
    p.parse(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert not p.keep_alive and p.drop == {b"connection"} and p.connection_value == b""
    with pytest.raises(HttpError):  # llhttp, like us, reads nothing after a request that closes
        p.parse(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    p = parse(b"GET / HTTP/1.0\r\n\r\n")
    assert (p.version_11, p.keep_alive, p.host) == (False, False, None)


def test_connection_header_cannot_name_framing_or_routing_headers() -> None:
    p = parse(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Forwarded-For, Content-Length, Host\r\n\r\n")
    assert p.drop == {b"connection", b"x-forwarded-for"}
    assert p.connection_value == b"keep-alive"


def test_upgrade_request() -> None:
    p = parse(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    assert p.upgrade and not p.drop
    p = parse(b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n")
    assert not p.upgrade  # no Connection: upgrade, no switch


def test_absolute_form() -> None:
    p = parse(b"GET http://api.test/v1?x HTTP/1.1\r\nHost: API.test\r\n\r\n")
    assert (p.host, p.routing_path()) == (b"api.test", b"/v1")
    p = parse(b"GET http://api.test HTTP/1.1\r\nHost: api.test\r\n\r\n")
    assert p.routing_path() == b"/"
    p = parse(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")
    assert p.routing_path() == b"*"


def test_forwarding_fields_in_every_spelling() -> None:
    p = parse(
        b"GET / HTTP/1.1\r\nHost: a\r\nx-FORWARDED-for: 1.1.1.1 \r\nX_Real_IP: 2.2.2.2\r\nX-Forwarded_Port: 3\r\n"
        b"forwarded: for=x\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: h\r\nX-Forwarded-Fory: no\r\n\r\n"
    )
    assert [(c, n) for c, n, _ in p.forwarding] == [
        (XFF, b"x-forwarded-for"),
        (X_REAL_IP, b"x_real_ip"),
        (XF_PORT, b"x-forwarded_port"),
        (FORWARDED, b"forwarded"),
        (XF_PROTO, b"x-forwarded-proto"),
        (XF_HOST, b"x-forwarded-host"),
    ]
    assert p.forwarding[0][2] == b"1.1.1.1"  # trailing whitespace is not part of the value


def test_spellings() -> None:
    assert sorted(spellings(b"x-real-ip")) == [b"x-real-ip", b"x-real_ip", b"x_real-ip", b"x_real_ip"]
    assert len(FORWARDING_NAMES) == 5 * 4 + 1  # five names with two dashes, and "forwarded"


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n z\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHo st: a\r\n\r\n", 400),
        (b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400),
        (b"GET ftp://a/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET http://b/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
        (b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 405),
        (b"BREW / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ],
)
def test_refused_heads(head: bytes, status: int) -> None:
    with pytest.raises(HttpError) as e:
        parse(head)
    assert e.value.status == status


def test_without_lines() -> None:
    head = b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nx-a: 2\r\nB: 3\r\n\r\n"
    assert without_lines(head, {b"x-a"}) == b"GET / HTTP/1.1\r\nHost: a\r\nB: 3\r\n"


# -- responses -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("head", "head_request", "framing", "close"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", False, LENGTH, False),
        (b"HTTP/1.1 200 OK\r\nCONTENT-length: 5\r\n\r\n", False, LENGTH, False),  # odd spelling still frames
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", False, CHUNKED, False),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", False, UNTIL_CLOSE, False),
        (b"HTTP/1.1 200 OK\r\n\r\n", False, UNTIL_CLOSE, False),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", True, NO_BODY, False),
        (b"HTTP/1.1 204 No Content\r\n\r\n", False, NO_BODY, False),
        (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", False, NO_BODY, False),
        (b"HTTP/1.1 100 Continue\r\n\r\n", False, NO_BODY, False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", False, LENGTH, True),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", False, LENGTH, False),
        (b"HTTP/1.1 200 OK\r\nConnection: Upgrade, Close\r\nContent-Length: 0\r\n\r\n", False, LENGTH, True),
        (b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", False, LENGTH, False),
    ],
)
def test_response_framing(head: bytes, head_request: bool, framing: int, close: bool) -> None:
    p = ResponseParser()
    p.parse(head, head_request)
    assert (p.framing, p.close) == (framing, close)


@pytest.mark.parametrize(
    "head",
    [b"HTTP/2 200 OK\r\n\r\n", b"RTSP/1.0 200 OK\r\n\r\n", b"HTTP/1.1 099 X\r\n\r\n", b"HTTP/1.1 20 OK\r\n\r\n", b"x"],
)
def test_bad_status_lines(head: bytes) -> None:
    with pytest.raises(HttpError) as e:
        ResponseParser().parse(head, False)
    assert e.value.status == 502


def test_response_llhttp_cross_check() -> None:
    p = ResponseParser()
    p.parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", False)
    assert p.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nh") is False
    assert p.feed(b"i") is True
    with pytest.raises(HttpError):
        p.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n")


def test_with_connection_close() -> None:
    head = b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"
    assert with_connection_close(head) == b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


def test_error_responses_are_short_and_close() -> None:
    data = error_response(431)
    head, body = data.split(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert b"\r\nConnection: close" in head and b"Content-Length: %d" % len(body) in head


# -- chunked -----------------------------------------------------------------------------------------
BODY = b"5\r\nhello\r\n1;ext=1\r\n \r\n0\r\nTrailer: x\r\n\r\n"


@given(st.lists(st.integers(min_value=0, max_value=len(BODY) + 30), max_size=8))
@settings(max_examples=200, deadline=None)
def test_chunked_reader_any_split(cuts: list[int]) -> None:
    """However the stream is cut into reads, the same bytes come out and the rest is exact."""
    stream = BODY + b"GET /next"
    points = sorted({0, len(stream), *(c for c in cuts if c <= len(stream))})
    reader = ChunkedReader()
    out = b""
    rest: bytes | None = None
    for a, b in itertools.pairwise(points):
        assert rest is None
        got, rest = reader.feed(stream[a:b])
        out += got
        if rest is not None:
            rest += stream[b:]
            break
    assert out == BODY and rest == b"GET /next"
    assert reader.done


@pytest.mark.parametrize(
    "body",
    [b"0x5\r\n", b"+5\r\n", b"5 \r\n", b" 5\r\n", b"\r\n", b"5\n", b"5\r\nhelloX\r\n", b"1" * 17 + b"\r\n", b"g\r\n"],
)
def test_chunked_reader_refuses(body: bytes) -> None:
    with pytest.raises(HttpError):
        ChunkedReader().feed(body + b"\r\n0\r\n\r\n")


def test_chunked_reader_limits_and_trailers() -> None:
    with pytest.raises(HttpError):
        ChunkedReader().feed(b"5;" + b"a" * 5000)  # an endless chunk-size line
    forbidden = ChunkedReader(frozenset({b"x-forwarded-for"}))
    with pytest.raises(HttpError):
        forbidden.feed(b"0\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n")
    assert ChunkedReader().feed(b"0\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n")[1] == b""


def test_chunked_reader_agrees_with_llhttp() -> None:
    class Done:
        n = 0

        def on_message_complete(self) -> None:
            self.n += 1

    done = Done()
    ll = httptools.HttpRequestParser(done)
    ll.feed_data(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    out, rest = ChunkedReader().feed(BODY)
    ll.feed_data(out)
    assert rest == b"" and done.n == 1


# -- routing -----------------------------------------------------------------------------------------
ROUTES = (
    Route(backend="api", host="api.test"),
    Route(backend="api_v2", host="api.test", path_prefix="/v2/"),
    Route(backend="wild", host="*.apps.test"),
    Route(backend="static", path_prefix="/static/"),
    Route(backend="static_img", path_prefix="/static/img/"),
)


@pytest.mark.parametrize(
    ("host", "path", "backend"),
    [
        (b"api.test", b"/v2/users", "api_v2"),
        (b"API.TEST:8080", b"/v1", "api"),
        (b"api.test.", b"/static/x", "api"),  # a host route wins over a host-less one
        (b"a.apps.test", b"/", "wild"),
        (b"b.a.apps.test", b"/", "wild"),
        (b"apps.test", b"/", "default"),
        (b"www.test", b"/static/img/a.png", "static_img"),
        (b"www.test", b"/static/a.css", "static"),
        (b"www.test", b"/staticx", "default"),
        (None, b"/static/a", "static"),
    ],
)
def test_route_precedence(host: bytes | None, path: bytes, backend: str) -> None:
    assert RouteTable(ROUTES, "default").backend_for(host, path) == backend


def test_config_routes_come_before_extra_routes_of_equal_rank() -> None:
    table = RouteTable((Route(backend="config", host="a.test"), Route(backend="label", host="a.test")), None)
    assert table.backend_for(b"a.test", b"/") == "config"
    assert RouteTable((), None).backend_for(b"a.test", b"/") is None


def test_normalize_host() -> None:
    assert normalize_host(b"[::1]:80") == b"[::1]"
    assert normalize_host(b"Example.COM.:443") == b"example.com"


def test_context_consults_extra_routes() -> None:
    from edgeproxy.config import Backend
    from edgeproxy.net.context import ListenerContext
    from edgeproxy.pools import BackendPool

    loop = asyncio.new_event_loop()
    try:
        listener = Listener(
            name="web",
            bind=(Address("127.0.0.1", 80),),
            mode="http",
            backend="web",
            routes=(Route(backend="api", path_prefix="/api/"),),
        )
        pools = {n: BackendPool(Backend(name=n)) for n in ("web", "api", "labelled")}
        ctx = ListenerContext(loop, listener, Timeouts(), pools)
        assert ctx.pool_for_request(b"x.test", b"/api/1") is pools["api"]
        assert ctx.pool_for_request(b"shop.test", b"/") is pools["web"]
        ctx.extra_routes = (Route(backend="labelled", host="shop.test"), Route(backend="gone", host="old.test"))
        assert ctx.pool_for_request(b"shop.test", b"/api/1") is pools["labelled"]  # host first
        assert ctx.pool_for_request(b"old.test", b"/") is None  # its backend is not (yet) in pools
    finally:
        loop.close()


def bare_lf_head(buf: bytes) -> bytes | None:
    """What UpstreamConn does with a response head: made CRLF if it ends with a bare LF."""
    end = buf.find(b"\r\n\r\n")
    return crlf_head(buf) if blank_line(buf, 0, end if end >= 0 else len(buf)) >= 0 else None


def test_bare_lf_response_head_is_made_crlf_and_crlf_heads_are_untouched() -> None:
    # busybox httpd's CGI output: a CRLF status line, then bare-LF header lines.
    cgi = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\n\nbody with \r\n\r\n inside"
    assert bare_lf_head(cgi) == b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nbody with \r\n\r\n inside"
    assert bare_lf_head(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok") is None
    assert bare_lf_head(b"HTTP/1.1 200 OK\r\nContent-Len") is None


# -- issue 10: canonical framing, upgrades, chunk lines, bare-LF head ends ----------------------------
@pytest.mark.parametrize(
    "field",
    [
        b"Transfer-Encoding: ,chunked",
        b"Transfer-Encoding: gzip, chunked",
        b"Transfer-Encoding: chunked, chunked",
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
        b"Content-Length: 010",
        b"Content-Length: 00",
        b"Content-Length: 0x5",
    ],
)
def test_framing_we_would_not_send_ourselves_is_refused(field: bytes) -> None:
    """Issue 10 defect 6: what goes upstream is exactly ``Transfer-Encoding: chunked`` or one
    ``Content-Length: <decimal>``; a backend that reads ``,chunked`` or ``010`` (strtoll base 0:
    octal 8) differently from us would split the stream elsewhere."""
    with pytest.raises(HttpError) as e:
        parse(b"POST / HTTP/1.1\r\nHost: a\r\n" + field + b"\r\n\r\n")
    assert e.value.status == 400


@pytest.mark.parametrize(
    ("field", "sent"),
    [
        (b"Content-Length: 0", b"Content-Length: 0\r\n"),
        (b"content-length:10", b"content-length:10\r\n"),
        (b"Content-Length: 10 \t", b"Content-Length: 10\r\n"),
        (b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked\r\n"),
        (b"TRANSFER-ENCODING: CHUNKED", b"Transfer-Encoding: chunked\r\n"),
        (b"Transfer-Encoding: Chunked ", b"Transfer-Encoding: chunked\r\n"),
    ],
)
def test_framing_with_a_clear_meaning_goes_upstream_canonical(field: bytes, sent: bytes) -> None:
    head = b"POST / HTTP/1.1\r\nHost: a\r\n" + field + b"\r\n\r\n"
    out = rewritten(head, RequestParser())
    assert out.count(sent) == 1
    assert out.lower().count(b"content-length") + out.lower().count(b"transfer-encoding") == 1


H2C = (
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
    b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n"
)


def rewritten(head: bytes, parser: RequestParser) -> bytes:
    fwd = ForwardingPolicy(Forwarded()).for_client(("192.0.2.7", 40000), ("192.0.2.1", 80))
    parser.parse(head)
    return fwd.rewrite(head, parser)


def test_h2c_upgrade_is_removed_and_the_request_goes_on_as_http11() -> None:
    """Issue 10 defect 4: an h2c upgrade would tunnel HTTP/2 requests past our forwarding
    headers; Upgrade, its connection option and HTTP2-Settings are removed."""
    p = RequestParser()
    out = rewritten(H2C, p)
    assert not p.upgrade
    assert out == (
        b"GET / HTTP/1.1\r\nHost: a\r\n"
        b"X-Forwarded-For: 192.0.2.7\r\nX-Real-IP: 192.0.2.7\r\nX-Forwarded-Proto: http\r\n\r\n"
    )


@pytest.mark.parametrize(
    ("offer", "allowed", "switch"),
    [
        (b"websocket", {b"websocket"}, True),
        (b"WebSocket", {b"websocket"}, True),
        (b"websocket/13", {b"websocket"}, True),
        (b"websocket", set(), False),
        (b"h2c", {b"websocket"}, False),
        (b"websocket, h2c", {b"websocket"}, False),
        (b"TLS/1.2", {b"websocket"}, False),
        (b"tls/1.2", {b"websocket", b"tls"}, True),
    ],
)
def test_only_allowed_upgrades_switch(offer: bytes, allowed: set[bytes], switch: bool) -> None:
    p = RequestParser(frozenset(allowed))
    head = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: " + offer + b"\r\n\r\n"
    out = rewritten(head, p)
    assert p.upgrade is switch
    assert (b"\r\nUpgrade: " in out) is switch
    assert (b"Connection: keep-alive, Upgrade\r\n" if switch else b"Connection: keep-alive\r\n") in out


def test_upgrade_token_without_upgrade_field_or_over_http10_never_switches() -> None:
    p = RequestParser()
    assert b"Connection" not in rewritten(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n\r\n", p)
    assert not p.upgrade
    head = b"GET / HTTP/1.0\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n"
    assert b"Upgrade" not in rewritten(head, p) and not p.upgrade


def test_chunk_size_line_limit_holds_in_one_read() -> None:
    """Issue 10 defect 7: a 60 KiB chunk extension in one read was forwarded whole, while split
    over several reads it was refused."""
    body = b"5;" + b"e" * 60 * 1024 + b"\r\nhello\r\n0\r\n\r\n"
    with pytest.raises(HttpError) as e:
        ChunkedReader().feed(body)
    assert e.value.end == "bad_chunk"
    ok = b"5;" + b"e" * 4000 + b"\r\nhello\r\n0\r\n\r\n"
    assert ChunkedReader().feed(ok) == (ok, b"")


@given(st.binary(max_size=64), st.lists(st.integers(min_value=1, max_value=40), max_size=12))
@settings(max_examples=300, deadline=None)
def test_head_buffer_finds_the_same_end_however_the_bytes_arrive(junk: bytes, sizes: list[int]) -> None:
    """Issue 10 defect 10: heads that come in pieces are searched from where the last search
    stopped; the answer is the one a single search of everything gives."""
    stream = b"GET / HTTP/1.1\r\nHost: a\r\nX: " + junk.replace(b"\n", b"") + b"\r\n\r\nNEXT"
    whole_end = stream.find(b"\r\n\r\n") + 4
    buf = HeadBuffer()
    pos = 0
    for size in [*sizes, len(stream)]:
        end, bare = buf.add(stream[pos : pos + size])
        pos += size
        assert bare < 0
        if end >= 0:
            assert end == whole_end
            assert buf.take()[:end] == stream[:end]
            return
    raise AssertionError("end of head not found")


@pytest.mark.parametrize("head", [b"GET / HTTP/1.1\nHost: x\n\n", b"GET / HTTP/1.1\r\nHost: x\n\r\n"])
def test_head_buffer_reports_a_blank_line_with_a_bare_lf(head: bytes) -> None:
    for cut in range(1, len(head)):
        buf = HeadBuffer()
        results = [buf.add(head[:cut]), buf.add(head[cut:])]
        assert any(bare >= 0 for _, bare in results)
    assert blank_line(head, 0, len(head)) >= 0
    assert blank_line(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 0, 24) < 0


@pytest.mark.parametrize(
    "head",
    [
        b"POST /cunkedTP/1.1\r\nHost: HTTP/1.1\r\nr-Encoding: chunked\r\n\r\n",
        b"PUT /e/\nHot:~e HTTP/1.0\r\nHos:` 4\r\n\r\n",
    ],
)
def test_http09_style_request_line_is_refused(head: bytes) -> None:
    """Found by fuzz/harness_http_relay: llhttp takes "POST /x" without a version, ended by CRLF
    or a bare LF; splitting the whole head found a version on the next line, and the target
    held a line end."""
    with pytest.raises(HttpError) as e:
        parse(head)
    assert e.value.status == 400


def test_bare_lf_then_crlf_blank_line_ends_a_response_head_in_one_read_too() -> None:
    """Found by fuzz/harness_http_response: "X: y\\n\\r\\n" (a bare LF, then a CRLF blank line)
    ended the head when it came in pieces, but in one read the bounded search missed it (it
    stopped at the CRLF CRLF that the blank line starts) and the response was a 502."""
    assert bare_lf_head(b"HTTP/1.1 200 OK\r\nX: y\n\r\n\r\n") == b"HTTP/1.1 200 OK\r\nX: y\r\n\r\n\r\n"


def test_an_idle_keep_alive_parser_holds_no_llhttp_parser() -> None:
    """Issue 15: 10k idle connections each kept a 0.6 KiB llhttp parser between requests."""
    import tracemalloc

    get = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        parsers = [RequestParser() for _ in range(2000)]
        for p in parsers:
            p.parse(get)
        per_parser = (tracemalloc.get_traced_memory()[0] - before) / len(parsers)
    finally:
        tracemalloc.stop()
    assert per_parser < 700, per_parser  # 1147 B with its own llhttp


def test_llhttp_parsers_shared_between_messages_keep_each_connection_right() -> None:
    a, b = RequestParser(), RequestParser()
    a.parse(b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    b.parse(b"GET /b HTTP/1.1\r\nHost: b\r\n\r\n")  # takes a parser from between messages, if any
    assert not a.feed_body(b"3\r\nabc\r\n")
    assert a.feed_body(b"0\r\n\r\n")  # a's message ends: a's llhttp goes back for anyone's next head
    b.parse(b"PUT /b2 HTTP/1.1\r\nHost: b\r\nContent-Length: 2\r\n\r\n")
    assert (b.method, b.content_length) == (b"PUT", 2)
    assert b.feed_body(b"ok")
    a.parse(b"GET /a2 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert (a.target, a.keep_alive) == (b"/a2", False)
    # after a message that ends the connection its llhttp refuses more: never given to another
    c = RequestParser()
    c.parse(b"GET /c HTTP/1.1\r\nHost: c\r\n\r\n")
    assert c.target == b"/c"
    with pytest.raises(HttpError):
        a.parse(b"GET /a3 HTTP/1.1\r\nHost: a\r\n\r\n")


@given(st.one_of(st.integers(min_value=0, max_value=10**30).map(lambda n: b"%d" % n), st.binary(max_size=12)))
def test_decimal_is_int(value: bytes) -> None:
    """http1.decimal (Content-Length values, issue 15) answers as int() does, errors included."""
    try:
        want: int | str = int(value)
    except ValueError:
        want = "ValueError"
    try:
        got: int | str = decimal(value)
    except ValueError:
        got = "ValueError"
    assert got == want


@pytest.mark.parametrize("name", [b"Content-Length", b"CONTENT-LENGTH", b"cOnTeNt-LeNgTh"])
def test_a_response_length_field_in_any_spelling_frames(name: bytes) -> None:
    p = ResponseParser()
    p.parse(b"HTTP/1.1 200 OK\r\n" + name + b": 12\r\nconnection: CLOSE\r\n\r\n", False)
    assert (p.framing, p.content_length, p.close, p.has_connection) == (LENGTH, 12, True, True)
