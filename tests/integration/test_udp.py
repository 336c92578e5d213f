"""UDP mode end to end: a real edgeproxy process, hand-packed DNS over real loopback sockets,
PROXY v2 headers parsed by the independent ``proxyprotocol`` package in the backend."""

from __future__ import annotations

import os
import signal
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import pytest

from edgeproxy.runtime.udp_steering import steering_index
from tests.helpers import (
    Datagram,
    EdgeProxy,
    UdpBackend,
    admin_json,
    edgeproxy,
    free_port,
    hostport,
    metric,
    scrape,
    udp_client,
)

# -- a tiny DNS: one A question, one A answer whose address says which server answered ------------


def dns_query(qid: int, name: str = "web.example") -> bytes:
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 1, 1)


def dns_server(answer_ip: str) -> Callable[[bytes, Datagram], bytes | None]:
    """A DNS responder: echoes the question, answers it with ``answer_ip`` (TTL 60)."""

    def handle(query: bytes, _d: Datagram) -> bytes | None:
        qid, _flags, qdcount = struct.unpack("!HHH", query[:6])
        if qdcount != 1:
            return None
        question = query[12:]
        rr = struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton(answer_ip)
        return struct.pack("!HHHHHH", qid, 0x8180, 1, 1, 0, 0) + question + rr

    return handle


def dns_answer(reply: bytes, qid: int) -> str:
    """The A record of a reply to query ``qid`` (asserts it is that reply)."""
    rid, flags, qd, an = struct.unpack("!HHHH", reply[:8])
    assert (rid, flags & 0x8000, qd, an) == (qid, 0x8000, 1, 1)
    return socket.inet_ntoa(reply[-4:])


def ask(client: socket.socket, port: int, qid: int, host: str = "127.0.0.1", tries: int = 1) -> str:
    """One DNS exchange through the listener; the reply must come from the listener's address.
    A reply to an earlier query of this client (re-sent, answered late on a loaded machine) is
    skipped, as a resolver does."""
    for attempt in range(tries):
        client.sendto(dns_query(qid), (host, port))
        try:
            while True:
                reply, frm = client.recvfrom(512)
                if reply[:2] == qid.to_bytes(2, "big"):
                    break
        except TimeoutError:
            if attempt == tries - 1:
                raise
            continue
        assert (frm[0], frm[1]) == (host, port)
        return dns_answer(reply, qid)
    raise AssertionError("unreachable")


def udp_config(
    port: int, servers: list[str], *, host: str = "127.0.0.1", listener: dict[str, Any] | None = None, **backend: Any
) -> dict[str, Any]:
    return {
        "timeouts": {"connect": "1s", "drain": "2s"},
        "listeners": [
            {"name": "dns", "bind": [hostport(host, port)], "mode": "udp", "backend": "resolvers", **(listener or {})}
        ],
        "backends": {"resolvers": {"servers": servers, **backend}},
    }


def access_lines(proxy: EdgeProxy) -> list[dict[str, Any]]:
    return [r for r in proxy.log_lines() if "datagrams_in" in r]


def closed_udp_port(host: str = "127.0.0.1") -> str:
    """A server address where nothing listens: datagrams to it draw ICMP port unreachable. Not a
    port bound then closed (the kernel may give it to another socket next, which would answer):
    one reserved like the proxy's, left unbound until the test ends."""
    return hostport(host, free_port(host, kind=socket.SOCK_DGRAM))


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback on this machine")


def test_dns_two_clients_share_two_servers_and_each_flow_sticks() -> None:
    a, b = UdpBackend(dns_server("192.0.2.1")), UdpBackend(dns_server("192.0.2.2"))
    port = free_port(kind=socket.SOCK_DGRAM)
    with edgeproxy(udp_config(port, [a.address, b.address], balance="roundrobin")) as proxy:
        c1, c2 = udp_client("127.0.0.41"), udp_client("127.0.0.42")
        answers = {c: [ask(c, port, 100 * i + n) for n in range(5)] for i, c in enumerate((c1, c2))}
        ports = {c: c.getsockname() for c in (c1, c2)}
        c1.close()
        c2.close()
    # Each flow stayed on one server; round robin gave the two flows different servers.
    assert {len(set(v)) for v in answers.values()} == {1}
    assert {v[0] for v in answers.values()} == {"192.0.2.1", "192.0.2.2"}
    # The servers saw edgeproxy (no send_proxy), each exactly five queries from one flow socket.
    assert sorted(len(s.seen) for s in (a, b)) == [5, 5]
    assert all(len({d.peer for d in s.seen}) == 1 for s in (a, b))
    # One access line per flow, at shutdown, with the counts both ways.
    lines = {r["client"]: r for r in access_lines(proxy)}
    for ip, cport in ports.values():
        r = lines[f"{ip}:{cport}"]
        assert (r["datagrams_in"], r["datagrams_out"], r["listener"], r["backend"]) == (5, 5, "dns", "resolvers")
        assert r["server"] in (a.address, b.address)
        assert r["bytes_in"] == 5 * len(dns_query(0))
    a.close()
    b.close()


