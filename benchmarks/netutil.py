"""Loopback helpers: free ports, a one-shot HTTP probe, readiness waits."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable

_UNVERIFIED = ssl.create_default_context()
_UNVERIFIED.check_hostname = False
_UNVERIFIED.verify_mode = ssl.CERT_NONE  # the benchmark's self-signed certificate


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
