"""Serving one listener's TCP sockets, with ``max_connections`` enforced by not accepting.

At the limit we stop calling accept(2), so further clients wait in the kernel's backlog instead
of being accepted and dropped (SPEC.md). asyncio and uvloop have no "pause accepting", so the
server runs on a dup() of each listening socket: closing that server closes only the duplicate,
the original stays bound and listening (its backlog keeps filling), and serving resumes on a
fresh dup. The originals belong to the runtime, which keeps them across reloads.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from edgeproxy.log import log
from edgeproxy.net.context import ListenerContext
from edgeproxy.net.tls import TlsLayer


class TcpListener:
    def __init__(
        self,
        ctx: ListenerContext,
        sockets: list[socket.socket],
        factory: Callable[[], asyncio.Protocol],
    ) -> None:
        self.ctx = ctx
        self.sockets = sockets
        self.factory = factory
        self.servers: list[asyncio.AbstractServer] = []
        self.want_serving = True
        self.stopped = False
        self._busy = False
        ctx.on_count = self._on_count

    async def start(self) -> None:
        await self._reconcile()

    def _on_count(self, active: int) -> None:
        want = active < self.ctx.listener.max_connections and not self.stopped
        if want != self.want_serving:
            self.want_serving = want
            if not want:
                log.warning(
                    "max_connections reached: new clients wait in the backlog",
                    listener=self.ctx.listener.name,
                    active=active,
                )
            if not self._busy:
                self.ctx.loop.create_task(self._reconcile())

    async def _reconcile(self) -> None:
        """Bring the servers in line with ``want_serving`` (it may flip while we await)."""
        self._busy = True
        try:
            while True:
                serving = bool(self.servers)
                if self.want_serving and not self.stopped and not serving:
                    for sock in self.sockets:
                        srv: asyncio.AbstractServer = await self.ctx.loop.create_server(
                            self._protocol, sock=sock.dup(), backlog=_BACKLOG
                        )
                        self.servers.append(srv)
                elif (not self.want_serving or self.stopped) and serving:
                    servers, self.servers = self.servers, []
                    for srv in servers:
                        srv.close()
                else:
                    return
        finally:
            self._busy = False

    def _protocol(self) -> asyncio.Protocol:
        """A new connection's protocol: the app's, or on a TLS listener the TLS layer that makes
        the app's once the handshake is done (checked per accept: a reload may turn tls on or off)."""
        ctx = self.ctx
        if ctx.tls is not None:
            return TlsLayer(ctx, self.factory)
        return self.factory()

    async def stop(self) -> None:
        """Stop accepting (open connections are left alone)."""
        self.stopped = True
        self.want_serving = False
        if not self._busy:
            await self._reconcile()
        self.ctx.on_count = None


_BACKLOG = 1024