def test_source_balance_keeps_a_client_ip_on_its_server_across_flows() -> None:
    a, b = UdpBackend(dns_server("192.0.2.1")), UdpBackend(dns_server("192.0.2.2"))
    port = free_port(kind=socket.SOCK_DGRAM)
    with edgeproxy(udp_config(port, [a.address, b.address], balance="source")):
        got: dict[str, set[str]] = {}
        # 24 client IPs: the ring depends on the servers' random ports, so with few IPs all of
        # them could hash to one server (6 IPs: 1 run in 32); with 24, 1 in 8 million.
        for n in range(48):
            ip = f"127.0.0.{41 + n % 24}"
            with udp_client(ip) as c:  # a new source port each time: a new flow
                got.setdefault(ip, set()).add(ask(c, port, n))
    assert all(len(servers) == 1 for servers in got.values())
    assert set().union(*got.values()) == {"192.0.2.1", "192.0.2.2"}  # 24 IPs on 2 servers: both used
    a.close()
    b.close()


def test_send_proxy_v2_every_datagram_carries_the_client_address() -> None:
    backend = UdpBackend(dns_server("192.0.2.9"), expect_proxy=True)
    port = free_port(kind=socket.SOCK_DGRAM)
    with edgeproxy(udp_config(port, [backend.address], send_proxy="v2")):
        clients = [udp_client("127.0.0.41"), udp_client("127.0.0.42")]
        for n in range(3):
            for c in clients:
                assert ask(c, port, n) == "192.0.2.9"
        expected = {c.getsockname() for c in clients}
        for c in clients:
            c.close()
    assert len(backend.seen) == 6
    for d in backend.seen:
        assert d.proxy is not None and d.proxy.proxied
        assert d.proxy.protocol == socket.SOCK_DGRAM
        assert str(d.proxy.dest[0]) == "127.0.0.1" and d.proxy.dest[1] == port
        assert d.payload[12:] == dns_query(0)[12:]  # the payload follows the header untouched
    assert {(str(d.proxy.source[0]), d.proxy.source[1]) for d in backend.seen if d.proxy} == expected
    backend.close()


@needs_ipv6
@pytest.mark.parametrize("bind", ["::1", "::"])
def test_ipv6_listener_and_server_with_proxy_v2(bind: str) -> None:
    """Bound to ::1 or to [::] (wildcard): the reply comes from [::1]:port, the address the
    client used, and the PROXY destination is that address (not [::])."""
    backend = UdpBackend(dns_server("192.0.2.6"), host="::1", expect_proxy=True)
    port = free_port(bind, kind=socket.SOCK_DGRAM)
    with edgeproxy(udp_config(port, [backend.address], host=bind, send_proxy="v2")), udp_client("::1") as c:
        assert ask(c, port, 7, host="::1") == "192.0.2.6"
        cport = c.getsockname()[1]
    (d,) = backend.seen
    assert d.proxy is not None
    assert (str(d.proxy.source[0]), d.proxy.source[1]) == ("::1", cport)
    assert (str(d.proxy.dest[0]), d.proxy.dest[1]) == ("::1", port)
    backend.close()


