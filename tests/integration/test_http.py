"""HTTP mode end to end: a real edgeproxy process, real sockets on loopback, recording backends.

Most tests share one proxy (module fixture) with several listeners; the clients bind distinct
127.0.0.x sources so "which client" is observable at the backend.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers import (
    NO_CHECKS,
    Backend,
    EdgeProxy,
    HttpBackend,
    HttpClient,
    HttpRequest,
    Seen,
    closed_port,
    connect,
    edgeproxy,
    free_port,
    hostport,
    recv_all,
)


class Env:
    """The shared proxy and its backends."""

    def __init__(self) -> None:
        self.three = [HttpBackend() for _ in range(3)]
        self.api = HttpBackend()
        self.api_v2 = HttpBackend()
        self.static = HttpBackend()
        self.one = HttpBackend()
        self.silent = HttpBackend(_never_answer)
        self.garbage = HttpBackend(_garbage)
        self.web, self.trusted, self.errors = free_port(), free_port(), free_port()
        # Refusing servers, held for the module (a free_port() is reserved for one test only):
        # one per test, so that one test's failed connect (passive health holds the server out
        # for 5 s: 503) does not change what the next one gets.
        self.refused, self.refused_upload = closed_port(), closed_port()
        self.proxy: EdgeProxy | None = None

    def config(self) -> dict[str, Any]:
        return {
            "timeouts": {"connect": "1s", "client_idle": "30s", "server_idle": "2s", "http_request": "1s"},
            "listeners": [
                {
                    "name": "web",
                    "bind": [hostport("127.0.0.1", self.web), hostport("::1", self.web)],
                    "mode": "http",
                    "backend": "three",
                    "routes": [
                        {"host": "api.test", "backend": "api"},
                        {"host": "api.test", "path_prefix": "/v2/", "backend": "api_v2"},
                        {"path_prefix": "/static/", "backend": "static"},
                    ],
                },
                {
                    "name": "trusted",
                    "bind": hostport("127.0.0.1", self.trusted),
                    "mode": "http",
                    "backend": "one",
                    "forwarded": {
                        "trusted": ["127.0.0.50/32", "10.0.0.0/8"],
                        "headers": [
                            "x-forwarded-for",
                            "x-real-ip",
                            "x-forwarded-proto",
                            "x-forwarded-host",
                            "x-forwarded-port",
                            "forwarded",
                        ],
                    },
                },
                {
                    "name": "errors",
                    "bind": hostport("127.0.0.1", self.errors),
                    "mode": "http",
                    "backend": "refused",
                    "routes": [
                        {"path_prefix": "/silent", "backend": "silent"},
                        {"path_prefix": "/garbage", "backend": "garbage"},
                        {"path_prefix": "/empty", "backend": "empty"},
                        {"path_prefix": "/upload", "backend": "refused_upload"},
                    ],
                },
            ],
            "backends": {
                "three": {"health": NO_CHECKS, "servers": [b.address for b in self.three]},
                "api": {"health": NO_CHECKS, "servers": [self.api.address]},
                "api_v2": {"health": NO_CHECKS, "servers": [self.api_v2.address]},
                "static": {"health": NO_CHECKS, "servers": [self.static.address]},
                "one": {"health": NO_CHECKS, "servers": [self.one.address]},
                "refused": {"health": NO_CHECKS, "servers": [f"127.0.0.1:{self.refused[1]}"], "retries": 0},
                "refused_upload": {
                    "health": NO_CHECKS,
                    "servers": [f"127.0.0.1:{self.refused_upload[1]}"],
                    "retries": 0,
                },
                "silent": {"health": NO_CHECKS, "servers": [self.silent.address]},
                "garbage": {"health": NO_CHECKS, "servers": [self.garbage.address]},
                "empty": {"health": NO_CHECKS, "servers": []},
            },
        }


def _never_answer(req: HttpRequest, conn: socket.socket) -> bool:
    time.sleep(5)
    return False


def _garbage(req: HttpRequest, conn: socket.socket) -> bool:
    conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
    return False


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    e = Env()
    e.proxy = EdgeProxy(e.config())
    try:
        yield e
    finally:
        e.proxy.stop()
        e.refused[0].close()
        e.refused_upload[0].close()


def access_lines(env: Env, **match: Any) -> list[dict[str, Any]]:
    assert env.proxy is not None
    return [r for r in env.proxy.log_lines() if "status" in r and all(r.get(k) == v for k, v in match.items())]


def wait_access(env: Env, **match: Any) -> dict[str, Any]:
    assert env.proxy is not None
    return env.proxy.wait_log(lambda r: "status" in r and all(r.get(k) == v for k, v in match.items()))


# -- forwarding headers ------------------------------------------------------------------------------
def test_untrusted_client_cannot_forge_forwarding_headers(env: Env) -> None:
    hostile = (
        "X-Forwarded-For: 6.6.6.6\r\nx-forwarded-for: 7.7.7.7, 8.8.8.8\r\nX_Forwarded_For: 9.9.9.9\r\n"
        "X-Real-IP: 6.6.6.6\r\nx_real_ip: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nX-Forwarded-Proto: https\r\n"
        "X-FORWARDED-HOST: evil\r\nx-forwarded-port: 1\r\n"
    )
    with HttpClient("127.0.0.1", env.web, source="127.0.0.21") as c:
        seen = c.json("/who", headers=hostile)
    assert seen["xff"] == ["127.0.0.21"]
    assert seen["real_ip"] == ["127.0.0.21"]
    assert seen["proto"] == ["http"]
    assert seen["forwarded"] == []  # not in the default headers: dropped, not set
    req = next(r for b in env.three for r in b.requests if r.target == "/who")
    names = [k.lower().replace("_", "-") for k, _ in req.headers]
    for name in ("x-forwarded-host", "x-forwarded-port", "forwarded"):
        assert name not in names
    assert names.count("x-forwarded-for") == 1


def test_trusted_proxy_chain_is_appended_and_real_ip_is_rightmost_untrusted(env: Env) -> None:
    with HttpClient("127.0.0.1", env.trusted, source="127.0.0.50") as c:
        seen = c.json(
            "/chain",
            headers="X-Forwarded-For: 203.0.113.7, 10.1.1.1\r\nX-Forwarded-For: 10.2.2.2\r\n"
            'X_Forwarded_For: 1.1.1.1\r\nX-Real-IP: 1.2.3.4\r\nForwarded: for="[2001:db8::7]"\r\n'
            "X-Forwarded-Proto: https\r\n",
        )
    assert seen["xff"] == ["203.0.113.7, 10.1.1.1, 10.2.2.2, 127.0.0.50"]
    assert seen["real_ip"] == ["203.0.113.7"]
    assert seen["proto"] == ["https"]  # the first proxy knows the scheme: kept
    assert seen["forwarded"] == ['for="[2001:db8::7]", for=127.0.0.50;proto=http']
    req = env.one.requests[-1]
    assert req.get("X-Forwarded-Host") == "example.test"
    assert req.get("X-Forwarded-Port") == str(env.trusted)
    assert not [k for k, _ in req.headers if "_" in k]
    # An untrusted client on the same listener gets everything replaced.
    with HttpClient("127.0.0.1", env.trusted, source="127.0.0.51") as c:
        seen = c.json("/chain2", headers="X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: https\r\n")
    assert seen["xff"] == ["127.0.0.51"]
    assert seen["proto"] == ["http"]
    assert seen["forwarded"] == ["for=127.0.0.51;proto=http"]


def test_ipv6_client(env: Env) -> None:
    with HttpClient("::1", env.web) as c:
        cport = c.sock.getsockname()[1]
        seen = c.json("/v6")
    assert seen["xff"] == ["::1"]
    assert seen["real_ip"] == ["::1"]
    wait_access(env, path="/v6", client=f"[::1]:{cport}")


# -- balancing, reuse, routing -------------------------------------------------------------------------
def test_keep_alive_requests_are_balanced_one_by_one_and_upstreams_reused(env: Env) -> None:
    before = [len(b.requests) for b in env.three]
    conns_before = sum(b.connections for b in env.three)
    with HttpClient("127.0.0.1", env.web, source="127.0.0.22") as c:
        for i in range(30):
            assert c.json(f"/rr/{i}")["path"] == f"/rr/{i}"
    counts = [len(b.requests) - n for b, n in zip(env.three, before, strict=True)]
    assert counts == [10, 10, 10]
    # 30 requests over one client connection; the backends saw at most one connection each
    # beyond what earlier tests opened: idle upstream connections are reused.
    assert sum(b.connections for b in env.three) - conns_before <= 3


def test_routing_by_host_then_longest_prefix(env: Env) -> None:
    with HttpClient("127.0.0.1", env.web) as c:
        assert c.json("/x", host="API.test:8080")["path"] == "/x"
        assert c.json("/v2/users", host="api.test")["path"] == "/v2/users"
        assert c.json("/static/app.js", host="api.test")["path"] == "/static/app.js"  # host wins
        assert c.json("/static/logo.png", host="www.test")["path"] == "/static/logo.png"
        assert c.json("/other", host="www.test")["path"] == "/other"
    assert [r.target for r in env.api.requests][-2:] == ["/x", "/static/app.js"]
    assert [r.target for r in env.api_v2.requests] == ["/v2/users"]
    assert [r.target for r in env.static.requests] == ["/static/logo.png"]
    assert any(r.target == "/other" for b in env.three for r in b.requests)
    rec = wait_access(env, path="/v2/users")
    assert rec["backend"] == "api_v2" and rec["server"] == env.api_v2.address


def test_pipelined_requests_are_answered_in_order(env: Env) -> None:
    with HttpClient("127.0.0.1", env.web) as c:
        c.send(b"".join(b"GET /pipe/%d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(5)))
        paths = [json.loads(c.response()[2])["path"] for _ in range(5)]
    assert paths == [f"/pipe/{i}" for i in range(5)]


def test_pipelined_requests_then_half_close_are_all_answered(env: Env) -> None:
    with HttpClient("127.0.0.1", env.web) as c:
        c.send(b"".join(b"GET /half/%d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(3)))
        c.sock.shutdown(socket.SHUT_WR)
        paths = [json.loads(c.response()[2])["path"] for _ in range(3)]
        assert c.reader.read() == b""  # then the proxy closes
    assert paths == ["/half/0", "/half/1", "/half/2"]


# -- errors ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "status", "end"),
    [
        ("/refused", 502, "connect_failed"),
        ("/garbage", 502, "bad_response"),
        ("/empty", 503, "no_server"),
        ("/silent", 504, "server_timeout"),
    ],
)
def test_upstream_failures(env: Env, path: str, status: int, end: str) -> None:
    with HttpClient("127.0.0.1", env.errors) as c:
        t0 = time.monotonic()
        got, headers, body = c.request(path)
        assert got == status
        assert headers["connection"] == "close"
        assert body == f"{status} {_PHRASES[status]}\n".encode()
        assert recv_all(c.sock) == b""  # and the connection is closed
        if status == 504:
            assert 1.5 < time.monotonic() - t0 < 5  # server_idle is 2s
    rec = wait_access(env, path=path)
    assert (rec["status"], rec["end"]) == (status, end)


_PHRASES = {400: "Bad Request", 408: "Request Timeout", 431: "Request Header Fields Too Large", 502: "Bad Gateway"}
_PHRASES |= {503: "Service Unavailable", 504: "Gateway Timeout", 505: "HTTP Version Not Supported"}


def test_error_answer_survives_a_request_body_still_arriving(env: Env) -> None:
    """The error answer comes while the client is still uploading: it must not be lost to a
    reset. (A refusing server of its own: 502, whichever test ran before.)"""
    with HttpClient("127.0.0.1", env.errors) as c:
        size = 8 * 1024 * 1024
        c.send(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size)
        block = b"x" * 65536
        for _ in range(size // len(block)):
            c.send(block)  # no reset while we send: the proxy reads and drops the rest
        status, headers, _ = c.response()
        assert status == 502 and headers["connection"] == "close"


def test_slow_head_gets_408_and_huge_head_431(env: Env) -> None:
    with connect("127.0.0.1", env.web) as s:
        s.sendall(b"GET /slowloris HTTP/1.1\r\nHost: a\r\nX-A: b\r\n")
        t0 = time.monotonic()
        data = recv_all(s)  # never finishes the head: http_request (1s) ends it
        assert data.startswith(b"HTTP/1.1 408 ")
        assert 0.7 < time.monotonic() - t0 < 4
    with connect("127.0.0.1", env.web) as s:
        s.sendall(b"GET /big HTTP/1.1\r\nHost: a\r\n" + b"X-Pad: " + b"a" * 17000 + b"\r\n\r\n")
        assert recv_all(s).startswith(b"HTTP/1.1 431 ")
    # A connection that never sends a byte is closed silently at http_request.
    with connect("127.0.0.1", env.web) as s:
        assert recv_all(s) == b""
    wait_access(env, status=408)
    wait_access(env, status=431)


# -- bodies, 100-continue, upgrade -------------------------------------------------------------------------
def test_expect_100_continue(env: Env) -> None:
    with HttpClient("127.0.0.1", env.web) as c:
        c.send(b"POST /upload HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        status, _, _ = c.response()  # the backend (via the proxy) invites the body
        assert status == 100
        c.send(b"hello")
        status, _, body = c.response()
        assert status == 200 and json.loads(body)["body_len"] == 5


def test_head_204_304_and_http10(env: Env) -> None:
    with HttpClient("127.0.0.1", env.web) as c:
        status, headers, body = c.request("/head", method="HEAD")
        assert status == 200 and body == b"" and int(headers["content-length"]) > 0
        assert c.json("/after-head")["path"] == "/after-head"  # framing survived the HEAD
    with connect("127.0.0.1", env.web) as s:
        s.sendall(b"GET /ten HTTP/1.0\r\n\r\n")
        data = recv_all(s)  # an HTTP/1.0 client without keep-alive: response, then close
    assert data.startswith(b"HTTP/1.1 200 ") and b"Connection: close\r\n" in data
    assert json.loads(data.split(b"\r\n\r\n", 1)[1])["path"] == "/ten"


def test_connection_close_from_client_is_honoured(env: Env) -> None:
    with HttpClient("127.0.0.1", env.web) as c:
        status, headers, _ = c.request("/bye", headers="Connection: close\r\n")
        assert status == 200 and headers["connection"] == "close"
        assert recv_all(c.sock) == b""
    req = next(r for b in env.three for r in b.requests if r.target == "/bye")
    assert req.get("Connection") is None  # hop-by-hop: the upstream connection stays reusable


def test_hop_by_hop_header_abuse_cannot_strip_forwarding_headers(env: Env) -> None:
    with HttpClient("127.0.0.1", env.web, source="127.0.0.23") as c:
        seen = c.json("/hop", headers="Connection: keep-alive, X-Forwarded-For, X-Real-IP, Content-Length\r\n")
    assert seen["xff"] == ["127.0.0.23"] and seen["real_ip"] == ["127.0.0.23"]
    req = next(r for b in env.three for r in b.requests if r.target == "/hop")
    assert req.get("Connection") == "keep-alive"


def test_many_clients_in_parallel_each_get_their_own_answer(env: Env) -> None:
    errors: list[str] = []

    def client(i: int) -> None:
        try:
            with HttpClient("127.0.0.1", env.web, source=f"127.0.0.{30 + i % 20}") as c:
                for j in range(5):
                    seen = c.json(f"/par/{i}/{j}")
                    if seen["path"] != f"/par/{i}/{j}" or seen["xff"] != [f"127.0.0.{30 + i % 20}"]:
                        errors.append(f"client {i}: {seen}")
        except (OSError, AssertionError) as e:
            errors.append(f"client {i}: {e!r}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert Counter(r.target.split("/")[1] for b in env.three for r in b.requests)["par"] == 200


def test_access_log_line(env: Env) -> None:
    with HttpClient("127.0.0.1", env.web, source="127.0.0.24") as c:
        cport = c.sock.getsockname()[1]
        c.request("/logged?q=1", host="www.test", method="POST", body=b"abc")
    rec = wait_access(env, path="/logged?q=1")
    assert rec["listener"] == "web"
    assert rec["client"] == f"127.0.0.24:{cport}"
    assert (rec["method"], rec["host"], rec["status"], rec["backend"], rec["end"]) == (
        "POST",
        "www.test",
        200,
        "three",
        "ok",
    )
    assert rec["server"] in {b.address for b in env.three}
    assert rec["bytes_in"] > 3 and rec["bytes_out"] > 0
    for key in ("duration_ms", "connect_ms", "response_ms"):
        assert isinstance(rec[key], (int, float)) and rec[key] >= 0


def test_short_server_idle_is_not_held_back_by_longer_timers() -> None:
    silent = HttpBackend(_never_answer)
    port = free_port()
    proxy = EdgeProxy(
        {
            "timeouts": {"server_idle": "300ms", "http_request": "10s", "client_idle": "30s"},
            "listeners": [{"name": "web", "bind": hostport("127.0.0.1", port), "mode": "http", "backend": "b"}],
            "backends": {"b": {"health": NO_CHECKS, "servers": [silent.address]}},
        }
    )
    try:
        with HttpClient("127.0.0.1", port) as c:
            t0 = time.monotonic()
            assert c.request("/")[0] == 504
            assert time.monotonic() - t0 < 2.5
    finally:
        proxy.stop()
        silent.close()


def test_cgi_style_bare_lf_response_head_is_accepted() -> None:
    """busybox httpd's CGI answers end header lines with a bare LF (what the swarm test image
    runs); like nginx and HAProxy, edgeproxy forwards that response rather than answering 502."""

    def cgi(conn: socket.socket, seen: Seen) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            request += conn.recv(65536)
        xff = next(line for line in request.split(b"\r\n") if line.lower().startswith(b"x-forwarded-for:"))
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\n\nsaw " + xff.split(b":", 1)[1].strip() + b"\n")

    backend = Backend(cgi)
    port = free_port()
    cfg = {
        "listeners": [{"name": "web", "bind": f"127.0.0.1:{port}", "mode": "http", "backend": "cgi"}],
        "backends": {"cgi": {"servers": [backend.address], "health": NO_CHECKS}},
    }
    with edgeproxy(cfg), HttpClient("127.0.0.1", port, source="127.0.0.61") as c:
        status, headers, body = c.request("/cgi-bin/ip")
    assert (status, headers["content-type"], body) == (200, "text/plain", b"saw 127.0.0.61\n")
