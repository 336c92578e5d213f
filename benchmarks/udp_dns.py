"""UDP mode, DNS-sized: edgeproxy next to a bare uvloop relay and the client talking directly.

    .venv/bin/python -m benchmarks.udp_dns [--rounds 3] [--pairs 20000] [--fresh 4000] [--send-proxy] [--wildcard]
    .venv/bin/python -m benchmarks.udp_dns --edgeproxy 'env PYTHONPATH=/other/tree python3 -m edgeproxy'

Two figures per relay, both as CPU of the relay's process (utime+stime from /proc, steadier than
rates on a shared machine):

- **steady**: one client flow keeps ``window`` queries in flight for ``pairs`` request/response
  pairs: CPU per pair (two datagrams relayed) once the flow exists.
- **fresh**: ``fresh`` queries, each from a new client address (its own socket, a distinct source
  port), ``window`` in flight: CPU per query *including the flow's whole life*: created by the
  query, ended by the idle sweep (``client_idle: 1s``; the run waits for the sweep before reading
  the CPU).

The DNS server is a separate blocking Python process; the relays run pinned to one CPU, the
client and the server to the other (benchmarks/machine.py ``cpu_split``). The bare relay (below)
is the idiomatic uvloop shape of the same job: a flow per client address with its own connected
upstream datagram endpoint, replies sent back through the listening transport, a once-a-second
idle sweep; no accounting, limits, health or PROXY header. Rounds alternate the relays; medians
are printed. A lost datagram is not retried: each run reports how many replies came back.
"""

from __future__ import annotations

import argparse
import asyncio
import selectors
import shlex
import socket
import statistics
import struct
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import yaml

from benchmarks import machine
from benchmarks.netutil import ephemeral_start, free_port
from benchmarks.procs import Managed, cpu_seconds, pinned
from benchmarks.proxies import DEFAULT_EDGEPROXY

QUERY = struct.pack("!HHHHHH", 0, 0x0100, 1, 0, 0, 0) + b"\x03web\x07example\x00" + struct.pack("!HH", 1, 1)
CLIENT_IP = "127.0.0.41"
IDLE = 1.0  # client_idle of both relays in the fresh-flow run
SETTLE = IDLE + 1.6  # after the last fresh query: every flow idle and swept (sweeps run once a second)

SERVER = r"""
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1], flush=True)
rr = struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton("192.0.2.1")
while True:
    q, peer = s.recvfrom(2048)
    if len(q) > 16 and q[:12] == b"\r\n\r\n\x00\r\nQUIT\n":  # PROXY v2 signature: strip the header
        q = q[16 + int.from_bytes(q[14:16], "big"):]
    s.sendto(q[:2] + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00" + q[12:] + rr, peer)
"""


# -- the bare relay -------------------------------------------------------------------------------
class _BareUp(asyncio.DatagramProtocol):
    def __init__(self, down: asyncio.DatagramTransport, client: tuple[str, int]) -> None:
        self.down, self.client = down, client
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: list[bytes] = []
        self.last = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        for data in self.pending:
            self.transport.sendto(data)
        self.pending = []

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.last = time.monotonic()
        self.down.sendto(data, self.client)