def test_idle_flows_expire_and_the_flow_cap_evicts_the_least_recently_active() -> None:
    backend = UdpBackend(dns_server("192.0.2.3"))
    port = free_port(kind=socket.SOCK_DGRAM)
    cfg = udp_config(port, [backend.address], listener={"max_connections": 2})
    cfg["timeouts"]["client_idle"] = "1s"
    with edgeproxy(cfg) as proxy:
        c1, c2, c3 = (udp_client(f"127.0.0.{ip}") for ip in (41, 42, 43))
        ask(c1, port, 1)
        ask(c2, port, 2)
        ask(c1, port, 3)  # c1 active again: c2 is now the least recently active
        ask(c3, port, 4)  # a third flow over the cap of 2 evicts c2
        evicted = proxy.wait_log(lambda r: r.get("end") == "evicted")
        assert evicted["client"] == hostport(*c2.getsockname())
        assert ask(c2, port, 5) == "192.0.2.3"  # an evicted client just starts a new flow (evicting c1)
        proxy.wait_log(lambda r: r.get("end") == "evicted" and r["client"] != evicted["client"])
        evicted_order = [r["client"] for r in access_lines(proxy) if r["end"] == "evicted"]
        assert evicted_order == [hostport(*c.getsockname()) for c in (c2, c1)]
        # Both remaining flows go quiet: each ends once idle for client_idle (1 s), swept within ~1 s.
        t0 = time.monotonic()
        proxy.wait_log(lambda r: len([x for x in access_lines(proxy) if x["end"] == "idle_timeout"]) >= 2, timeout=6)
        assert time.monotonic() - t0 < 5
        idle = {r["client"]: r for r in access_lines(proxy) if r["end"] == "idle_timeout"}
        assert set(idle) == {hostport(*c.getsockname()) for c in (c2, c3)}
        assert idle[hostport(*c2.getsockname())]["datagrams_in"] == 1
        assert "udp flow cap reached: evicting the least recently active flow" in proxy.log()
        for c in (c1, c2, c3):
            c.close()
    backend.close()


def test_a_dead_servers_flow_moves_on_its_next_datagram() -> None:
    a, b = UdpBackend(dns_server("192.0.2.1")), UdpBackend(dns_server("192.0.2.2"))
    port = free_port(kind=socket.SOCK_DGRAM)
    with edgeproxy(udp_config(port, [a.address, b.address], balance="roundrobin")) as proxy:
        c = udp_client("127.0.0.41")
        first = ask(c, port, 1)
        dead, alive = (a, "192.0.2.2") if first == "192.0.2.1" else (b, "192.0.2.1")
        dead.close()
        # The first query after the death is lost (UDP); the ICMP port unreachable it causes marks
        # the server failed, so the client's retry goes to the other server on the same flow.
        c.settimeout(0.5)
        assert ask(c, port, 2, tries=20) == alive
        c.settimeout(10)  # (the timeouts of the queries that must be answered: a loaded machine)
        assert ask(c, port, 3) == alive
        proxy.wait_log(lambda r: r.get("msg") == "udp server refused (ICMP port unreachable)")
        c.close()
    (line,) = access_lines(proxy)
    assert line["moves"] == 1 and line["server"] != dead.address
    (a if dead is b else b).close()


def test_oversized_datagrams_are_dropped_and_small_ones_pass() -> None:
    backend = UdpBackend(lambda data, _d: data)  # echo
    port = free_port(kind=socket.SOCK_DGRAM)
    admin = free_port()
    cfg = udp_config(port, [backend.address], listener={"max_datagram_size": 512})
    cfg["admin"] = {"bind": f"127.0.0.1:{admin}"}
    with edgeproxy(cfg), udp_client("127.0.0.41") as c:
        c.sendto(b"x" * 513, ("127.0.0.1", port))
        c.sendto(b"y" * 512, ("127.0.0.1", port))
        assert c.recvfrom(2048)[0] == b"y" * 512
        m = scrape(admin)
    assert [len(d.payload) for d in backend.seen] == [512]
    assert metric(m, "edgeproxy_listener_dropped_oversize_total", listener="dns") == 1
    assert metric(m, "edgeproxy_listener_datagrams_in_total", listener="dns") == 2
    assert metric(m, "edgeproxy_listener_datagrams_out_total", listener="dns") == 1
    assert metric(m, "edgeproxy_active_connections", listener="dns") == 1  # the one flow
    assert metric(m, "edgeproxy_connections_total", listener="dns") == 1
    backend.close()


def test_sigterm_lets_an_open_flow_get_its_reply_then_ends_it_as_drain() -> None:
    backend = UdpBackend(dns_server("192.0.2.4"))
    port = free_port(kind=socket.SOCK_DGRAM)
    proxy = EdgeProxy(udp_config(port, [backend.address]))  # drain: 2s
    with udp_client("127.0.0.41") as c:
        assert ask(c, port, 1) == "192.0.2.4"
        proxy.send(signal.SIGTERM)
        assert ask(c, port, 2) == "192.0.2.4"  # the open flow is still served while draining
        t0 = time.monotonic()
        assert proxy.stop(timeout=10) == 0
        assert time.monotonic() - t0 < 8  # ends once quiet for 1 s, bounded by drain (2 s)
        (line,) = access_lines(proxy)
        assert (line["end"], line["datagrams_in"], line["datagrams_out"]) == ("drain", 2, 2)
    backend.close()


# -- wildcard binds: the reply leaves from the address the client sent to --------------------------


