"""TCP mode end to end: real edgeproxy process, real sockets on loopback, real PROXY parsing
(``proxyprotocol``) in the backends."""

from __future__ import annotations

import hashlib
import signal
import socket
import threading
import time
from collections import Counter
from ipaddress import IPv4Address
from typing import Any

import pytest
from proxyprotocol.result import ProxyResultLocal

from tests.helpers import (
    Backend,
    Seen,
    connect,
    echo_handler,
    edgeproxy,
    free_port,
    hostport,
    read_proxy_header,
    recv_all,
    whoami_handler,
)


def tcp_config(port: int, servers: list[Any], *, host: str = "127.0.0.1", **backend: Any) -> dict[str, Any]:
    binds = [hostport(host, port)] if isinstance(host, str) else [hostport(h, port) for h in host]
    cfg: dict[str, Any] = {
        "timeouts": {"connect": "1s", "client_idle": "30s", "server_idle": "30s", "drain": "10s"},
        "listeners": [{"name": "front", "bind": binds, "mode": "tcp", "backend": "app"}],
        # No active checks here: they would add connections to what the backends count.
        "backends": {"app": {"servers": servers, "health": {"type": "none"}, **backend}},
    }
    return cfg


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_backend_sees_real_client_address_and_listener_as_destination(version: str) -> None:
    backend = Backend(whoami_handler, expect_proxy=True)
    port = free_port()
    cfg = tcp_config(port, [backend.address], send_proxy=version)
    with edgeproxy(cfg, wait=[("127.0.0.1", port)]):
        for source in ("127.0.0.21", "127.0.0.22"):
            with connect("127.0.0.1", port, source=source) as c:
                cport = c.getsockname()[1]
                line = c.makefile("rb").readline().decode()
                assert line == f"src={source}:{cport} dst=127.0.0.1:{port}\n"
                c.sendall(b"payload after header")
                assert c.recv(100) == b"payload after header"
    got = [str(s.proxy.source[0]) for s in backend.seen if s.proxy]
    assert got == ["127.0.0.21", "127.0.0.22"]


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_ipv6_client_to_ipv4_backend(version: str) -> None:
    backend = Backend(whoami_handler, expect_proxy=True)
    port = free_port("::1")
    cfg = tcp_config(port, [backend.address], host="::1", send_proxy=version)
    with edgeproxy(cfg, wait=[("::1", port)]), connect("::1", port) as c:
        cport = c.getsockname()[1]
        line = c.makefile("rb").readline().decode()
        assert line == f"src=[::1]:{cport} dst=[::1]:{port}\n"


def test_ipv6_backend_and_no_header_without_send_proxy() -> None:
    backend = Backend(whoami_handler, host="::1")
    port = free_port()
    with edgeproxy(tcp_config(port, [backend.address]), wait=[("127.0.0.1", port)]):
        with connect("127.0.0.1", port, source="127.0.0.23") as c:
            line = c.makefile("rb").readline().decode()
        # Without send_proxy the backend sees the proxy, as with any L4 balancer.
        assert line.startswith("peer=[::1]:")


def test_weighted_round_robin_spreads_exactly() -> None:
    backends = [Backend(echo_handler) for _ in range(3)]
    port = free_port()
    servers = [backends[0].address, {"address": backends[1].address, "weight": 2}, backends[2].address]
    with edgeproxy(tcp_config(port, servers), wait=[("127.0.0.1", port)]):
        for _ in range(40):
            with connect("127.0.0.1", port) as c:
                c.sendall(b"x")
                assert c.recv(1) == b"x"
    counts = [len(b.seen) for b in backends]
    assert counts == [10, 20, 10]


def test_one_dead_server_costs_clients_nothing() -> None:
    alive = [Backend(echo_handler) for _ in range(2)]
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there: connect is refused
    port = free_port()
    cfg = tcp_config(port, [alive[0].address, dead, alive[1].address], retries=2)
    with edgeproxy(cfg, wait=[("127.0.0.1", port)]) as proxy:
        for i in range(30):
            with connect("127.0.0.1", port) as c:
                c.sendall(b"ping %d" % i)
                assert c.recv(100) == b"ping %d" % i
        assert sum(len(b.seen) for b in alive) == 30
        proxy.wait_log(lambda r: r.get("msg") == "connect to server failed" and r.get("server") == dead)


