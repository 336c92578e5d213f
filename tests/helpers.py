"""Real components for the tests: edgeproxy as a subprocess, threaded backends on loopback.

Backends that receive a PROXY header parse it with the independent ``proxyprotocol`` package,
never with edgeproxy's own parser, so a bug in ours cannot hide itself.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from proxyprotocol import ProxyProtocolIncompleteError
from proxyprotocol.detect import ProxyProtocolDetect
from proxyprotocol.result import ProxyResult

from benchmarks.netutil import PORT_FLOOR as PORT_FLOOR  # re-exported: the tests take their ports here
from benchmarks.netutil import free_port as free_port
from benchmarks.netutil import free_port_block as free_port_block
from benchmarks.netutil import hold_name
from benchmarks.netutil import release_ports as release_ports
from benchmarks.netutil import reserve_first as reserve_first

ROOT = Path(__file__).resolve().parent.parent


# -- ports and directories for the processes the tests start ----------------------------------
# Ports: benchmarks/netutil.py's reservations, one piece of code for the benchmarks and the tests.
_test_dirs: Callable[[], Path] | None = None  # set by tests/conftest.py: pytest's tmp_path_factory


def reserve_name(kind: str, candidates: Iterable[str]) -> tuple[str, socket.socket]:
    """The first of ``candidates`` that no other test process holds (a subnet, a bridge name),
    held under an abstract Unix socket name until the returned socket is closed (or the process
    ends): for what tests choose at random from a small set and two test runs may choose alike."""
    for name in candidates:
        lock = hold_name(f"{kind}-{name}")
        if lock is not None:
            return name, lock
    raise RuntimeError(f"no free {kind} for the tests")


def closed_port(host: str = "127.0.0.1") -> tuple[socket.socket, int]:
    """A loopback port nothing listens on: bound, not listening, so connects are refused (and
    nobody else can take the port while the caller holds the socket: unlike a free_port() that is
    never bound, it stays refused past the end of the test that reserved it, for a fixture that
    outlives one test)."""
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.bind((host, 0))
    return s, s.getsockname()[1]


def test_dir(prefix: str) -> Path:
    """A new directory for one process's files (config, log): under pytest's temporary directory,
    which pytest prunes itself (it keeps the last 3 runs), so the logs can still be read after the
    process exited; outside pytest, a temporary directory removed when the process exits."""
    if _test_dirs is not None:
        return _test_dirs()
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, True)
    return path


def hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    while True:
        with socket.socket(family) as s:
            try:
                s.connect((host, port))
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"nothing listens on {hostport(host, port)}") from None
        time.sleep(0.02)


def connect(host: str, port: int, source: str | None = None, timeout: float = 10.0) -> socket.socket:
    """A client socket, optionally bound to a chosen loopback source address (127.0.0.x)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family)
    s.settimeout(timeout)
    if source is not None:
        s.bind((source, 0))
    s.connect((host, port))
    return s


def recv_all(s: socket.socket, limit: int = 1 << 30) -> bytes:
    chunks = []
    total = 0
    while total < limit:
        data = s.recv(65536)
        if not data:
            break
        chunks.append(data)
        total += len(data)
    return b"".join(chunks)


def read_proxy_header(conn: socket.socket) -> tuple[ProxyResult, bytes]:
    """Read exactly one PROXY header (as a real PROXY-aware server would) with proxyprotocol."""
    pp = ProxyProtocolDetect()
    data = b""
    while True:
        try:
            return pp.unpack(data), b""
        except ProxyProtocolIncompleteError as e:
            want = e.want_read
            # v1 wants "a line": read byte by byte so that no payload byte is consumed.
            n = want.want_bytes
            more = conn.recv(n, socket.MSG_WAITALL) if n is not None else conn.recv(1)
            if not more:
                raise ConnectionError(f"EOF inside PROXY header after {data!r}") from None
            data += more


@dataclass
class Seen:
    """What a backend saw on one connection."""

    peer: tuple[str, int]
    proxy: ProxyResult | None = None
    data: bytes = b""


