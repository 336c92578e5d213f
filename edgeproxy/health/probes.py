"""One active health check of one server: tcp (connect) or http (a GET whose status must fall in
``expect``). To a ``send_proxy`` backend the probe first sends PROXY v2 ``LOCAL`` or v1
``PROXY UNKNOWN``: the backend expects a header on every connection, and these say "this
connection is the proxy's own, not a client's" (haproxy/haproxy#511, varnish-cache#2151).
"""

from __future__ import annotations

import asyncio
import contextlib

from edgeproxy.config import Health
from edgeproxy.config.model import SendProxy
from edgeproxy.proto.proxy_protocol import V1_UNKNOWN, V2_LOCAL

STATUS_LINE_LIMIT = 1024


def local_header(send_proxy: SendProxy) -> bytes:
    if send_proxy == "v2":
        return V2_LOCAL
    if send_proxy == "v1":
        return V1_UNKNOWN
    return b""


async def probe(host: str, port: int, health: Health, send_proxy: SendProxy) -> tuple[bool, str]:
    """(passed, detail); never raises for a network problem."""
    port = health.port or port
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(health.timeout):
            reader, writer = await asyncio.open_connection(host, port, limit=STATUS_LINE_LIMIT * 2)
            header = local_header(send_proxy)
            if health.type == "http":
                return await _http(reader, writer, header, host, health)
            if header:
                writer.write(header)
                await writer.drain()
            return True, "connected"
    except TimeoutError:
        return False, f"timeout after {health.timeout:g}s"
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
        return False, _describe(e)
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def _http(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, header: bytes, host: str, health: Health
) -> tuple[bool, str]:
    host_header = f"[{host}]" if ":" in host else host
    writer.write(
        header
        + f"GET {health.path} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: edgeproxy-health-check\r\n"
        "Accept: */*\r\nConnection: close\r\n\r\n".encode("latin-1")
    )
    await writer.drain()
    line = await reader.readuntil(b"\n")
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        return False, f"not an HTTP response: {bytes(line[:60])!r}"
    status = int(parts[1])
    lo, hi = health.expect
    return lo <= status <= hi, f"HTTP {status}"


def _describe(e: BaseException) -> str:
    if isinstance(e, asyncio.IncompleteReadError):
        return "connection closed before a status line"
    if isinstance(e, asyncio.LimitOverrunError):
        return "status line too long"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror.lower()
    return str(e) or type(e).__name__