class _BareDown(asyncio.DatagramProtocol):
    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.flows: dict[tuple[str, int], _BareUp] = {}
        self.tasks: set[asyncio.Task[object]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        flow = self.flows.get(addr)
        if flow is None:
            flow = self.flows[addr] = _BareUp(self.transport, addr)
            loop = asyncio.get_running_loop()
            task = loop.create_task(loop.create_datagram_endpoint(lambda: flow, remote_addr=self.server))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        flow.last = time.monotonic()
        if flow.transport is None:
            flow.pending.append(data)
        else:
            flow.transport.sendto(data)

    def sweep(self) -> None:
        asyncio.get_running_loop().call_later(1.0, self.sweep)
        cutoff = time.monotonic() - IDLE
        for addr, flow in list(self.flows.items()):
            if flow.last < cutoff and flow.transport is not None:
                flow.transport.close()
                del self.flows[addr]


def relay(port: int, server_port: int) -> None:
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        down = _BareDown(("127.0.0.1", server_port))
        await loop.create_datagram_endpoint(lambda: down, local_addr=("127.0.0.1", port))
        down.sweep()
        await asyncio.Event().wait()

    uvloop.run(main())


# -- clients --------------------------------------------------------------------------------------
def run_steady(port: int, pairs: int, window: int) -> tuple[float, int]:
    """(seconds, replies) for ``pairs`` queries with ``window`` in flight, all from one socket."""
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.bind((CLIENT_IP, 0))
    c.settimeout(0.5)
    dst = ("127.0.0.1", port)
    sent = done = got = 0
    t0 = time.perf_counter()
    while done < pairs:
        while sent < pairs and sent - done < window:
            c.sendto(struct.pack("!H", sent & 0xFFFF) + QUERY[2:], dst)
            sent += 1
        try:
            c.recv(2048)
        except TimeoutError:
            done += 1  # count a loss as done so the window moves on
            continue
        done += 1
        got += 1
    elapsed = time.perf_counter() - t0
    c.close()
    return elapsed, got


class FreshSources:
    """Client addresses never used before in this run: 127.0.1.x, ports of the ephemeral range.
    Not below it: that is where the tests' free_port() reserves the ports a proxy will bind (a
    wildcard bind of port p fails while 127.0.1.x:p is bound); a port some other socket holds
    is skipped."""

    def __init__(self) -> None:
        self.n = 0
        self.first = ephemeral_start()
        self.span = min(20000, 65536 - self.first)

    def socket(self) -> socket.socket:
        while True:
            ip, port = f"127.0.1.{1 + self.n // self.span}", self.first + self.n % self.span
            self.n += 1
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                s.bind((ip, port))
            except OSError:
                s.close()
                continue
            s.setblocking(False)
            return s


def run_fresh(port: int, queries: int, window: int, sources: FreshSources) -> tuple[float, int]:
    """(seconds, replies) for ``queries`` queries, each from a new client address."""
    sel = selectors.DefaultSelector()
    dst = ("127.0.0.1", port)
    sent = done = got = 0
    t0 = time.perf_counter()
    while done < queries:
        while sent < queries and sent - done < window:
            s = sources.socket()
            s.sendto(QUERY, dst)
            sel.register(s, selectors.EVENT_READ)
            sent += 1
        events = sel.select(timeout=0.5)
        if not events:  # nothing for 0.5 s: whatever is in flight was lost
            for key in list(sel.get_map().values()):
                sel.unregister(key.fileobj)
                cast(socket.socket, key.fileobj).close()
                done += 1
            continue
        for key, _ in events:
            s = cast(socket.socket, key.fileobj)
            try:
                s.recv(2048)
                got += 1
            except OSError:
                pass
            sel.unregister(s)
            s.close()
            done += 1
    sel.close()
    return time.perf_counter() - t0, got


# -- the run --------------------------------------------------------------------------------------
@dataclass
class Relay:
    name: str
    port: int
    proc: Managed | None  # None: the server itself (direct)
    command: str = ""


def start_edgeproxy(
    name: str, command: list[str], workdir: Path, server_port: int, args: argparse.Namespace, cpus: str | None
) -> Relay:
    host = "0.0.0.0" if args.wildcard else "127.0.0.1"
    port = free_port(host, kind=socket.SOCK_DGRAM)
    cfg = {
        "log": {"access": "off", "level": "warning"},
        "timeouts": {"client_idle": f"{IDLE:g}s"},
        "listeners": [
            {"name": "dns", "bind": f"{host}:{port}", "mode": "udp", "backend": "r", "max_connections": 100000}
        ],
        "backends": {"r": {"servers": [f"127.0.0.1:{server_port}"], "send_proxy": "v2" if args.send_proxy else "none"}},
    }
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = Managed(name, pinned([*command, "run", "-c", str(path)], cpus), workdir / f"{name}.log", workdir)
    return Relay(name, port, proc, " ".join(command))


def wait_answering(relay: Relay) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if relay.proc is not None and not relay.proc.alive():
            break
        _, got = run_steady(relay.port, 1, 1)
        if got:
            return
    tail = relay.proc.log_tail() if relay.proc is not None else ""
    raise RuntimeError(f"{relay.name} does not answer: {tail}")


def ratio(us: float, bare: float) -> str:
    """``us`` over the bare relay's figure; a short run may have measured no CPU tick for it."""
    return f"{us / bare:.2f}x" if bare else "n/a x"


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.udp_dns", description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pairs", type=int, default=20000, help="steady: request/response pairs per round")
    ap.add_argument("--fresh", type=int, default=4000, help="fresh: queries (flows) per round; 0 skips")
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--send-proxy", action="store_true", help="edgeproxy adds a PROXY v2 header to each datagram")
    ap.add_argument("--wildcard", action="store_true", help="edgeproxy binds 0.0.0.0 (replies with IP_PKTINFO)")
    ap.add_argument(
        "--edgeproxy",
        action="append",
        default=[],
        help="command that runs edgeproxy (default: this Python's -m edgeproxy); repeat it to measure several "
        "trees side by side, e.g. --edgeproxy 'env PYTHONPATH=/src/main python3 -m edgeproxy' --edgeproxy ...",
    )
    ap.add_argument("--relay", nargs=2, type=int, metavar=("PORT", "SERVER_PORT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.relay:
        relay(*args.relay)
        return 0

    machine.raise_nofile()
    relay_cpus, _, load_cpus = machine.cpu_split()
    workdir = Path(tempfile.mkdtemp(prefix="edgeproxy-udp-bench-"))
    server = Managed("server", pinned([sys.executable, "-c", SERVER], load_cpus), workdir / "server.log")
    procs = [server]
    try:
        server_port = 0
        deadline = time.monotonic() + 10
        while not server_port and time.monotonic() < deadline:
            text = server.log_path.read_text().strip()
            server_port = int(text) if text.isdigit() else 0
            time.sleep(0.02)
        commands = [shlex.split(c) for c in args.edgeproxy] or [DEFAULT_EDGEPROXY]
        relays = [Relay("direct", server_port, None)]
        bare_port = free_port(kind=socket.SOCK_DGRAM)
        bare_cmd = [sys.executable, "-m", "benchmarks.udp_dns", "--relay", str(bare_port), str(server_port)]
        bare = Managed("bare", pinned(bare_cmd, relay_cpus), workdir / "bare.log")
        procs.append(bare)
        relays.append(Relay("bare-uvloop", bare_port, bare))
        for i, command in enumerate(commands):
            name = "edgeproxy" if len(commands) == 1 else f"edgeproxy-{i + 1}"
            ep = start_edgeproxy(name, command, workdir, server_port, args, relay_cpus)
            assert ep.proc is not None
            procs.append(ep.proc)
            relays.append(ep)
        for r in relays:
            wait_answering(r)
            run_steady(r.port, 1000, args.window)  # warm-up
        sources = FreshSources()
        steady: dict[str, list[tuple[float, float]]] = {}  # name -> [(pairs/s, us/pair)]
        fresh: dict[str, list[tuple[float, float]]] = {}
        print(f"pairs={args.pairs} fresh={args.fresh} window={args.window} "
              f"send_proxy={'v2' if args.send_proxy else 'none'} wildcard={args.wildcard}", flush=True)  # fmt: skip
        for r in relays[2:]:
            print(f"{r.name}: {r.command}")
        for rnd in range(1, args.rounds + 1):
            for r in relays:
                pid = r.proc.pid if r.proc is not None else 0
                cpu0 = cpu_seconds(pid) if pid else 0.0
                secs, got = run_steady(r.port, args.pairs, args.window)
                us = (cpu_seconds(pid) - cpu0) / max(got, 1) * 1e6 if pid else 0.0
                steady.setdefault(r.name, []).append((got / secs, us))
                line = f"round {rnd} {r.name:12} steady {got / secs:8.0f} pairs/s {us:6.1f} us/pair"
                line += f" ({got}/{args.pairs})"
                if pid and args.fresh:
                    cpu0 = cpu_seconds(pid)
                    secs, got = run_fresh(r.port, args.fresh, args.window, sources)
                    time.sleep(SETTLE)
                    us = (cpu_seconds(pid) - cpu0) / max(got, 1) * 1e6
                    fresh.setdefault(r.name, []).append((got / secs, us))
                    line += f"  fresh {got / secs:7.0f} queries/s {us:6.1f} us/query ({got}/{args.fresh})"
                print(line, flush=True)
        bare_steady = statistics.median(u for _, u in steady["bare-uvloop"])
        print("\nmedians (CPU of the relay process):")
        for name, figs in steady.items():
            rate, us = statistics.median(f[0] for f in figs), statistics.median(f[1] for f in figs)
            line = f"{name:12} steady {rate:8.0f} pairs/s"
            if name != "direct":
                line += f" {us:6.1f} us/pair ({ratio(us, bare_steady)} bare)"
            if name in fresh:
                bare_fresh = statistics.median(u for _, u in fresh["bare-uvloop"])
                frate, fus = statistics.median(f[0] for f in fresh[name]), statistics.median(f[1] for f in fresh[name])
                line += f"  fresh {frate:7.0f} queries/s {fus:6.1f} us/query ({ratio(fus, bare_fresh)} bare)"
            print(line)
    finally:
        for p in reversed(procs):
            p.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
