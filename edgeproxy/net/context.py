"""What the connections of one listener share: its config, the backend pools, the set of open
connections (for drain and max_connections) and its counters. A reload calls ``update`` so new
connections see the new settings while open ones keep theirs.

``pools`` is the registry's mapping (pools/registry.py): one object for the life of the process,
changed in place, so a listener sees every pool a reload or discovery adds without being told."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

from edgeproxy.config import Listener, Route, Timeouts
from edgeproxy.net.deadlines import Deadlines
from edgeproxy.pools import BackendPool
from edgeproxy.proto.forwarded import ForwardingPolicy
from edgeproxy.proto.names import NameTable
from edgeproxy.proto.routing import RouteTable
from edgeproxy.stats import ListenerStats
from edgeproxy.tls.contexts import ListenerContexts

_MAX_LOCAL: Final = 256  # local addresses remembered per listener (a wildcard bind on a host with many)


class Closable(Protocol):
    def close(self, reason: str, *, abort: bool = False) -> None: ...


class ListenerContext:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        listener: Listener,
        timeouts: Timeouts,
        pools: Mapping[str, BackendPool],
        extra_routes: tuple[Route, ...] = (),
        tls: ListenerContexts | None = None,
    ) -> None:
        self.loop = loop
        self.pools = pools
        # (a dict as an ordered set: at 10k connections its table is 290 KiB where a set's is
        # 510 KiB, ~24 bytes less per connection)
        self.connections: dict[Closable, None] = {}
        self.deadlines = Deadlines(loop)  # http connections' timers (net/deadlines.py)
        self._local: dict[tuple[str, int], tuple[str, int]] = {}  # see local_address
        self.stats = ListenerStats()
        self.on_count: Callable[[int], None] | None = None  # set by the accept gate
        # ACME HTTP-01 (acme/answers.py ``http01_response`` bound to the challenge board): the
        # body answering ``GET path``, or None. Set on plain http listeners where ACME is wired;
        # asked before redirect_https and routing (SPEC.md).
        self._http01: Callable[[str], bytes | None] | None = None
        self._extra_routes = extra_routes
        self.update(listener, timeouts, tls)

    def update(self, listener: Listener, timeouts: Timeouts, tls: ListenerContexts | None = None) -> None:
        """New settings for new connections. ``tls``: the listener's SSL contexts (None: plain);
        connections already open keep the ones they handshook with."""
        self.listener = listener
        self.timeouts = timeouts
        self.tls = tls
        ltls = listener.tls
        # http: Strict-Transport-Security added to responses (RFC 6797: only over TLS)
        self.hsts = b"Strict-Transport-Security: max-age=%d\r\n" % ltls.hsts if ltls and ltls.hsts and tls else b""
        # Client and server inactivity end the same relay, so one timer with the smaller limit.
        self.idle_timeout = min(timeouts.client_idle_for(listener.mode), timeouts.server_idle)
        self.http_settings: object = None  # http: what its connections share (net/http_relay.py)
        self.trusted_proxies = listener.accept_proxy.trusted if listener.accept_proxy else ()
        self.forwarding = ForwardingPolicy(listener.forwarded, https=tls is not None)
        self.answers_locally = listener.redirect_https is not None or self._http01 is not None
        self._build_routes()

    @property
    def http01(self) -> Callable[[str], bytes | None] | None:
        return self._http01

    @http01.setter
    def http01(self, answer: Callable[[str], bytes | None] | None) -> None:
        self._http01 = answer
        self.answers_locally = self.listener.redirect_https is not None or answer is not None

    @property
    def extra_routes(self) -> tuple[Route, ...]:
        """http: routes added at run time (swarm labels); their backends are in ``pools``."""
        return self._extra_routes

    @extra_routes.setter
    def extra_routes(self, routes: tuple[Route, ...]) -> None:
        routes = tuple(routes)
        if routes != self._extra_routes:
            self._extra_routes = routes
            self._build_routes()

    def _build_routes(self) -> None:
        listener = self.listener
        if listener.mode == "tcp":
            # tcp: routes by the TLS server name; a label's http route has no meaning here.
            names = [((r.sni,), r.backend) for r in listener.routes if r.sni is not None]
            self.sni_table: NameTable[str] | None = NameTable(names) if names else None
            # Where the server name comes from: the ClientHello, read before relaying it
            # untouched, or (a listener that terminates TLS) the handshake's own.
            self.peek_hello = self.sni_table is not None and self.tls is None
            self.route_table = None
            return
        self.sni_table = None
        self.peek_hello = False
        routes = (*listener.routes, *self._extra_routes)
        # None: no routes at all, every request goes to the listener's backend without a lookup.
        self.route_table = RouteTable(routes, listener.backend) if routes else None

    def local_address(self, sockname: tuple[Any, ...]) -> tuple[str, int]:
        """The (host, port) a connection reached (``sockname``): one tuple per address for all
        the listener's connections, rather than a tuple, a string and an int for each
        (~150 bytes per connection; a listener has few local addresses)."""
        key = (sockname[0], sockname[1])
        return self._local.setdefault(key, key) if len(self._local) < _MAX_LOCAL else key

    def must_send_proxy_header(self, peer_ip: str) -> bool:
        if not self.trusted_proxies:
            return False
        addr = ipaddress.ip_address(peer_ip.partition("%")[0])
        return any(addr in net for net in self.trusted_proxies)

    def pool_for_connection(self, sni: str | None = None) -> BackendPool | None:
        """tcp: the pool for a connection whose client asked for server name ``sni``: the ``sni``
        route that names it (exact, then wildcard: proto/names.py), else the listener's backend."""
        table = self.sni_table
        name = self.listener.backend if table is None else table.lookup(sni) or self.listener.backend
        return self.pools.get(name) if name is not None else None

    def pool_for_request(self, host: bytes | None, path: bytes) -> BackendPool | None:
        """http: the pool for one request (precedence in edgeproxy/proto/routing.py)."""
        table = self.route_table
        name = self.listener.backend if table is None else table.backend_for(host, path)
        return self.pools.get(name) if name is not None else None

    def opened(self, conn: Closable) -> None:
        self.connections[conn] = None
        self.stats.connections_total += 1
        if self.on_count is not None:
            self.on_count(len(self.connections))

    def handed_over(self, conn: Closable) -> None:
        """A TLS layer (net/tls.py) hands its connection to the app protocol, which counts
        itself with ``opened``: the layer leaves the set, uncounted, without ending anything."""
        self.connections.pop(conn, None)
        self.stats.connections_total -= 1

    def closed(self, conn: Closable, reason: str, bytes_in: int = 0, bytes_out: int = 0) -> None:
        self.connections.pop(conn, None)
        stats = self.stats
        stats.bytes_in += bytes_in
        stats.bytes_out += bytes_out
        stats.ended[reason] = stats.ended.get(reason, 0) + 1
        if self.on_count is not None:
            self.on_count(len(self.connections))

    def close_all(self, reason: str, *, abort: bool = False) -> None:
        for conn in list(self.connections):
            conn.close(reason, abort=abort)

    def describe(self) -> dict[str, Any]:
        return {"name": self.listener.name, "active": len(self.connections)}
