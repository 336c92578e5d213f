"""Issue 10 ("never down, never fooled"), the data-plane defects, end to end: a real edgeproxy
process, real sockets, recording backends. Each test failed on main before its fix."""

from __future__ import annotations

import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import (
    NO_CHECKS,
    EdgeProxy,
    HttpBackend,
    HttpClient,
    HttpRequest,
    connect,
    echo_who_handler,
    free_port,
    read_http_response,
    recv_all,
    wait_port,
)


def _h2c_server(req: HttpRequest, conn: socket.socket) -> bool:
    """A server that follows RFC 7540 3.2: offered h2c, it switches (and would then read HTTP/2
    frames that carry no forwarding headers of ours)."""
    if (req.get("Upgrade") or "").lower() == "h2c":
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
        return False
    return echo_who_handler(req, conn)


def _no_answer_to_post(req: HttpRequest, conn: socket.socket) -> bool:
    if req.method == "POST":
        return False  # the server died on it (or closed as it came): no byte of an answer
    return echo_who_handler(req, conn)


def _never_answers(req: HttpRequest, conn: socket.socket) -> bool:
    return False


class Env:
    def __init__(self) -> None:
        self.rec = HttpBackend()
        self.h2c = HttpBackend(_h2c_server)
        self.pay = HttpBackend(_no_answer_to_post)
        self.drop = HttpBackend(_never_answers)
        self.good = HttpBackend()
        self.web, self.trusted, self.tcp_trusted, self.h2c_port, self.pay_port, self.flaky = (
            free_port() for _ in range(6)
        )

    def config(self) -> dict[str, Any]:
        def http(name: str, port: int, backend: str, **extra: Any) -> dict[str, Any]:
            return {"name": name, "bind": f"127.0.0.1:{port}", "mode": "http", "backend": backend, **extra}

        trusted = {"trusted": ["127.0.0.0/8"]}
        return {
            "timeouts": {"connect": "1s", "client_idle": "30s", "server_idle": "5s", "http_request": "1s"},
            "listeners": [
                http("web", self.web, "rec"),
                http("trusted", self.trusted, "rec", accept_proxy=trusted),
                {**http("tcp_trusted", self.tcp_trusted, "rec", accept_proxy=trusted), "mode": "tcp"},
                http("h2c", self.h2c_port, "h2c"),
                http("pay", self.pay_port, "pay"),
                http("flaky", self.flaky, "flaky"),
            ],
            "backends": {
                "rec": {"health": NO_CHECKS, "servers": [self.rec.address]},
                "h2c": {"health": NO_CHECKS, "servers": [self.h2c.address]},
                "pay": {"health": NO_CHECKS, "servers": [self.pay.address]},
                "flaky": {"health": NO_CHECKS, "servers": [self.drop.address, self.good.address], "retries": 2},
            },
        }


@pytest.fixture(scope="module")
def env() -> Iterator[tuple[Env, EdgeProxy]]:
    e = Env()
    proxy = EdgeProxy(e.config())
    try:
        yield e, proxy
    finally:
        proxy.stop()


def _status_of(port: int, data: bytes) -> tuple[int, float]:
    with connect("127.0.0.1", port) as s:
        t0 = time.monotonic()
        s.sendall(data)
        status, _, _, _ = read_http_response(s.makefile("rb"))
        return status, time.monotonic() - t0


# -- 2: bare LF -----------------------------------------------------------------------------------------
def test_bare_lf_request_head_is_refused_at_once(env: tuple[Env, EdgeProxy]) -> None:
    e, _ = env
    status, took = _status_of(e.web, b"GET /bare-lf HTTP/1.1\nHost: x\n\n")
    assert status == 400  # not the 408 that http_request (1 s) would give
    assert took < 0.9


