"""Sans-IO HTTP/1 pieces with byte literals: request and response heads, chunked framing,
error responses, routing precedence."""

from __future__ import annotations

import asyncio
import itertools

import httptools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeproxy.config import Listener, Route, Timeouts
from edgeproxy.config.values import Address
from edgeproxy.proto.http1 import ChunkedReader, HttpError, error_response
from edgeproxy.proto.http_request import FORWARDING_NAMES, RequestParser, spellings, without_lines
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
    p.parse(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
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
        (6, b"x-forwarded-for"),
        (7, b"x_real_ip"),
        (10, b"x-forwarded_port"),
        (11, b"forwarded"),
        (8, b"x-forwarded-proto"),
        (9, b"x-forwarded-host"),
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


def test_bare_lf_response_head_is_made_crlf_and_crlf_heads_are_untouched() -> None:
    # busybox httpd's CGI output: a CRLF status line, then bare-LF header lines.
    cgi = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\n\nbody with \r\n\r\n inside"
    buf = crlf_head(cgi, cgi.find(b"\r\n\r\n"))
    assert buf == b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nbody with \r\n\r\n inside"
    crlf = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    assert crlf_head(crlf, crlf.find(b"\r\n\r\n")) is None
    partial = b"HTTP/1.1 200 OK\r\nContent-Len"
    assert crlf_head(partial, -1) is None