def test_wildcard_bind_replies_from_the_address_each_client_sent_to() -> None:
    backend = UdpBackend(dns_server("192.0.2.5"), expect_proxy=True)
    port = free_port("0.0.0.0", kind=socket.SOCK_DGRAM)
    with edgeproxy(udp_config(port, [backend.address], host="0.0.0.0", send_proxy="v2")) as proxy:
        asked: dict[tuple[str, int], set[str]] = {}
        for i in range(4):
            with udp_client(f"127.0.0.{41 + i}") as c:  # unconnected: recvfrom shows who answered
                dests = [f"127.0.0.{9 + i}", f"127.0.0.{19 + i}"]  # one socket, two local addresses
                for n, dest in enumerate(dests * 2):
                    assert ask(c, port, 10 * i + n, host=dest) == "192.0.2.5"  # from (dest, port)
                asked[c.getsockname()] = set(dests)
    # A flow per (client, local address), and the PROXY destination is that local address (not
    # 0.0.0.0), as the independent parser reads it.
    assert len(backend.seen) == 16
    seen: dict[tuple[str, int], set[str]] = {}
    for d in backend.seen:
        assert d.proxy is not None and d.proxy.protocol == socket.SOCK_DGRAM and d.proxy.dest[1] == port
        seen.setdefault((str(d.proxy.source[0]), d.proxy.source[1]), set()).add(str(d.proxy.dest[0]))
    assert seen == asked
    assert len(access_lines(proxy)) == 8
    backend.close()


# -- a dead server costs no datagram ----------------------------------------------------------------


def test_closed_ports_never_cost_a_fresh_client_its_first_query() -> None:
    live = UdpBackend(dns_server("192.0.2.7"))
    dead = [closed_udp_port(), closed_udp_port()]
    port, admin = free_port(kind=socket.SOCK_DGRAM), free_port()
    cfg = udp_config(port, [*dead, live.address], balance="roundrobin")  # retries: 2 (the default)
    cfg["admin"] = {"bind": f"127.0.0.1:{admin}"}
    with edgeproxy(cfg) as proxy:
        for n in range(12):
            with udp_client(f"127.0.0.{41 + n}") as c:
                assert ask(c, port, n) == "192.0.2.7"  # one try: the proxy itself re-sent it
        m = scrape(admin)
    # The first flow was refused by both closed ports in turn (roundrobin), its query re-sent each
    # time; both were then held out, so later flows went straight to the live server.
    refused = [r for r in proxy.log_lines() if r.get("msg") == "udp server refused (ICMP port unreachable)"]
    assert sorted(r["server"] for r in refused) == sorted(dead)
    assert all(r["resend"] == 1 for r in refused)
    assert metric(m, "edgeproxy_listener_udp_refused_total", listener="dns") == 2
    assert metric(m, "edgeproxy_listener_udp_dropped_total", listener="dns") == 0
    lines = access_lines(proxy)
    assert len(lines) == 12 and {r["server"] for r in lines} == {live.address}
    assert sorted(r["moves"] for r in lines) == [0] * 11 + [2]
    assert len(live.seen) == 12
    live.close()


def test_a_refused_datagram_is_not_resent_beyond_retries() -> None:
    live = UdpBackend(dns_server("192.0.2.8"))
    dead = closed_udp_port()
    port, admin = free_port(kind=socket.SOCK_DGRAM), free_port()
    cfg = udp_config(port, [dead, live.address], balance="roundrobin", retries=0)
    cfg["admin"] = {"bind": f"127.0.0.1:{admin}"}
    with edgeproxy(cfg), udp_client("127.0.0.41", timeout=1.0) as c:
        with pytest.raises(TimeoutError):
            ask(c, port, 1)  # roundrobin's first pick is the closed port; retries: 0 re-sends nothing
        c.settimeout(10)
        assert ask(c, port, 2) == "192.0.2.8"  # the flow's next datagram goes to the live server
        m = scrape(admin)
    assert metric(m, "edgeproxy_listener_udp_refused_total", listener="dns") == 1
    assert metric(m, "edgeproxy_listener_udp_dropped_total", listener="dns") == 1
    live.close()


# -- workers: 2 ------------------------------------------------------------------------------------


def echo_once_each(port: int, sources: list[str]) -> list[tuple[str, int]]:
    """One datagram from a new client on each source address, echoed from the address it was
    sent to; the clients' (address, port)."""
    clients = []
    for source in sources:
        with udp_client(source) as c:
            c.sendto(b"x", ("127.0.0.1", port))
            assert c.recvfrom(512) == (b"x", ("127.0.0.1", port))
            clients.append(c.getsockname())
    return clients


