"""Loopback helpers: free ports, a one-shot HTTP probe, readiness waits."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(
    port: int, path: str, headers: dict[str, str] | None = None, timeout: float = 2.0, tls: str | None = None
) -> tuple[int, bytes]:
    """One HTTP/1.1 request on a fresh connection; (status, body). Raises OSError/ValueError on failure.
    ``tls``: HTTPS, sending this server name (the certificate is not checked: a bench's own)."""
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    req = f"GET {path} HTTP/1.1\r\nHost: bench\r\n{extra}Connection: close\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        s = _unverified().wrap_socket(sock, server_hostname=tls) if tls else sock
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


def _unverified() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def wait_http(
    port: int, path: str, timeout: float, alive: Callable[[], bool] = lambda: True, tls: str | None = None
) -> str | None:
    """Wait until ``GET path`` answers 200; None when it does, else the last error seen.
    Gives up early once ``alive()`` says the server process has exited."""
    deadline = time.monotonic() + timeout
    error = "no attempt"
    while time.monotonic() < deadline:
        if not alive():
            return f"exited: {error}"
        try:
            status, _ = http_get(port, path, timeout=1.0, tls=tls)
            if status == 200:
                return None
            error = f"HTTP {status}"
        except (OSError, ValueError) as e:
            error = str(e) or type(e).__name__
        time.sleep(0.05)
    return error
