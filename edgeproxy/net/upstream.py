"""Connecting to a server with retries: a refused or timed-out connect is retried on another
server (the failed one excluded and marked suspect), so the client notices nothing while any
server of the backend is up (SPEC.md ``retries``).

A backend with ``tls`` is connected to over TLS (tls/client.py), and a failed handshake or
certificate check is a failed connect like a refused one: logged with OpenSSL's reason, retried
on another server. Its PROXY header goes first, in clear, before the handshake, as HAProxy's
``send-proxy`` does with ``ssl``: the server reads the header, then speaks TLS.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from edgeproxy.log import log
from edgeproxy.tls.client import client_context, server_name
from edgeproxy.tls.client import describe as describe_tls

if TYPE_CHECKING:
    from edgeproxy.balance import Server
    from edgeproxy.net.context import ListenerContext
    from edgeproxy.pools import BackendPool

# How long a server that refused a connect is kept out of rotation before it is tried again
# (passive health): long enough that a burst of clients does not each pay for the same dead
# server, short enough that a restarted task is back within seconds.
SUSPECT_HOLD = 5.0


async def connect_upstream(
    ctx: ListenerContext,
    pool: BackendPool,
    client_ip: str,
    factory: Callable[[Server], asyncio.Protocol],
    first: Server | None = None,
    exclude: Sequence[Server] = (),
    header: bytes = b"",
    data: bytes = b"",
) -> tuple[asyncio.Transport, Server] | None:
    """Connect to a server of ``pool``; None when every attempt failed or nothing is up.

    ``factory(server)`` makes the protocol for a connection to ``server``. ``first``: a server
    the caller already picked (http mode picks before it knows whether an idle connection to it
    exists); retries pick again, never one of ``exclude`` (servers this request already tried).
    ``header`` (the PROXY header) is written first on the connection made, in clear, then
    ``data`` (a client's first bytes), over TLS if the backend has it; on a plain connection
    both go in one write, so one segment. The returned server
    has been ``acquire()``d; the caller releases it when done.

    Times: the balancer's passive-health clock is ``time.monotonic()`` (balance/server.py), so
    a failed server is marked with it; the connect-time histogram uses the loop's clock only for
    a difference of two of its own readings.
    """
    loop = ctx.loop
    tls = pool.config.tls
    sslctx = client_context(tls) if tls is not None else None
    tried: list[Server] = list(exclude)
    for attempt in range(pool.config.retries + 1):
        server = first if attempt == 0 and first is not None else pool.pick(client_ip, tried)
        if server is None:
            break
        server.acquire()
        started = loop.time()
        try:
            async with asyncio.timeout(ctx.timeouts.connect):
                if sslctx is None:
                    transport, _ = await loop.create_connection(_bound(factory, server), server.host, server.port)
                    if header or data:
                        transport.write(header + data)
                else:
                    assert tls is not None
                    name = server_name(tls, server.host)
                    transport = await _connect_tls(loop, _bound(factory, server), server, sslctx, name, header)
                    if data:
                        transport.write(data)
        except (OSError, TimeoutError) as e:  # ssl.SSLError is an OSError
            server.release()
            server.mark_failed(time.monotonic(), SUSPECT_HOLD)
            tried.append(server)
            log.warning(
                "connect to server failed",
                listener=ctx.listener.name,
                backend=pool.name,
                server=server.name,
                error=_describe(e),
            )
            continue
        except BaseException:  # cancelled: the client went away while we connected
            server.release()
            raise
        ctx.stats.connect_time.observe(loop.time() - started)
        return transport, server
    return None


async def _connect_tls(
    loop: asyncio.AbstractEventLoop,
    factory: Callable[[], asyncio.Protocol],
    server: Server,
    sslctx: ssl.SSLContext,
    name: str,
    header: bytes,
) -> asyncio.Transport:
    """A TLS connection whose protocol sees only the TLS transport (``connection_made`` once the
    handshake is done). With a ``header``, the TCP connection is made first, the header written
    in clear, then TLS started on it (``start_tls`` does not call ``connection_made``: done here)."""
    if not header:
        transport, _ = await loop.create_connection(factory, server.host, server.port, ssl=sslctx, server_hostname=name)
        return transport
    raw, _ = await loop.create_connection(asyncio.Protocol, server.host, server.port)
    try:
        raw.write(header)
        protocol = factory()
        tls_transport = await loop.start_tls(raw, protocol, sslctx, server_hostname=name)
    except BaseException:
        raw.close()
        raise
    if tls_transport is None:  # the connection closed during the handshake
        raise ConnectionResetError(0, "connection closed during the TLS handshake")
    protocol.connection_made(tls_transport)
    return tls_transport


def _bound(factory: Callable[[Server], asyncio.Protocol], server: Server) -> Callable[[], asyncio.Protocol]:
    return lambda: factory(server)


def _describe(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "connect timeout"
    if isinstance(e, ssl.SSLError):
        return describe_tls(e)
    return e.strerror or str(e) if isinstance(e, OSError) else str(e)