def test_no_server_up_closes_client_and_logs_connect_failed() -> None:
    port = free_port()
    cfg = tcp_config(port, [f"127.0.0.1:{free_port()}"], retries=1)
    with edgeproxy(cfg, wait=[("127.0.0.1", port)]) as proxy:
        with connect("127.0.0.1", port) as c:
            assert recv_all(c) == b""
        rec = proxy.wait_log(lambda r: r.get("end") == "connect_failed")
        assert rec["listener"] == "front"


def test_50mib_through_slow_reader_intact_with_bounded_memory() -> None:
    size = 50 * 1024 * 1024
    blob = hashlib.sha256(b"seed").digest() * (size // 32)
    digest = hashlib.sha256(blob).hexdigest()

    def sender(conn: socket.socket, seen: Seen) -> None:
        conn.sendall(blob)

    backend = Backend(sender)
    port = free_port()
    with edgeproxy(tcp_config(port, [backend.address]), wait=[("127.0.0.1", port)]) as proxy:
        rss_before = proxy.rss_kib()
        peak = rss_before
        h = hashlib.sha256()
        got = 0
        with connect("127.0.0.1", port) as c:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            while True:
                data = c.recv(256 * 1024)
                if not data:
                    break
                h.update(data)
                got += len(data)
                if got % (4 * 1024 * 1024) < len(data):
                    time.sleep(0.05)  # a slow reader: the proxy must not buffer what it can't send
                    peak = max(peak, proxy.rss_kib())
        assert got == size
        assert h.hexdigest() == digest
        # Backpressure: the proxy holds at most a few socket buffers, never the 50 MiB.
        assert peak - rss_before < 16 * 1024, f"RSS grew by {peak - rss_before} KiB"


def test_half_close_client_still_receives_reply() -> None:
    def reply_after_eof(conn: socket.socket, seen: Seen) -> None:
        request = recv_all(conn)  # reads until the client's FIN arrives through the proxy
        conn.sendall(b"got %d bytes: " % len(request) + request[::-1])

    backend = Backend(reply_after_eof)
    port = free_port()
    with edgeproxy(tcp_config(port, [backend.address]), wait=[("127.0.0.1", port)]), connect("127.0.0.1", port) as c:
        c.sendall(b"hello")
        c.shutdown(socket.SHUT_WR)
        assert recv_all(c) == b"got 5 bytes: olleh"


def test_idle_timeout_closes_and_logs() -> None:
    backend = Backend(echo_handler)
    port = free_port()
    cfg = tcp_config(port, [backend.address])
    cfg["timeouts"]["client_idle"] = "500ms"
    with edgeproxy(cfg, wait=[("127.0.0.1", port)]) as proxy:
        with connect("127.0.0.1", port) as c:
            c.sendall(b"a")
            assert c.recv(1) == b"a"
            t0 = time.monotonic()
            assert recv_all(c) == b""
            assert 0.3 < time.monotonic() - t0 < 3
        proxy.wait_log(lambda r: r.get("end") == "idle_timeout")


def test_accept_proxy_trusted_peer_header_becomes_client_address() -> None:
    from proxyprotocol.result import ProxyResultIPv4
    from proxyprotocol.v2 import ProxyProtocolV2

    backend = Backend(whoami_handler, expect_proxy=True)
    port = free_port()
    cfg = tcp_config(port, [backend.address], send_proxy="v2")
    cfg["listeners"][0]["accept_proxy"] = {"trusted": ["127.0.0.50/32"]}
    with edgeproxy(cfg, wait=[("127.0.0.1", port)]) as proxy:
        # A trusted load balancer in front says the client is 203.0.113.7:4242.
        header = ProxyProtocolV2().pack(
            ProxyResultIPv4(
                (IPv4Address("203.0.113.7"), 4242), (IPv4Address("198.51.100.1"), 443), protocol=socket.SOCK_STREAM
            )
        )
        with connect("127.0.0.1", port, source="127.0.0.50") as c:
            c.sendall(header + b"data")
            assert c.makefile("rb").readline() == b"src=203.0.113.7:4242 dst=198.51.100.1:443\n"
        # An untrusted peer sending the same header cannot claim that address: its bytes are
        # payload, and the backend sees its real address.
        with connect("127.0.0.1", port, source="127.0.0.51") as c:
            cport = c.getsockname()[1]
            c.sendall(header)
            f = c.makefile("rb")
            assert f.readline() == f"src=127.0.0.51:{cport} dst=127.0.0.1:{port}\n".encode()
            assert f.read(len(header)) == header  # echoed back as plain data
        # A trusted peer that sends garbage is dropped, and that is logged.
        with connect("127.0.0.1", port, source="127.0.0.50") as c:
            c.sendall(b"GET / HTTP/1.1\r\n\r\n")
            assert recv_all(c) == b""
        proxy.wait_log(lambda r: r.get("end") == "bad_proxy_header")
    assert len(backend.seen) == 2


def test_sigterm_drains_open_transfer_then_exits_zero() -> None:
    release = threading.Event()

    def slow(conn: socket.socket, seen: Seen) -> None:
        conn.sendall(b"first;")
        release.wait(10)
        conn.sendall(b"second")

    backend = Backend(slow)
    port = free_port()
    with edgeproxy(tcp_config(port, [backend.address]), wait=[("127.0.0.1", port)]) as proxy:
        c = connect("127.0.0.1", port)
        assert c.recv(6) == b"first;"
        proxy.send(signal.SIGTERM)
        proxy.wait_log(lambda r: r.get("msg", "").startswith("draining"))
        # Stopped accepting: a new client is refused...
        with pytest.raises(ConnectionRefusedError):
            connect("127.0.0.1", port, timeout=1)
        # ...while the open transfer completes.
        release.set()
        assert recv_all(c) == b"second"
        c.close()
        assert proxy.proc.wait(10) == 0


def test_max_connections_makes_clients_wait_not_fail() -> None:
    backend = Backend(echo_handler)
    port = free_port()
    cfg = tcp_config(port, [backend.address])
    cfg["listeners"][0]["max_connections"] = 2
    with edgeproxy(cfg, wait=[("127.0.0.1", port)]):
        held = [connect("127.0.0.1", port) for _ in range(2)]
        for h in held:
            h.sendall(b"h")
            assert h.recv(1) == b"h"
        waiting = connect("127.0.0.1", port)  # completes in the kernel backlog
        waiting.sendall(b"w")
        waiting.settimeout(0.5)
        with pytest.raises(TimeoutError):
            waiting.recv(1)  # not served while two are open
        held[0].close()
        waiting.settimeout(5)
        assert waiting.recv(1) == b"w"  # served, not dropped, once a slot frees
        for s in [*held[1:], waiting]:
            s.close()


def test_health_check_style_local_header_parses() -> None:
    """v2 LOCAL is what health checks send; proxyprotocol must accept ours (used by issue #4)."""
    from edgeproxy.proto.proxy_protocol import V2_LOCAL

    a, b = socket.socketpair()
    with a, b:
        a.sendall(V2_LOCAL + b"rest")
        result, _ = read_proxy_header(b)
        assert isinstance(result, ProxyResultLocal)
        assert b.recv(4) == b"rest"


def test_many_clients_in_parallel_each_get_their_own_bytes() -> None:
    backend = Backend(echo_handler)
    port = free_port()
    errors: list[str] = []

    def client(i: int) -> None:
        try:
            with connect("127.0.0.1", port, source=f"127.0.0.{30 + i % 20}") as c:
                payload = (b"%d-" % i) * 2000
                c.sendall(payload)
                c.shutdown(socket.SHUT_WR)
                if recv_all(c) != payload:
                    errors.append(f"client {i}: wrong bytes")
        except OSError as e:
            errors.append(f"client {i}: {e}")

    with edgeproxy(tcp_config(port, [backend.address]), wait=[("127.0.0.1", port)]):
        threads = [threading.Thread(target=client, args=(i,)) for i in range(60)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    assert Counter(s.peer[0] for s in backend.seen)["127.0.0.1"] == 60


@pytest.mark.parametrize("workers", [1, 2])
def test_server_that_speaks_first_reaches_every_client(workers: int) -> None:
    """A banner sent the instant the server accepts must not arrive before the relay is wired."""

    def banner(conn: socket.socket, seen: Seen) -> None:
        conn.sendall(b"220 ready\r\n")
        conn.recv(1)

    backend = Backend(banner)
    port = free_port()
    cfg = tcp_config(port, [backend.address])
    cfg["workers"] = workers
    with edgeproxy(cfg, wait=[("127.0.0.1", port)]):
        clients = [connect("127.0.0.1", port) for _ in range(40)]
        for c in clients:
            assert c.makefile("rb").readline() == b"220 ready\r\n"
            c.close()
