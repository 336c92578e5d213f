"""Connecting to a server with retries: a refused or timed-out connect is retried on another
server (the failed one excluded and marked suspect), so the client notices nothing while any
server of the backend is up (SPEC.md ``retries``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from edgeproxy.log import log

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
    factory: Callable[[], asyncio.Protocol],
    first: Server | None = None,
) -> tuple[asyncio.Transport, Server] | None:
    """Connect to a server of ``pool``; None when every attempt failed or nothing is up.

    ``first``: a server the caller already picked (http mode picks before it knows whether an
    idle connection to it exists); retries pick again. The returned server has been
    ``acquire()``d; the caller releases it when done.
    """
    loop = ctx.loop
    tried: list[Server] = []
    for attempt in range(pool.config.retries + 1):
        server = first if attempt == 0 and first is not None else pool.pick(client_ip, tried)
        if server is None:
            break
        server.acquire()
        started = loop.time()
        try:
            async with asyncio.timeout(ctx.timeouts.connect):
                transport, _ = await loop.create_connection(factory, server.host, server.port)
        except (OSError, TimeoutError) as e:
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
        ctx.stats.connect_time.observe(loop.time() - started)
        return transport, server
    return None


def _describe(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "connect timeout"
    return e.strerror or str(e) if isinstance(e, OSError) else str(e)