# -- 3: empty lines after a request ----------------------------------------------------------------------
def test_empty_lines_cannot_hold_a_keep_alive_connection(env: tuple[Env, EdgeProxy]) -> None:
    e, proxy = env
    with HttpClient("127.0.0.1", e.web, source="127.0.0.71") as c:
        assert c.request("/crlf-first")[0] == 200
        start = time.monotonic()
        closed_after = None
        while time.monotonic() - start < 8:
            try:
                c.send(b"\r\n")
            except OSError:
                closed_after = time.monotonic() - start
                break
            c.sock.settimeout(0.2)
            try:
                data = c.sock.recv(65536)
            except TimeoutError:
                continue
            if data.startswith(b"HTTP/1.1 408 ") or not data:
                closed_after = time.monotonic() - start
                break
        assert closed_after is not None, "still connected after 8 s of empty lines (client_idle is 30 s)"
        assert closed_after < 4  # http_request (1 s), from the first empty line
    proxy.wait_log(lambda r: r.get("status") == 408 and r.get("client", "").startswith("127.0.0.71:"))


# -- 4: h2c ----------------------------------------------------------------------------------------------
def test_h2c_upgrade_never_reaches_the_server(env: tuple[Env, EdgeProxy]) -> None:
    e, _ = env
    with HttpClient("127.0.0.1", e.h2c_port, source="127.0.0.72") as c:
        c.send(
            b"GET /h2c HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
            b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n"
        )
        status, _, _ = c.response()
    assert status == 200  # answered as the plain HTTP/1.1 request it became
    (req,) = [r for r in e.h2c.requests if r.target == "/h2c"]
    assert req.get("Upgrade") is None and req.get("HTTP2-Settings") is None
    assert "upgrade" not in (req.get("Connection") or "").lower()
    assert req.all("X-Forwarded-For") == ["127.0.0.72"]


# -- 5: PROXY v2 TLVs --------------------------------------------------------------------------------------
def _v2(src: str, tlvs: bytes) -> bytes:
    addr = socket.inet_aton(src) + socket.inet_aton("127.0.0.1") + struct.pack("!HH", 4444, 80)
    return b"\r\n\r\n\x00\r\nQUIT\n\x21\x11" + struct.pack("!H", len(addr) + len(tlvs)) + addr + tlvs


@pytest.mark.parametrize("tlvs", [b"\x04", b"\x04\x00\x40abc"], ids=["truncated-tlv", "tlv-overruns"])
def test_malformed_proxy_v2_tlvs_from_a_trusted_peer_are_not_believed(env: tuple[Env, EdgeProxy], tlvs: bytes) -> None:
    e, _ = env
    with connect("127.0.0.1", e.trusted) as s:
        s.sendall(_v2("6.6.6.6", tlvs) + b"GET /forged HTTP/1.1\r\nHost: a\r\n\r\n")
        assert recv_all(s) == b""  # dropped, no answer
    assert not [r for r in e.rec.requests if r.get("X-Forwarded-For") == "6.6.6.6"]


def test_haproxy_v2_header_with_crc32c_and_unique_id_is_believed(env: tuple[Env, EdgeProxy]) -> None:
    """The other side of the check: HAProxy's own TLVs (send-proxy-v2 with crc32c and unique-id)
    pass, so the structure check is HAProxy's and not stricter."""
    e, _ = env
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="edgeproxy-test-haproxy-") as tmp:
        cfg = Path(tmp) / "haproxy.cfg"
        cfg.write_text(
            "defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 5s\n  timeout server 5s\n"
            f"frontend f\n  bind 127.0.0.1:{port}\n  unique-id-format %ci:%cp\n  default_backend b\n"
            f"backend b\n  server edge 127.0.0.1:{e.trusted} send-proxy-v2 proxy-v2-options crc32c,unique-id\n"
        )
        haproxy = subprocess.Popen(["haproxy", "-f", str(cfg), "-db"], stderr=subprocess.PIPE)
        try:
            wait_port("127.0.0.1", port)
            with HttpClient("127.0.0.1", port, source="127.0.0.73") as c:
                seen = c.json("/via-haproxy")
        finally:
            haproxy.terminate()
            haproxy.wait(10)
    assert seen["xff"] == ["127.0.0.73"]


