"""A backend pool: the live server set of one backend, which `net` picks from and which the
registry (pools/registry.py) updates in place for discovery, health checks and reloads.

A pool's servers come from two sources, static (`servers:` in the config) and swarm discovery;
both are merged by (host, port) so a server keeps its health state and counters when a reload
or a discovery refresh lists it again. A server that leaves is put in DRAIN: it gets no new
connections, the open ones finish.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from edgeproxy.balance import Balancer, Server, ServerState, make_balancer
from edgeproxy.config import Backend, ServerConfig
from edgeproxy.proto.proxy_protocol import build_v1, build_v2, build_v2_tlvs

ServerKey = tuple[str, int]


class BackendPool:
    __slots__ = ("balancer", "config", "draining", "name", "sends_proxy", "servers_by_source")

    def __init__(self, config: Backend) -> None:
        self.name = config.name
        self.config = config
        # read per request by the http relay (which idle pool): a plain attribute of this
        # compiled class, not two lookups through the config dataclass
        self.sends_proxy = config.send_proxy != "none"
        self.servers_by_source: dict[str, list[Server]] = {"static": [], "swarm": []}
        # Left the pool with connections still open, and since when (time.monotonic()): the
        # runtime ends those connections once they have had timeouts.drain to finish.
        self.draining: dict[Server, float] = {}
        self.balancer: Balancer = make_balancer(config.balance, ())
        self.set_source("static", [_from_config(s) for s in config.servers])

    @property
    def servers(self) -> list[Server]:
        return [s for group in self.servers_by_source.values() for s in group]

    def pick(self, client_ip: str, exclude: Sequence[Server] = ()) -> Server | None:
        return self.balancer.pick(client_ip, exclude)

    def proxy_header(self, src: tuple[str, int], dst: tuple[str, int], tlvs: bytes = b"") -> bytes:
        """The PROXY header for a new upstream connection (empty when send_proxy is none);
        ``tlvs`` (proxy_protocol.tls_tlvs) go in a v2 header, v1 has no room for them."""
        mode = self.config.send_proxy
        if mode == "v2":
            return build_v2_tlvs(src, dst, tlvs) if tlvs else build_v2(src, dst)
        if mode == "v1":
            return build_v1(src, dst)
        return b""

    def reconfigure(self, config: Backend) -> None:
        """A reload changed this backend: new algorithm/settings, static servers re-listed."""
        self.config = config
        self.sends_proxy = config.send_proxy != "none"
        current = self.servers
        self.balancer = make_balancer(config.balance, current)
        self.set_source("static", [_from_config(s) for s in config.servers])

    def set_source(self, source: str, servers: Iterable[Server]) -> None:
        """Replace the servers from one source; keep the state of those listed again."""
        old = {s.key: s for s in self.servers_by_source.get(source, [])}
        new: list[Server] = []
        for s in servers:
            kept = old.pop(s.key, None)
            if kept is not None:
                kept.weight, kept.backup, kept.meta = s.weight, s.backup, s.meta
                # A source may list a server as draining (e.g. a swarm task shutting down);
                # otherwise it rests in what the admin API and the health check say.
                kept.state = ServerState.DRAIN if s.state is ServerState.DRAIN else kept.resting_state()
                s = kept
            else:
                revived = next((d for d in self.draining if d.key == s.key), None)
                if revived is not None:
                    del self.draining[revived]
                    revived.state = ServerState.DRAIN if s.state is ServerState.DRAIN else revived.resting_state()
                    s = revived
            s.source = source
            new.append(s)
        now = time.monotonic()
        for gone in old.values():
            gone.state = ServerState.DRAIN
            if gone.active:
                self.draining[gone] = now
        self.servers_by_source[source] = new
        self.draining = {d: t for d, t in self.draining.items() if d.active}
        self.balancer.set_servers(self.servers)


def _from_config(s: ServerConfig) -> Server:
    return Server(s.address.host, s.address.port, weight=s.weight, backup=s.backup, source="static")
