"""Loopback helpers: free ports, a one-shot HTTP probe, readiness waits."""

from __future__ import annotations

import random
import socket
import ssl
import time
from collections.abc import Callable, Iterable
from pathlib import Path

_UNVERIFIED = ssl.create_default_context()
_UNVERIFIED.check_hostname = False
_UNVERIFIED.verify_mode = ssl.CERT_NONE  # the benchmark's self-signed certificate


# -- ports for the processes a run starts (the benchmarks' and the tests') ----------------------
PORT_FLOOR = 10000
_ports_reserved: list[socket.socket] = []
_random = random.Random()  # our own: hypothesis and pytest-randomly seed the global one


def ephemeral_start() -> int:
    """The first port of the kernel's ephemeral range: bind(0) and connect() hand out only ports
    from there up."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1", kind: int = socket.SOCK_STREAM) -> int:
    """A port nothing is bound to, that no other socket will be given before the caller binds it.

    Binding port 0 and closing was racy: the kernel may hand that port to anyone next (another
    test run's client or backend on this shared machine) before the proxy binds it. So the port
    comes from below the kernel's ephemeral range (ip_local_port_range), which bind(0) and
    connect() never hand out; and other processes that pick ports here skip it because it is
    reserved under an abstract Unix socket name (no file left behind) until ``release_ports()``
    (the tests: end of each test, tests/conftest.py) or the end of the process.
    """
    base = free_port_block((0,), host, kind)
    if base is not None:
        return base
    with socket.socket(_family(host), kind) as s:  # a kernel with no room below its ephemeral range
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_port_block(offsets: tuple[int, ...], host: str = "127.0.0.1", kind: int = socket.SOCK_STREAM) -> int | None:
    """A base port such that base + each offset is a port as ``free_port()`` gives one (free,
    below the ephemeral range, reserved): for a program that takes a base port and binds fixed
    offsets from it (``edgeproxy demo --base-port``). None: no room."""
    top = ephemeral_start() - max(offsets)
    if top - PORT_FLOOR < 1000:
        return None
    return reserve_first((_random.randrange(PORT_FLOOR, top) for _ in range(1000)), offsets, host, kind)


def reserve_first(
    bases: Iterable[int], offsets: tuple[int, ...] = (0,), host: str = "127.0.0.1", kind: int = socket.SOCK_STREAM
) -> int | None:
    """The first of ``bases`` whose ports (base + each offset) are free on ``host`` and reserved by
    no other process; they are reserved for this one (see ``free_port``). None: none was."""
    family = _family(host)
    for base in bases:
        locks: list[socket.socket] = []
        for offset in offsets:
            lock = hold_name(f"port-{base + offset}")
            if lock is None:
                break
            locks.append(lock)
            try:
                with socket.socket(family, kind) as probe:
                    probe.bind((host, base + offset))
            except OSError:
                break
        else:
            _ports_reserved.extend(locks)
            return base
        for lock in locks:
            lock.close()
    return None


def hold_name(name: str) -> socket.socket | None:
    """``name`` held for this process (an abstract Unix socket name: no file, released when the
    socket is closed or the process ends), or None when another process holds it."""
    lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        lock.bind(f"\0edgeproxy-test-{name}")
    except OSError:
        lock.close()
        return None
    return lock


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def release_ports() -> None:
    """Let other processes use the ports this one was given (they are bound by now)."""
    while _ports_reserved:
        _ports_reserved.pop().close()


def http_get(
    port: int,
    path: str,
    headers: dict[str, str] | None = None,
    timeout: float = 2.0,
    *,
    tls: bool = False,
    sni: str = "bench.test",
) -> tuple[int, bytes]:
    """One HTTP/1.1 request on a fresh connection (``tls``: HTTPS, the certificate not checked);
    (status, body). Raises OSError/ValueError on failure."""
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    req = f"GET {path} HTTP/1.1\r\nHost: bench\r\n{extra}Connection: close\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as plain:
        s: socket.socket = _UNVERIFIED.wrap_socket(plain, server_hostname=sni) if tls else plain
        s.sendall(req)
        chunks = []
        while data := s.recv(65536):
            chunks.append(data)
    raw = b"".join(chunks)
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        raise ValueError(f"no HTTP response head in {raw[:80]!r}")
    status = int(head.split(b" ", 2)[1])
    return status, body


def wait_http(
    port: int,
    path: str,
    timeout: float,
    alive: Callable[[], bool] = lambda: True,
    *,
    tls: bool = False,
    sni: str = "bench.test",
) -> str | None:
    """Wait until ``GET path`` answers 200; None when it does, else the last error seen.
    Gives up early once ``alive()`` says the server process has exited."""
    deadline = time.monotonic() + timeout
    error = "no attempt"
    while time.monotonic() < deadline:
        if not alive():
            return f"exited: {error}"
        try:
            status, _ = http_get(port, path, timeout=1.0, tls=tls, sni=sni)
            if status == 200:
                return None
            error = f"HTTP {status}"
        except (OSError, ValueError) as e:
            error = str(e) or type(e).__name__
        time.sleep(0.05)
    return error
