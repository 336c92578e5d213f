"""HTTP mode streaming: 100 MiB bodies both ways through slow peers with bounded proxy memory,
WebSocket after 101, responses framed by close, PROXY headers on upstream connections, drain."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import socket
import struct
import threading
import time
from collections.abc import Iterator
from ipaddress import IPv4Address

import pytest

from tests.helpers import (
    NO_CHECKS,
    Backend,
    EdgeProxy,
    HttpBackend,
    HttpClient,
    HttpRequest,
    Seen,
    connect,
    free_port,
    hostport,
    iter_chunked,
    read_http_request,
    recv_all,
)

SIZE = 100 * 1024 * 1024
BLOCK = os.urandom(64 * 1024)  # random: a proxy that compressed or reordered would show
PAUSE_EVERY = 8 * 1024 * 1024
RSS_LIMIT_KIB = 24 * 1024


def _digest() -> str:
    h = hashlib.sha256()
    for _ in range(SIZE // len(BLOCK)):
        h.update(BLOCK)
    return h.hexdigest()


DIGEST = _digest()


def _slow_sink(req: HttpRequest, conn: socket.socket) -> bool:
    """Reads the chunked upload slowly, hashing as it goes; answers with size and digest."""
    h = hashlib.sha256()
    n = 0
    next_pause = PAUSE_EVERY
    for chunk in iter_chunked(req.stream):
        h.update(chunk)
        n += len(chunk)
        if n >= next_pause:
            next_pause += PAUSE_EVERY
            time.sleep(0.05)
    body = json.dumps({"size": n, "sha256": h.hexdigest()}).encode()
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    return True


def _big_source(req: HttpRequest, conn: socket.socket) -> bool:
    conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n" % len(BLOCK) + BLOCK + b"\r\n"
    for _ in range(SIZE // len(BLOCK)):
        conn.sendall(chunk)
    conn.sendall(b"0\r\nX-Checksum: done\r\n\r\n")
    return True


def _until_close(req: HttpRequest, conn: socket.socket) -> bool:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nno length, ")
    time.sleep(0.05)
    conn.sendall(b"the end is the close")
    return False


def _websocket(req: HttpRequest, conn: socket.socket) -> bool:
    """RFC 6455 handshake, then echo text frames back (unmasked, as a server sends them)."""
    key = req.get("Sec-WebSocket-Key") or ""
    accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
    conn.sendall(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )
    f = req.stream
    while True:
        head = f.read(2)
        if len(head) < 2:
            return False
        opcode, length = head[0] & 0x0F, head[1] & 0x7F
        mask = f.read(4)
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(f.read(length)))
        if opcode == 8:
            conn.sendall(b"\x88\x00")
            return False
        conn.sendall(bytes([0x81, len(payload)]) + payload)


def _dispatch(req: HttpRequest, conn: socket.socket) -> bool:
    handler = {"/upload": _slow_sink, "/download": _big_source, "/close": _until_close, "/ws": _websocket}
    return handler[req.target](req, conn)


class Env:
    def __init__(self) -> None:
        self.stream = HttpBackend(_dispatch, read_body=False)
        self.proxied = Backend(_proxy_echo, expect_proxy=True)
        self.web, self.pp = free_port(), free_port()
        self.proxy = EdgeProxy(
            {
                "timeouts": {"connect": "1s", "client_idle": "10s", "server_idle": "10s", "drain": "5s"},
                "listeners": [
                    {"name": "web", "bind": hostport("127.0.0.1", self.web), "mode": "http", "backend": "stream"},
                    {
                        "name": "pp",
                        "bind": hostport("127.0.0.1", self.pp),
                        "mode": "http",
                        "backend": "proxied",
                        "accept_proxy": {"trusted": ["127.0.0.60/32"]},
                    },
                ],
                "backends": {
                    "stream": {"health": NO_CHECKS, "servers": [self.stream.address]},
                    "proxied": {"health": NO_CHECKS, "servers": [self.proxied.address], "send_proxy": "v2"},
                },
            }
        )


def _proxy_echo(conn: socket.socket, seen: Seen) -> None:
    """Behind send_proxy: answers every request with the PROXY source and its X-Forwarded-For."""
    f = conn.makefile("rb")
    src = seen.proxy.source if seen.proxy is not None and seen.proxy.proxied else None
    while (req := read_http_request(f)) is not None:
        body = json.dumps({"proxy_src": str(src[0]) if src else None, "xff": req.all("X-Forwarded-For")}).encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    e = Env()
    try:
        yield e
    finally:
        e.proxy.stop()


def test_100mib_chunked_upload_through_slow_server_intact_with_bounded_memory(env: Env) -> None:
    rss_before = env.proxy.rss_kib()
    peak = rss_before
    with HttpClient("127.0.0.1", env.web, timeout=60) as c:
        c.send(b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n" % len(BLOCK) + BLOCK + b"\r\n"
        for i in range(SIZE // len(BLOCK)):
            c.send(chunk)
            if i % 128 == 0:
                peak = max(peak, env.proxy.rss_kib())
        c.send(b"0\r\n\r\n")
        status, _, body = c.response()
    assert status == 200
    assert json.loads(body) == {"size": SIZE, "sha256": DIGEST}
    assert peak - rss_before < RSS_LIMIT_KIB, f"proxy RSS grew by {peak - rss_before} KiB"


def test_100mib_chunked_download_to_slow_client_intact_with_bounded_memory(env: Env) -> None:
    rss_before = env.proxy.rss_kib()
    peak = rss_before
    with HttpClient("127.0.0.1", env.web, timeout=60) as c:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        c.send(b"GET /download HTTP/1.1\r\nHost: a\r\n\r\n")
        f = c.reader
        assert f.readline().startswith(b"HTTP/1.1 200 ")
        while f.readline() != b"\r\n":
            pass
        h = hashlib.sha256()
        n = 0
        next_pause = PAUSE_EVERY
        for chunk in iter_chunked(f):
            h.update(chunk)
            n += len(chunk)
            if n >= next_pause:
                next_pause += PAUSE_EVERY
                time.sleep(0.05)  # a slow reader: the proxy must not buffer what it cannot send
                peak = max(peak, env.proxy.rss_kib())
        assert (n, h.hexdigest()) == (SIZE, DIGEST)
        # The connection is reusable after a chunked response with trailers.
        c.send(b"GET /close HTTP/1.1\r\nHost: a\r\n\r\n")
        assert c.response()[2] == b"no length, the end is the close"
    assert peak - rss_before < RSS_LIMIT_KIB, f"proxy RSS grew by {peak - rss_before} KiB"


def test_response_delimited_by_close(env: Env) -> None:
    with HttpClient("127.0.0.1", env.web) as c:
        status, headers, body = c.request("/close")
        assert (status, body) == (200, b"no length, the end is the close")
        assert headers["connection"] == "close"  # the client learns why the connection ends


def test_websocket_echo_after_upgrade(env: Env) -> None:
    key = base64.b64encode(os.urandom(16)).decode()
    with HttpClient("127.0.0.1", env.web) as c:
        c.send(
            f"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        status, headers, _ = c.response()
        assert status == 101 and headers["upgrade"] == "websocket"
        for text in (b"hello", b"through edgeproxy"):
            mask = os.urandom(4)
            c.send(bytes([0x81, 0x80 | len(text)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(text)))
            assert c.reader.read(2 + len(text)) == bytes([0x81, len(text)]) + text
        c.send(b"\x88\x80" + struct.pack("!I", 0))  # close
        assert c.reader.read(2) == b"\x88\x00"
        assert c.reader.read() == b""


def test_send_proxy_gives_each_client_its_own_upstream_connection(env: Env) -> None:
    before = len(env.proxied.seen)  # (the module's proxy and backend: other tests connect too)
    for source in ("127.0.0.61", "127.0.0.62", "127.0.0.61"):
        with HttpClient("127.0.0.1", env.pp, source=source) as c:
            for _ in range(3):
                seen = c.json("/")
                assert seen == {"proxy_src": source, "xff": [source]}
    # 3 client connections, 9 requests: one upstream connection per client connection,
    # reused for its requests, never handed to another client.
    assert len(env.proxied.seen) - before == 3


def test_accept_proxy_header_source_is_the_client_address(env: Env) -> None:
    from proxyprotocol.result import ProxyResultIPv4
    from proxyprotocol.v2 import ProxyProtocolV2

    header = ProxyProtocolV2().pack(
        ProxyResultIPv4(
            (IPv4Address("203.0.113.9"), 4242), (IPv4Address("198.51.100.1"), 80), protocol=socket.SOCK_STREAM
        )
    )
    with HttpClient("127.0.0.1", env.pp, source="127.0.0.60") as c:
        c.send(header)
        seen = c.json("/", headers="X-Forwarded-For: 6.6.6.6\r\n")
    assert seen == {"proxy_src": "203.0.113.9", "xff": ["203.0.113.9"]}
    # The same header from an untrusted peer is just garbage in front of a request.
    with connect("127.0.0.1", env.pp, source="127.0.0.63") as s:
        s.sendall(header + b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert recv_all(s).startswith(b"HTTP/1.1 400 ")


def test_sigterm_closes_idle_keep_alive_and_finishes_busy_requests() -> None:
    release = threading.Event()

    def slow(req: HttpRequest, conn: socket.socket) -> bool:
        release.wait(10)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone")
        return True

    backend = HttpBackend(slow)
    port = free_port()
    proxy = EdgeProxy(
        {
            "timeouts": {"drain": "10s"},
            "listeners": [{"name": "web", "bind": hostport("127.0.0.1", port), "mode": "http", "backend": "b"}],
            "backends": {"b": {"health": NO_CHECKS, "servers": [backend.address]}},
        }
    )
    try:
        idle = connect("127.0.0.1", port)
        busy = HttpClient("127.0.0.1", port)
        busy.send(b"GET /busy HTTP/1.1\r\nHost: a\r\n\r\n")
        time.sleep(0.2)
        proxy.send(signal.SIGTERM)
        proxy.wait_log(lambda r: r.get("msg", "").startswith("draining"))
        assert recv_all(idle) == b""  # idle keep-alive connection: closed at once
        release.set()
        status, headers, body = busy.response()
        assert (status, body, headers["connection"]) == (200, b"done", "close")
        assert proxy.proc.wait(10) == 0
        idle.close()
        busy.close()
    finally:
        proxy.stop()
        backend.close()
