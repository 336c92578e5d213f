"""The floor of a Python relay: ``python -m benchmarks.floor [--scenario 1|2|3] [--rounds N] [--seconds S]``.

Runs one scenario against edgeproxy, the thinnest possible uvloop relay and HAProxy, alternating
(each round measures all three in turn), and prints each one's median CPU per request and its
ratio to HAProxy's (the median of the rounds' ratios, min-max across rounds). Scenario 3 (TCP +
PROXY v2, the default): the relay below sends a PROXY v2 header per connection and copies bytes
(no accounting, timers or balancing). Scenarios 1 and 2 (HTTP keep-alive / a new connection per
request): the relay adds an X-Forwarded-For line to each request head it reads (one head per read,
as wrk sends them; no parsing, no routing, one backend connection per client connection). How far
edgeproxy sits above this floor is what its own code costs; the gap between the floor and HAProxy
is uvloop's and CPython's.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import socket
import statistics
import sys
import tempfile
from pathlib import Path
from typing import cast

from benchmarks import machine
from benchmarks.backend import Nginx
from benchmarks.load import run_wrk
from benchmarks.netutil import free_port, wait_http
from benchmarks.procs import Managed, cpu_seconds, pinned


class _Up(asyncio.Protocol):
    def __init__(self, client: asyncio.Transport) -> None:
        self.client = client

    def data_received(self, data: bytes) -> None:
        self.client.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.close()


class _Down(asyncio.Protocol):
    """The client side, TCP: a PROXY v2 header first, then the bytes as they come."""

    def __init__(self, backend_port: int) -> None:
        self.backend_port = backend_port
        self.up: asyncio.Transport | None = None
        self.pending: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = cast(asyncio.Transport, transport)
        self.t.pause_reading()
        asyncio.get_running_loop().create_task(self._connect())

    def preamble(self) -> bytes:
        from proxyprotocol.result import ProxyResultIPv4
        from proxyprotocol.v2 import ProxyProtocolV2

        peer, local = self.t.get_extra_info("peername"), self.t.get_extra_info("sockname")
        src = (ipaddress.IPv4Address(peer[0]), peer[1])
        dst = (ipaddress.IPv4Address(local[0]), local[1])
        return ProxyProtocolV2().pack(ProxyResultIPv4(src, dst, protocol=socket.SOCK_STREAM))

    def rewrite(self, data: bytes) -> bytes:
        return data

    async def _connect(self) -> None:
        header = self.preamble()
        loop = asyncio.get_running_loop()
        up, _ = await loop.create_connection(lambda: _Up(self.t), "127.0.0.1", self.backend_port)
        up.write(header + b"".join(self.pending))
        self.up = up
        self.t.resume_reading()

    def data_received(self, data: bytes) -> None:
        data = self.rewrite(data)
        if self.up is None:  # uvloop may deliver a read despite pause_reading in connection_made
            self.pending.append(data)
        else:
            self.up.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.up is not None:
            self.up.close()


class _HttpDown(_Down):
    """The client side, HTTP: each request head gets the client's X-Forwarded-For line."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # before the first read, which may come before the upstream connects (see data_received)
        self.xff = f"X-Forwarded-For: {transport.get_extra_info('peername')[0]}\r\n".encode()
        super().connection_made(transport)

    def preamble(self) -> bytes:
        return b""

    def rewrite(self, data: bytes) -> bytes:
        end = data.find(b"\r\n\r\n")  # one whole head per read: what wrk sends, all the floor handles
        return data if end < 0 else data[: end + 2] + self.xff + data[end + 2 :]


def relay(port: int, backend_port: int, http: bool) -> None:
    import uvloop

    kind = _HttpDown if http else _Down

    async def main() -> None:
        loop = asyncio.get_running_loop()
        await loop.create_server(lambda: kind(backend_port), "127.0.0.1", port, backlog=1024)
        await asyncio.Event().wait()

    uvloop.run(main())


def compare(scenario: str, rounds: int, seconds: float) -> None:
    from benchmarks.proxies import EdgeProxy, HAProxy, Setup

    nofile = machine.raise_nofile()
    proxy_cpus, _, load_cpus = machine.cpu_split()
    workdir = Path(tempfile.mkdtemp(prefix="edgeproxy-floor-"))
    nginx = Nginx(workdir, load_cpus, nofile)
    procs: list[tuple[str, int, int, Managed]] = []  # name, port, pid, process
    try:
        http = scenario in ("1", "2")
        backend_port = nginx.http_port if http else nginx.pp_port
        setup = Setup("http", backend_port) if http else Setup("tcp", backend_port, send_proxy=True)
        headers = {"Connection": "close"} if scenario == "2" else {}
        for proxy in (EdgeProxy(setup, workdir, proxy_cpus), HAProxy(setup, workdir, proxy_cpus)):
            procs.append((proxy.name, proxy.port, proxy.pid, proxy.proc))
        port = free_port()
        cmd = [sys.executable, "-m", "benchmarks.floor", "--relay", str(port), str(backend_port)]
        cmd += ["--http"] if http else []
        bare = Managed("bare-uvloop", pinned(cmd, proxy_cpus), workdir / "bare.log")
        procs.insert(1, ("bare-uvloop", port, bare.pid, bare))
        if (error := wait_http(port, "/small", 10, bare.alive)) is not None:
            raise RuntimeError(f"bare relay did not serve: {error} {bare.log_tail()}")
        figures: dict[str, list[float]] = {}
        for rnd in range(rounds):
            for name, p, pid, _ in procs:
                cpu0 = cpu_seconds(pid)
                res = run_wrk(p, "/small", connections=50, seconds=seconds, headers=headers, cpus=load_cpus,
                              workdir=workdir)  # fmt: skip
                us = (cpu_seconds(pid) - cpu0) / max(1, res.requests) * 1e6
                figures.setdefault(name, []).append(us)
                print(f"round {rnd + 1} {name:12} {res.requests / res.seconds:8.0f} req/s {us:6.2f} us/req "
                      f"errors {res.error_count} {res.errors if res.error_count else ''}", flush=True)  # fmt: skip
        print(f"scenario {scenario}: CPU per request, the median of {rounds} round(s); x HAProxy: the median of "
              "the rounds' ratios (min-max)")  # fmt: skip
        for name, values in figures.items():
            per_round = [v / h for v, h in zip(values, figures["haproxy"], strict=True) if h]
            print(f"{name:12} median {statistics.median(values):6.2f} us/req  = {statistics.median(per_round):.2f}x "
                  f"HAProxy ({min(per_round):.2f}-{max(per_round):.2f})")  # fmt: skip
    finally:
        for _, _, _, proc in procs:
            proc.stop()
        nginx.stop()


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.floor", description=__doc__.splitlines()[0])
    p.add_argument("--scenario", choices=["1", "2", "3"], default="3", help="as python -m benchmarks numbers them")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--relay", nargs=2, type=int, metavar=("PORT", "BACKEND_PORT"), help=argparse.SUPPRESS)
    p.add_argument("--http", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.relay:
        relay(args.relay[0], args.relay[1], http=args.http)
    else:
        compare(args.scenario, args.rounds, args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