def test_two_workers_keep_each_client_on_one_worker_and_one_server() -> None:
    a, b = UdpBackend(lambda q, _d: q), UdpBackend(lambda q, _d: q)  # echo
    port = free_port("0.0.0.0", kind=socket.SOCK_DGRAM)
    cfg = udp_config(port, [a.address, b.address], host="0.0.0.0", balance="roundrobin")
    cfg["workers"] = 2
    with edgeproxy(cfg) as proxy:
        with udp_client("127.0.0.41", timeout=5.0) as c:
            for n in range(200):  # all at once: both workers are awake for them
                c.sendto(b"q%d" % n, ("127.0.0.9", port))
            replies = [c.recvfrom(512) for _ in range(200)]
            one = c.getsockname()
        assert sorted(r[0] for r in replies) == sorted(b"q%d" % n for n in range(200))
        assert {r[1] for r in replies} == {("127.0.0.9", port)}
        clients = echo_once_each(port, [f"127.0.0.{50 + i}" for i in range(16)])
    # One flow (one worker, one upstream socket, one server) had all 200 datagrams.
    (line,) = [r for r in access_lines(proxy) if r["client"] == hostport(*one)]
    assert (line["datagrams_in"], line["datagrams_out"], line["moves"]) == (200, 200, 0)
    (server,) = [s for s in (a, b) if any(d.payload.startswith(b"q") for d in s.seen)]
    assert len([d for d in server.seen if d.payload.startswith(b"q")]) == 200
    assert len({d.peer for d in server.seen if d.payload.startswith(b"q")}) == 1
    # Several clients spread over both workers, each exactly where the steering program puts it.
    workers = {r["client"]: r["worker"] for r in access_lines(proxy)}
    expected = {hostport(*c): steering_index(socket.AF_INET, 2, *c) + 1 for c in [one, *clients]}
    assert workers == expected
    assert set(workers.values()) == {1, 2}
    a.close()
    b.close()


def client_steered_to(member: int, of: int, timeout: float) -> socket.socket:
    """A client socket whose address the steering program maps to ``member`` of ``of``."""
    for n in range(64):
        c = udp_client(f"127.0.0.{41 + n}", timeout=timeout)
        if steering_index(socket.AF_INET, of, *c.getsockname()) == member:
            return c
        c.close()
    raise AssertionError("no client address maps to that member")


def test_a_killed_worker_s_clients_wait_in_its_socket_and_are_answered_by_its_replacement() -> None:
    backend = UdpBackend(dns_server("192.0.2.10"))
    port, admin = free_port(kind=socket.SOCK_DGRAM), free_port()
    cfg = udp_config(port, [backend.address])
    cfg.update(workers=2, admin={"bind": f"127.0.0.1:{admin}"})
    with edgeproxy(cfg) as proxy:
        victim = next(w for w in admin_json(admin)["workers"] if w["id"] == 1)
        os.kill(victim["pid"], signal.SIGKILL)
        # A client the program steers to worker 1's socket, asking while that worker is dead:
        # the supervisor holds the socket, so the query waits there for the restarted worker.
        with client_steered_to(0, of=2, timeout=15) as c:
            assert ask(c, port, 1) == "192.0.2.10"
            restarted = proxy.wait_log(lambda r: r.get("msg") == "worker restarted")
            assert ask(c, port, 2) == "192.0.2.10"
            client = hostport(*c.getsockname())
    (line,) = [r for r in access_lines(proxy) if r["client"] == client]
    assert (line["worker"], line["datagrams_in"]) == (1, 2)  # one flow, in the new worker 1
    assert restarted["pid"] != victim["pid"]
    backend.close()


def test_a_reload_to_three_workers_steers_new_clients_over_three() -> None:
    backend = UdpBackend(lambda q, _d: q)  # echo
    port = free_port(kind=socket.SOCK_DGRAM)
    cfg = udp_config(port, [backend.address])
    cfg["workers"] = 2
    with edgeproxy(cfg) as proxy:
        cfg["workers"] = 3
        proxy.write_config(cfg)
        proxy.send(signal.SIGHUP)
        proxy.wait_log(lambda r: r.get("msg") == "configuration reloaded")
        proxy.wait_log(lambda r: r.get("msg") == "worker started" and r.get("worker") == 3)
        clients = echo_once_each(port, [f"127.0.0.{41 + i}" for i in range(24)])
    workers = {r["client"]: r["worker"] for r in access_lines(proxy)}
    assert workers == {hostport(*c): steering_index(socket.AF_INET, 3, *c) + 1 for c in clients}
    assert set(workers.values()) == {1, 2, 3}
    backend.close()
