"""Backend pools: the live server sets that `net` picks from and that discovery, health checks
and reloads update in place.

A pool's servers come from two sources, static (`servers:` in the config) and swarm discovery;
both are merged by (host, port) so a server keeps its health state and counters when a reload
or a discovery refresh lists it again. A server that leaves is put in DRAIN: it gets no new
connections, the open ones finish.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from edgeproxy.balance import Balancer, Server, ServerState, make_balancer
from edgeproxy.config import Backend, ServerConfig
from edgeproxy.proto.proxy_protocol import build_v1, build_v2

ServerKey = tuple[str, int]


class BackendPool:
    __slots__ = ("balancer", "config", "draining", "name", "servers_by_source")

    def __init__(self, config: Backend) -> None:
        self.name = config.name
        self.config = config
        self.servers_by_source: dict[str, list[Server]] = {"static": [], "swarm": []}
        self.draining: list[Server] = []  # left the pool, still have open connections
        self.balancer: Balancer = make_balancer(config.balance, ())
        self.set_source("static", [_from_config(s) for s in config.servers])

    @property
    def servers(self) -> list[Server]:
        return [s for group in self.servers_by_source.values() for s in group]

    def pick(self, client_ip: str, exclude: Sequence[Server] = ()) -> Server | None:
        return self.balancer.pick(client_ip, exclude)

    def proxy_header(self, src: tuple[str, int], dst: tuple[str, int]) -> bytes:
        """The PROXY header for a new upstream connection (empty when send_proxy is none)."""
        mode = self.config.send_proxy
        if mode == "v2":
            return build_v2(src, dst)
        if mode == "v1":
            return build_v1(src, dst)
        return b""

    def reconfigure(self, config: Backend) -> None:
        """A reload changed this backend: new algorithm/settings, static servers re-listed."""
        self.config = config
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
                if kept.state is ServerState.DRAIN and s.state is not ServerState.DRAIN:
                    kept.state = ServerState.UP
                elif s.state is ServerState.DRAIN:
                    kept.state = ServerState.DRAIN
                s = kept
            else:
                revived = next((d for d in self.draining if d.key == s.key), None)
                if revived is not None:
                    self.draining.remove(revived)
                    revived.state = ServerState.UP
                    s = revived
            s.source = source
            new.append(s)
        for gone in old.values():
            gone.state = ServerState.DRAIN
            if gone.active:
                self.draining.append(gone)
        self.servers_by_source[source] = new
        self.draining = [d for d in self.draining if d.active]
        self.balancer.set_servers(self.servers)


def _from_config(s: ServerConfig) -> Server:
    return Server(s.address.host, s.address.port, weight=s.weight, backup=s.backup, source="static")