@dataclass
class Backend:
    """A threaded TCP server on loopback. ``handler(conn, seen)`` serves one connection."""

    handler: Callable[[socket.socket, Seen], None]
    host: str = "127.0.0.1"
    expect_proxy: bool = False
    port: int = 0
    seen: list[Seen] = field(default_factory=list)
    _sock: socket.socket | None = None
    _stop: bool = False

    def __post_init__(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        s = socket.socket(family)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((self.host, self.port))
        s.listen(256)
        self.port = s.getsockname()[1]
        self._sock = s
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> str:
        return hostport(self.host, self.port)

    def _accept(self) -> None:
        assert self._sock is not None
        while not self._stop:
            try:
                conn, peer = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn, peer), daemon=True).start()

    def _serve(self, conn: socket.socket, peer: Any) -> None:
        seen = Seen(peer=(peer[0], peer[1]))
        try:
            with conn:
                if self.expect_proxy:
                    seen.proxy, _ = read_proxy_header(conn)
                self.seen.append(seen)
                self.handler(conn, seen)
        except OSError:
            pass

    def close(self) -> None:
        """Stop listening: later connects are refused (shutdown wakes the blocked accept())."""
        self._stop = True
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()


def echo_handler(conn: socket.socket, seen: Seen) -> None:
    while data := conn.recv(65536):
        conn.sendall(data)


def whoami_handler(conn: socket.socket, seen: Seen) -> None:
    """Answer with who the backend thinks the client is, then echo."""
    if seen.proxy is not None and seen.proxy.proxied and seen.proxy.source is not None:  # not LOCAL/UNKNOWN
        src, dst = seen.proxy.source, seen.proxy.dest
        conn.sendall(f"src={hostport(str(src[0]), src[1])} dst={hostport(str(dst[0]), dst[1])}\n".encode())
    else:
        conn.sendall(f"peer={hostport(*seen.peer)}\n".encode())
    echo_handler(conn, seen)


START_TIMEOUT = 60.0  # seconds for ``edgeproxy run`` to log that it started