# -- 6, 7: framing ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "framing",
    [b"Transfer-Encoding: ,chunked\r\n", b"Transfer-Encoding: gzip, chunked\r\n", b"Content-Length: 010\r\n"],
)
def test_framing_others_read_differently_is_refused(env: tuple[Env, EdgeProxy], framing: bytes) -> None:
    e, _ = env
    body = b"5\r\nhello\r\n0\r\n\r\n" if b"chunked" in framing else b"x" * 10
    status, _ = _status_of(e.web, b"POST /framing HTTP/1.1\r\nHost: a\r\n" + framing + b"\r\n" + body)
    assert status == 400
    assert not [r for r in e.rec.requests if r.target == "/framing"]


def test_framing_goes_upstream_canonical(env: tuple[Env, EdgeProxy]) -> None:
    e, _ = env
    with HttpClient("127.0.0.1", e.web) as c:
        c.send(b"POST /canon HTTP/1.1\r\nHost: a\r\nTRANSFER-ENCODING: CHUNKED\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        assert c.response()[0] == 200
    (req,) = [r for r in e.rec.requests if r.target == "/canon"]
    assert b"\r\nTransfer-Encoding: chunked\r\n" in req.raw_head and b"CHUNKED" not in req.raw_head
    assert req.body == b"hello"


def test_chunk_size_line_limit_holds_in_one_read(env: tuple[Env, EdgeProxy]) -> None:
    e, _ = env
    body = b"5;" + b"e" * 60 * 1024 + b"\r\nhello\r\n0\r\n\r\n"
    status, _ = _status_of(e.web, b"POST /ext HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    assert status == 400


# -- 8: what is sent again -------------------------------------------------------------------------------------
def test_post_is_not_sent_again_when_the_server_closes(env: tuple[Env, EdgeProxy]) -> None:
    e, _ = env
    with HttpClient("127.0.0.1", e.pay_port) as c:
        assert c.request("/warm")[0] == 200  # leaves an idle upstream connection to reuse
        c.send(b"POST /pay HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
        assert c.response()[0] == 502
    assert len([r for r in e.pay.requests if r.target == "/pay"]) == 1


def test_get_whose_new_connection_closed_unanswered_is_sent_to_another_server(env: tuple[Env, EdgeProxy]) -> None:
    """The README's decision: like nginx's proxy_next_upstream error, an idempotent request
    without body that a server closed without a byte of answer goes to another server."""
    e, _ = env
    for i in range(4):
        with HttpClient("127.0.0.1", e.flaky) as c:
            assert c.request(f"/flaky/{i}")[0] == 200
    assert [r.target for r in e.drop.requests]  # it was tried, and closed on us
    assert sorted(r.target for r in e.good.requests) == [f"/flaky/{i}" for i in range(4)]


# -- 9: timers -----------------------------------------------------------------------------------------------
def test_trusted_tcp_peer_that_connects_and_closes_is_no_warning(env: tuple[Env, EdgeProxy]) -> None:
    e, proxy = env
    with connect("127.0.0.1", e.tcp_trusted):
        pass  # a load balancer's TCP health check
    time.sleep(2.5)  # http_request is 1 s
    warnings = [r for r in proxy.log_lines() if r.get("listener") == "tcp_trusted" and r.get("level") == "warning"]
    assert warnings == []


def test_first_request_408_is_logged_with_its_real_duration(env: tuple[Env, EdgeProxy]) -> None:
    e, proxy = env
    with connect("127.0.0.1", e.web) as s:
        s.sendall(b"GET /slow-first HTTP/1.1\r\nHost: a\r\n")
        assert recv_all(s).startswith(b"HTTP/1.1 408 ")
    rec = proxy.wait_log(lambda r: r.get("path") == "/slow-first")
    assert 900 <= rec["duration_ms"] < 5000
