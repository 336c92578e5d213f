"""The floor of a Python TCP relay: ``python -m benchmarks.floor [--rounds N] [--seconds S]``.

Runs scenario 3 (TCP + PROXY v2, keep-alive small requests) against edgeproxy, the thinnest
possible uvloop relay (below: no accounting, no timers, no balancing, a PROXY v2 header built per
connection) and HAProxy, alternating, and prints each one's median CPU per request. How far
edgeproxy's TCP path sits above this floor is what its own code costs; the gap between the floor
and HAProxy is uvloop's and CPython's.
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
    def __init__(self, backend_port: int) -> None:
        self.backend_port = backend_port
        self.up: asyncio.Transport | None = None
        self.pending: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = cast(asyncio.Transport, transport)
        self.t.pause_reading()
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        from proxyprotocol.result import ProxyResultIPv4
        from proxyprotocol.v2 import ProxyProtocolV2

        peer, local = self.t.get_extra_info("peername"), self.t.get_extra_info("sockname")
        src = (ipaddress.IPv4Address(peer[0]), peer[1])
        dst = (ipaddress.IPv4Address(local[0]), local[1])
        header = ProxyProtocolV2().pack(ProxyResultIPv4(src, dst, protocol=socket.SOCK_STREAM))
        loop = asyncio.get_running_loop()
        up, _ = await loop.create_connection(lambda: _Up(self.t), "127.0.0.1", self.backend_port)
        up.write(header + b"".join(self.pending))
        self.up = up
        self.t.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.up is None:  # uvloop may deliver a read despite pause_reading in connection_made
            self.pending.append(data)
        else:
            self.up.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.up is not None:
            self.up.close()


def relay(port: int, backend_port: int) -> None:
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        await loop.create_server(lambda: _Down(backend_port), "127.0.0.1", port, backlog=1024)
        await asyncio.Event().wait()

    uvloop.run(main())


def compare(rounds: int, seconds: float) -> None:
    from benchmarks.proxies import EdgeProxy, HAProxy, Setup

    nofile = machine.raise_nofile()
    proxy_cpus, _, load_cpus = machine.cpu_split()
    workdir = Path(tempfile.mkdtemp(prefix="edgeproxy-floor-"))
    nginx = Nginx(workdir, load_cpus, nofile)
    procs: list[tuple[str, int, int, Managed]] = []  # name, port, pid, process
    try:
        setup = Setup("tcp", nginx.pp_port, send_proxy=True)
        for proxy in (EdgeProxy(setup, workdir, proxy_cpus), HAProxy(setup, workdir, proxy_cpus)):
            procs.append((proxy.name, proxy.port, proxy.pid, proxy.proc))
        port = free_port()
        cmd = [sys.executable, "-m", "benchmarks.floor", "--relay", str(port), str(nginx.pp_port)]
        bare = Managed("bare-uvloop", pinned(cmd, proxy_cpus), workdir / "bare.log")
        procs.insert(1, ("bare-uvloop", port, bare.pid, bare))
        if (error := wait_http(port, "/small", 10, bare.alive)) is not None:
            raise RuntimeError(f"bare relay did not serve: {error} {bare.log_tail()}")
        figures: dict[str, list[float]] = {}
        for rnd in range(rounds):
            for name, p, pid, _ in procs:
                cpu0 = cpu_seconds(pid)
                res = run_wrk(p, "/small", connections=50, seconds=seconds, headers={}, cpus=load_cpus, workdir=workdir)
                us = (cpu_seconds(pid) - cpu0) / max(1, res.requests) * 1e6
                figures.setdefault(name, []).append(us)
                print(f"round {rnd + 1} {name:12} {res.requests / res.seconds:8.0f} req/s {us:6.2f} us/req "
                      f"errors {res.error_count}", flush=True)  # fmt: skip
        base = statistics.median(figures["haproxy"])
        for name, values in figures.items():
            med = statistics.median(values)
            print(f"{name:12} median {med:6.2f} us/req  = {med / base:.2f}x HAProxy")
    finally:
        for _, _, _, proc in procs:
            proc.stop()
        nginx.stop()


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.floor", description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--relay", nargs=2, type=int, metavar=("PORT", "BACKEND_PORT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.relay:
        relay(*args.relay)
    else:
        compare(args.rounds, args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
