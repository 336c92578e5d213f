"""``edgeproxy demo``: the whole story on one machine, in one process, in a few seconds.

Two small demo apps (an HTTP one that answers with the client address it was told, a TCP one
that reads a PROXY v2 header) run behind edgeproxy on ``demo.yaml`` and behind a plain L4 forward
that behaves like the swarm routing mesh. One request through each, from the "client" address
127.0.0.7 with a forged ``X-Forwarded-For``, shows what each app saw; then the proxy keeps
running with the ``curl`` commands to try by hand until Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import sys
from importlib import resources

from edgeproxy.config import Address, Config, parse_config
from edgeproxy.log import log
from edgeproxy.net.loop import run
from edgeproxy.proto.proxy_protocol import NEED_DATA, ProxyHeaderError, parse_proxy_header
from edgeproxy.runtime.main import build
from edgeproxy.runtime.reload import describe
from edgeproxy.runtime.single import SingleProcess

BASE_PORT = 18000
CLIENT = "127.0.0.7"  # the "real client" of the scripted requests: distinct from the proxy's 127.0.0.1
FORGED = "6.6.6.6"


def load_demo_config(base_port: int) -> Config:
    raw = resources.files("edgeproxy").joinpath("demo.yaml").read_bytes()
    config = parse_config(raw, "demo.yaml")
    return shift_ports(config, base_port - BASE_PORT) if base_port != BASE_PORT else config


def shift_ports(config: Config, offset: int) -> Config:
    """Every listening and server port moved by ``offset`` (``--base-port``)."""

    def move(a: Address) -> Address:
        return Address(a.host, a.port + offset)

    listeners = tuple(dataclasses.replace(lst, bind=tuple(move(a) for a in lst.bind)) for lst in config.listeners)
    backends = {
        name: dataclasses.replace(
            be, servers=tuple(dataclasses.replace(s, address=move(s.address)) for s in be.servers)
        )
        for name, be in config.backends.items()
    }
    return dataclasses.replace(config, listeners=listeners, backends=backends)


# -- the demo apps ---------------------------------------------------------------------------------
class HttpApp(asyncio.Protocol):
    """Answers every request with its TCP peer and the forwarding headers it received."""

    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.peer = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        host, port = transport.get_extra_info("peername")[:2]
        self.peer = f"{host}:{port}"

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, self.buf = self.buf.split(b"\r\n\r\n", 1)
            headers: dict[str, list[str]] = {}
            for line in head.decode("latin-1").split("\r\n")[1:]:
                name, _, value = line.partition(":")
                headers.setdefault(name.strip().lower(), []).append(value.strip())
            xff = ", ".join(headers.get("x-forwarded-for", [])) or "(none)"
            real = ", ".join(headers.get("x-real-ip", [])) or "(none)"
            body = f"TCP peer: {self.peer}\nX-Forwarded-For: {xff}\nX-Real-IP: {real}\n".encode()
            close = "close" in ",".join(headers.get("connection", [])).lower()
            assert self.transport is not None
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n%s\r\n%s"
                % (len(body), b"Connection: close\r\n" if close else b"", body)
            )
            if close:
                self.transport.close()


class TcpApp(asyncio.Protocol):
    """Reads a PROXY header if one comes first, answers with the client address, closes."""

    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        host, port = transport.get_extra_info("peername")[:2]
        self.peer = f"{host}:{port}"
        # A plain forward sends nothing by itself: answer anyway after a moment.
        self.timer = asyncio.get_running_loop().call_later(0.2, self.answer, "no PROXY header")

    def data_received(self, data: bytes) -> None:
        self.buf += data
        try:
            result = parse_proxy_header(self.buf)
        except ProxyHeaderError:
            self.answer("no PROXY header")
            return
        if result is NEED_DATA:
            return
        header, _ = result
        if header.src is None:
            self.answer("PROXY LOCAL (no address)")
        else:
            self.answer(f"PROXY v{header.version} source {header.src[0]}:{header.src[1]}")

    def answer(self, what: str) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(f"TCP peer: {self.peer}\n{what}\n".encode())
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()


# -- the scripted client -----------------------------------------------------------------------------
async def fetch(port: int, request: bytes) -> str:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, local_addr=(CLIENT, 0)), timeout=5
    )
    try:
        writer.write(request)
        data = await asyncio.wait_for(reader.read(-1), timeout=5)
    finally:
        writer.close()
    text = data.decode("latin-1")
    return text.split("\r\n\r\n", 1)[1] if text.startswith("HTTP/") else text


def field(answer: str, name: str) -> str:
    for line in answer.splitlines():
        if line.startswith(name + ":"):
            return line.partition(":")[2].strip()
    return "?"


async def demo(base_port: int) -> int:
    config = load_demo_config(base_port)
    ports = {lst.name: lst.bind[0].port for lst in config.listeners}
    http_app = config.backends["http-app"].servers[0].address
    tcp_app = config.backends["tcp-app"].servers[0].address
    loop = asyncio.get_running_loop()
    servers: list[asyncio.AbstractServer] = []
    proxy = build(config)
    assert isinstance(proxy, SingleProcess)  # the demo config has workers: 1
    started = False
    try:
        try:
            servers.append(await loop.create_server(HttpApp, http_app.host, http_app.port))
            servers.append(await loop.create_server(TcpApp, tcp_app.host, tcp_app.port))
            await proxy.start()
            started = True
        except Exception as e:
            print(f"edgeproxy demo: cannot listen: {describe(e)}", file=sys.stderr)
            print(
                f"edgeproxy demo uses ports {base_port}-{base_port + 3} and {base_port + 10}-{base_port + 11} on "
                "127.0.0.1; one is busy (another demo still running?). Stop it, or pick other ports with "
                f"--base-port, e.g. edgeproxy demo --base-port {base_port + 100}",
                file=sys.stderr,
            )
            return 1
        access = config.log.access
        log.configure(config.log.level, "off", config.log.format)  # the scripted requests: not logged
        request = f"GET / HTTP/1.1\r\nHost: demo\r\nX-Forwarded-For: {FORGED}\r\nConnection: close\r\n\r\n".encode()
        mesh_http = await fetch(ports["mesh-web"], request)
        edge_http = await fetch(ports["web"], request)
        mesh_tcp = await fetch(ports["mesh-tcp"], b"")
        edge_tcp = await fetch(ports["tcp"], b"")
        await asyncio.sleep(0.1)  # let the proxy finish those connections before logging resumes
        log.configure(config.log.level, access, config.log.format)
        print(report(ports, mesh_http, edge_http, mesh_tcp, edge_tcp), flush=True)

        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        with contextlib.suppress(BrokenPipeError):  # stdout piped into head, for example
            print("\nstopping", flush=True)
        return 0
    finally:
        for srv in servers:
            srv.close()
        if started:
            await proxy.shutdown()


def report(ports: dict[str, int], mesh_http: str, edge_http: str, mesh_tcp: str, edge_tcp: str) -> str:
    mesh_xff = field(mesh_http, "X-Forwarded-For")
    edge_xff = field(edge_http, "X-Forwarded-For")
    dropped = f"(forged {FORGED} dropped)" if FORGED not in edge_http else f"({FORGED} GOT THROUGH)"
    mesh_tcp_says = mesh_tcp.splitlines()[-1] if mesh_tcp else "?"
    edge_tcp_says = edge_tcp.splitlines()[-1].split() if edge_tcp else ["?"]  # PROXY v2 source ip:port
    rows = [
        ("app", "plain L4 forward (like the swarm mesh)", "edgeproxy"),
        ("HTTP", f"peer {_host(field(mesh_http, 'TCP peer'))}", f"X-Forwarded-For: {edge_xff}"),
        (
            "",
            f"X-Forwarded-For: {mesh_xff}" + ("  <- forged!" if FORGED in mesh_xff else ""),
            f"X-Real-IP: {field(edge_http, 'X-Real-IP')} {dropped}",
        ),
        ("TCP", f"peer {_host(field(mesh_tcp, 'TCP peer'))}, {mesh_tcp_says}", f"{edge_tcp_says[-1]} via PROXY v2"),
    ]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    return "\n".join(
        [
            f"edgeproxy demo: client {CLIENT} sends one request to each app, with a forged "
            f"'X-Forwarded-For: {FORGED}'. What the apps saw:",
            "",
            *(f"  {a:<{w0}}   {b:<{w1}}   {c}" for a, b, c in rows),
            "",
            "Try it yourself (access log lines appear below; Ctrl-C stops the demo):",
            f"  curl -s -H 'X-Forwarded-For: {FORGED}' http://127.0.0.1:{ports['web']}/      # edgeproxy, http mode",
            f"  curl -s -H 'X-Forwarded-For: {FORGED}' http://127.0.0.1:{ports['mesh-web']}/      # plain forward",
            f"  curl -s --max-time 1 telnet://127.0.0.1:{ports['tcp']} </dev/null  # edgeproxy, tcp mode, PROXY v2",
        ]
    )


def _host(hostport: str) -> str:
    return hostport.rpartition(":")[0] or hostport


def main(base_port: int = BASE_PORT) -> int:
    try:
        return run(demo(base_port))
    except KeyboardInterrupt:
        return 0
    finally:
        log.flush()