class EdgeProxy:
    """``edgeproxy run`` in a subprocess on a generated config."""

    def __init__(
        self,
        config: dict[str, Any],
        *,
        wait: list[tuple[str, int]] | None = None,
        python: tuple[str, dict[str, str]] | None = None,
    ) -> None:
        """``python``: another interpreter and its environment (tests/privsep.py)."""
        self.dir = test_dir("edgeproxy-test-")
        self.config_path = self.dir / "edgeproxy.yaml"
        self.log_path = self.dir / "stderr.log"
        self.write_config(config)
        executable, extra_env = python or (sys.executable, {})
        env = dict(os.environ, PYTHONUNBUFFERED="1", **extra_env)
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [executable, "-m", "edgeproxy", "run", "-c", str(self.config_path)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=env,
        )
        # Ready when it logs "edgeproxy started" (all sockets bound): no probe connection, so
        # backends see only the tests' own clients. A generous deadline (the wait ends as soon as
        # the line is there): with 3 workers, 4 interpreters import edgeproxy, which took more than
        # 15 s with the suite in 4 xdist workers beside other load (load average 8 on 2 CPUs).
        try:
            self.wait_log(lambda r: r.get("msg") == "edgeproxy started", timeout=START_TIMEOUT)
        except AssertionError:
            self.stop()
            raise RuntimeError(f"edgeproxy did not start:\n{self.log()}") from None

    def write_config(self, config: dict[str, Any]) -> None:
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(config, sort_keys=False))
        tmp.replace(self.config_path)

    def send(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_lines(self) -> list[dict[str, Any]]:
        import json

        out = []
        for line in self.log().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def wait_log(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30.0) -> dict[str, Any]:
        """The first log line ``predicate`` accepts, waiting for it (AssertionError after
        ``timeout``, or once the process exited). A generous default: it ends as soon as the line
        is there, and on a loaded machine a reload or a worker's restart takes seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            for rec in self.log_lines():
                if predicate(rec):
                    return rec
            time.sleep(0.05)
        raise AssertionError(f"no matching log line within {timeout}s:\n{self.log()}")

    def wait_lines(
        self,
        select: Callable[[dict[str, Any]], bool],
        enough: Callable[[list[dict[str, Any]]], bool],
        timeout: float = 10.0,
    ) -> list[dict[str, Any]]:
        """The log lines ``select`` picks, once ``enough`` of them are there (at most ``timeout``:
        then as they are, for the test's own assertion to say what is missing). Access lines are
        written in batches, up to log.FLUSH_INTERVAL after the connection ended: a test that reads
        them while the proxy runs waits for them."""
        deadline = time.monotonic() + timeout
        while True:
            lines = [r for r in self.log_lines() if select(r)]
            if enough(lines) or time.monotonic() > deadline or self.proc.poll() is not None:
                return lines
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0


@contextlib.contextmanager
def edgeproxy(
    config: dict[str, Any],
    wait: list[tuple[str, int]] | None = None,
    python: tuple[str, dict[str, str]] | None = None,
) -> Iterator[EdgeProxy]:
    proxy = EdgeProxy(config, wait=wait, python=python)
    try:
        yield proxy
    finally:
        proxy.stop()


@dataclass
class Datagram:
    """One datagram a UDP backend received: from whom, its PROXY header if any, its payload."""

    peer: tuple[str, int]
    proxy: ProxyResult | None
    payload: bytes


class UdpBackend:
    """A threaded UDP server on loopback: ``handler(payload, datagram)`` returns the reply (or None).

    With ``expect_proxy`` every datagram must start with a PROXY v2 header; its exact bytes
    (16 + the big-endian length at bytes 14-15) are parsed with ``proxyprotocol``.
    """

    def __init__(
        self,
        handler: Callable[[bytes, Datagram], bytes | None],
        host: str = "127.0.0.1",
        *,
        expect_proxy: bool = False,
    ) -> None:
        self.handler = handler
        self.host = host
        self.expect_proxy = expect_proxy
        self.seen: list[Datagram] = []
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.port: int = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def address(self) -> str:
        return hostport(self.host, self.port)

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(65535)
            except OSError:
                return
            if peer is None:  # woken by close()
                return
            proxy = None
            if self.expect_proxy:
                size = 16 + int.from_bytes(data[14:16], "big")
                proxy = ProxyProtocolDetect().unpack(data[:size])
                data = data[size:]
            dgram = Datagram((peer[0], peer[1]), proxy, data)
            self.seen.append(dgram)
            reply = self.handler(data, dgram)
            if reply is not None:
                with contextlib.suppress(OSError):
                    self.sock.sendto(reply, peer)

    def close(self) -> None:
        """Unbind at once (a blocked recvfrom would otherwise keep the port): later datagrams
        to this port get ICMP port unreachable, like a server that died."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the serving thread (ENOTCONN is raised after)
        self.sock.close()


def udp_client(source: str = "127.0.0.1", timeout: float = 10.0) -> socket.socket:
    """An unconnected UDP client bound to a chosen loopback address (recvfrom shows who answered).
    The timeout is for a reply that must come (2 s were exceeded with two suites running at once);
    a test that expects none sets a short one."""
    family = socket.AF_INET6 if ":" in source else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    s.bind((source, 0))
    return s


# -- HTTP ------------------------------------------------------------------------------------------
@dataclass
class HttpRequest:
    """One request as a backend received it: its head verbatim, headers in order, decoded body."""

    conn_id: int
    peer: tuple[str, int]
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    raw_head: bytes
    body: bytes = b""
    stream: Any = None  # the connection's reader, when the handler reads the body itself

    def all(self, name: str) -> list[str]:
        """Every value of a header (case-insensitive name), one per line as received."""
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def get(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None


HttpHandler = Callable[["HttpRequest", socket.socket], bool]

# Backends in http tests: no active health checks, they would add connections to what the
# backends count.
NO_CHECKS: dict[str, Any] = {"type": "none"}


def echo_who_handler(req: HttpRequest, conn: socket.socket) -> bool:
    """Answer with what the backend saw about the client, as JSON; keep the connection open."""
    import json

    body = json.dumps(
        {
            "peer": req.peer[0],
            "xff": req.all("X-Forwarded-For"),
            "real_ip": req.all("X-Real-IP"),
            "proto": req.all("X-Forwarded-Proto"),
            "forwarded": req.all("Forwarded"),
            "path": req.target,
            "conn": req.conn_id,
            "body_len": len(req.body),
        }
    ).encode()
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    return True


class HttpBackend:
    """A threaded HTTP/1.1 server on loopback that records every request it parses.

    Its parser is deliberately *lenient* the way many application servers are (bare LF line
    ends, Content-Length or chunked, chunk sizes read with int(x, 16)): if edgeproxy let a
    smuggled request through, this backend would see it as a second request. ``handler(req,
    conn)`` answers one request and returns whether to keep the connection open.
    """

    def __init__(
        self, handler: HttpHandler = echo_who_handler, host: str = "127.0.0.1", read_body: bool = True
    ) -> None:
        self.handler = handler
        self.read_body = read_body
        self.requests: list[HttpRequest] = []
        self.connections = 0
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._backend = Backend(self._serve, host=host)
        self.port = self._backend.port
        self.host = host

    @property
    def address(self) -> str:
        return hostport(self.host, self.port)

    def close(self) -> None:
        self._backend.close()

    def _serve(self, conn: socket.socket, seen: Seen) -> None:
        with self._lock:
            self.connections += 1
            conn_id = self.connections
        # The reader holds a reference to the socket: it must be closed for the socket to close.
        with conn.makefile("rb") as f:
            while True:
                try:
                    req = read_http_request(f, conn_id, seen.peer, conn, read_body=self.read_body)
                except ValueError as e:
                    self.errors.append(str(e))
                    return
                if req is None:
                    return
                with self._lock:
                    self.requests.append(req)
                keep = self.handler(req, conn)
                req.stream = None
                if not keep:
                    return


def read_http_request(
    f: Any,
    conn_id: int = 0,
    peer: tuple[str, int] = ("", 0),
    conn: socket.socket | None = None,
    read_body: bool = True,
) -> HttpRequest | None:
    """Lenient request reader (see HttpBackend). None at a clean EOF. With ``conn``, an
    ``Expect: 100-continue`` is answered before the body is read."""
    raw = b""
    lines: list[bytes] = []
    while True:
        line = f.readline(65536)
        if not line:
            if raw:
                raise ValueError(f"EOF inside a head: {raw!r}")
            return None
        raw += line
        if line in (b"\r\n", b"\n"):
            if not lines:
                continue  # empty lines before a request
            break
        lines.append(line.rstrip(b"\r\n"))
    parts = lines[0].decode("latin-1").split(" ")
    if len(parts) != 3:
        raise ValueError(f"bad request line {lines[0]!r}")
    headers = []
    for line in lines[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))
    req = HttpRequest(conn_id, peer, parts[0], parts[1], parts[2], headers, raw)
    if conn is not None and (req.get("Expect") or "").lower() == "100-continue":
        conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
    te = (req.get("Transfer-Encoding") or "").lower()
    if not read_body:
        req.stream = f
    elif "chunked" in te:
        req.body = b"".join(iter_chunked(f))
    elif req.get("Content-Length") is not None:
        req.body = f.read(int(req.get("Content-Length") or 0))
    return req


def iter_chunked(f: Any) -> Iterator[bytes]:
    """The decoded chunks of a chunked body (trailers skipped), leniently like most servers."""
    while True:
        size = int(f.readline().strip().split(b";")[0], 16)
        if size == 0:
            while f.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return
        yield f.read(size)
        f.readline()


def read_http_response(f: Any, head_request: bool = False) -> tuple[int, dict[str, str], bytes, bytes]:
    """(status, headers lower-cased, body, raw head) of one response; 1xx heads are returned too."""
    raw = b""
    while True:
        line = f.readline(65536)
        if not line:
            raise ConnectionError(f"EOF inside a response head: {raw!r}")
        raw += line
        if line == b"\r\n":
            break
    lines = raw.split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
    if head_request or status < 200 or status in (204, 304):
        return status, headers, b"", raw
    if "chunked" in headers.get("transfer-encoding", ""):
        return status, headers, b"".join(iter_chunked(f)), raw
    if "content-length" in headers:
        return status, headers, f.read(int(headers["content-length"])), raw
    return status, headers, f.read(), raw


class HttpClient:
    """A keep-alive HTTP/1.1 client on one socket, for tests that look at the bytes."""

    def __init__(self, host: str, port: int, source: str | None = None, timeout: float = 10.0) -> None:
        self.sock = connect(host, port, source=source, timeout=timeout)
        self.reader = self.sock.makefile("rb")

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.reader.close()
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self, head_request: bool = False) -> tuple[int, dict[str, str], bytes]:
        status, headers, body, _ = read_http_response(self.reader, head_request)
        return status, headers, body

    def request(
        self, path: str = "/", host: str = "example.test", headers: str = "", method: str = "GET", body: bytes = b""
    ) -> tuple[int, dict[str, str], bytes]:
        length = f"Content-Length: {len(body)}\r\n" if body else ""
        self.send(f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{headers}{length}\r\n".encode() + body)
        return self.response(method == "HEAD")

    def json(self, path: str = "/", **kw: Any) -> dict[str, Any]:
        import json

        status, _, body = self.request(path, **kw)
        assert status == 200, (status, body)
        return dict(json.loads(body))


# -- admin endpoint and load (issue 4) -----------------------------------------------------------


def admin_request(
    port: int, path: str, *, method: str = "GET", token: str | None = None, timeout: float = 10.0
) -> tuple[int, bytes]:
    """One request to the admin endpoint on 127.0.0.1: (status, body)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        conn.request(method, path, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def admin_json(port: int, path: str = "/status", token: str | None = None) -> Any:
    import json

    status, body = admin_request(port, path, token=token)
    assert status == 200, body
    return json.loads(body)


Sample = tuple[str, frozenset[tuple[str, str]]]


def scrape(port: int, token: str | None = None) -> dict[Sample, float]:
    """/metrics parsed by prometheus_client's own parser: {(sample name, labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    status, body = admin_request(port, "/metrics", token=token)
    assert status == 200, body
    out: dict[Sample, float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def metric(samples: dict[Sample, float], name: str, **labels: str) -> float:
    """The sum of ``name`` over the samples whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, lbl), v in samples.items() if n == name and want <= lbl)


class RequestLoad:
    """Clients doing request/response over a new TCP connection each time (connect, send a
    line, read the echo, close) in threads, until ``stop()``; counts what succeeded and failed."""

    def __init__(self, port: int, clients: int = 4, host: str = "127.0.0.1", pause: float = 0.0) -> None:
        self.port = port
        self.host = host
        self.pause = pause
        self.ok = 0
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]
        for t in self._threads:
            t.start()

    def _run(self, i: int) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            payload = b"client %d request %d\n" % (i, n)
            try:
                got = exchange(self.port, payload, self.host)
                err = None if got == payload else f"client {i}: got {got!r} for {payload!r}"
            except OSError as e:
                err = f"client {i} request {n}: {e!r}"
            with self._lock:
                if err is None:
                    self.ok += 1
                else:
                    self.failures.append(err)
            if self.pause:
                time.sleep(self.pause)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)


def proxy_config(
    port: int,
    servers: list[Any],
    *,
    admin: int | dict[str, Any] | None = None,
    workers: int = 1,
    access: str = "stderr",
    health: dict[str, Any] | None = None,
    drain: str = "5s",
    **backend: Any,
) -> dict[str, Any]:
    """One tcp listener ``front`` on 127.0.0.1:port to backend ``app``; the admin endpoint on
    127.0.0.1:admin (or as given); no active health checks unless ``health`` says so."""
    cfg: dict[str, Any] = {
        "workers": workers,
        "log": {"access": access},
        "timeouts": {"connect": "1s", "drain": drain},
        "listeners": [{"name": "front", "bind": f"127.0.0.1:{port}", "mode": "tcp", "backend": "app"}],
        "backends": {"app": {"health": health or {"type": "none"}, "servers": servers, **backend}},
    }
    if admin is not None:
        cfg["admin"] = {"bind": f"127.0.0.1:{admin}"} if isinstance(admin, int) else admin
    return cfg


def exchange(port: int, payload: bytes = b"hello", host: str = "127.0.0.1") -> bytes:
    """One request over its own connection: send, half-close, read to EOF."""
    with connect(host, port) as c:
        c.sendall(payload)
        c.shutdown(socket.SHUT_WR)
        return recv_all(c)


class Held:
    """A backend handler: sends ``first`` at once, then ``second`` only after ``release()``
    (a long transfer that is still open when the test reloads or stops the proxy)."""

    def __init__(self, first: bytes = b"first;", second: bytes = b"second") -> None:
        self.first = first
        self.second = second
        self.event = threading.Event()

    def __call__(self, conn: socket.socket, seen: Seen) -> None:
        conn.sendall(self.first)
        self.event.wait(10)
        if self.second:
            conn.sendall(self.second)

    def release(self) -> None:
        self.event.set()
