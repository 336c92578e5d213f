"""The pool registry: every backend pool of one process and the label routes, changed only
through its methods, which tell subscribers what changed.

It owns three kinds of pools: *configured* ones (the config file's ``backends:``, replaced by a
reload), *dynamic* ones (label backends that swarm discovery adds and removes at run time; a
reload keeps them) and *gone* ones (removed, with connections to their servers still draining).
The composition root (runtime/main.py) hands one registry to each component that changes server
sets or states: health checks, discovery, the admin API, and in a worker the supervisor's updates
(pools/wire.py). Nothing else holds a pool by another way.

The data plane reads ``pools`` (one mapping object for the life of the process: a listener keeps
it and sees every change) and subscribes for the label routes; the supervisor subscribes to send
the workers what changed; health checks subscribe to check new servers at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from edgeproxy.balance import Server, ServerState
from edgeproxy.config import Backend, Route
from edgeproxy.log import log
from edgeproxy.pools.pool import BackendPool, ServerKey
from edgeproxy.staged import Staged

# How the supervisor tells a worker a server's state: (state, admin_drain, check_down).
ServerStates = Mapping[ServerKey, tuple[ServerState, bool, bool]]


@dataclass(frozen=True, slots=True)
class Change:
    """What one registry call changed: pools (added, removed, reconfigured, their servers or a
    server's state) by name, and whether the label routes (or the labelled TLS hosts) changed."""

    pools: frozenset[str] = frozenset()
    routes: bool = False
    acme_hosts: bool = False


Subscriber = Callable[[Change], None]


class PoolRegistry:
    def __init__(self) -> None:
        self._pools: dict[str, BackendPool] = {}
        self.configured: frozenset[str] = frozenset()  # the config file's backends
        self.dynamic: set[str] = set()  # label backends (discovery); never a configured name
        self.gone: list[BackendPool] = []  # removed, servers still draining
        self.routes: dict[str, tuple[Route, ...]] = {}  # label routes, by listener name
        # edgeproxy.tls=true: the hosts that get ACME certificates (the control plane's: not on the wire)
        self.acme_hosts: tuple[str, ...] = ()
        self._staged: set[str] = set()  # created by a reload that is not committed yet
        self._subscribers: list[Subscriber] = []

    @property
    def pools(self) -> Mapping[str, BackendPool]:
        """Every live pool by backend name (read-only: change them through the registry)."""
        return self._pools

    # -- notifications ---------------------------------------------------------------------------
    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        """Call ``fn(change)`` after each change; returns the function that unsubscribes."""
        self._subscribers.append(fn)

        def unsubscribe() -> None:
            if fn in self._subscribers:
                self._subscribers.remove(fn)

        return unsubscribe

    def _notify(self, pools: Iterable[str] = (), routes: bool = False, acme_hosts: bool = False) -> None:
        change = Change(frozenset(pools), routes, acme_hosts)
        if not change.pools and not change.routes and not change.acme_hosts:
            return
        for fn in list(self._subscribers):
            try:
                fn(change)
            except Exception as e:  # one subscriber's bug must not undo the change for the others
                log.error("pool registry: a subscriber failed", subscriber=repr(fn), error=repr(e))

    # -- the config file's backends (start and reload) -------------------------------------------
    def stage(self, backends: Mapping[str, Backend]) -> Staged:
        """Prepare the config file's backends: pools for new names are built now and are visible
        under those names (nothing running refers to them yet, and a listener the same reload
        adds may serve before the commit); reconfiguring and removing pools wait for commit."""
        created = {name: BackendPool(be) for name, be in backends.items() if name not in self._pools}
        self._pools.update(created)
        self._staged |= created.keys()

        def commit() -> None:
            self._staged -= created.keys()
            changed = set(created)
            for name, be in backends.items():
                pool = self._pools.get(name)
                if pool is None:  # a label pool of that name, removed since the stage
                    pool = self._pools[name] = BackendPool(be)
                    changed.add(name)
                elif pool.config != be:
                    pool.reconfigure(be)
                    changed.add(name)
                if name in self.dynamic:
                    self.dynamic.discard(name)  # the config file's backend of that name wins
                    changed.add(name)
            for name in self.configured - backends.keys():
                self._retire(name)
                changed.add(name)
            self.configured = frozenset(backends)
            self._notify(changed)

        def abort() -> None:
            self._staged -= created.keys()
            for name, pool in created.items():
                if self._pools.get(name) is pool:
                    del self._pools[name]

        return Staged(commit, abort)

    def _retire(self, name: str) -> None:
        pool = self._pools.pop(name, None)
        if pool is None:
            return
        # Its servers leave: open connections finish, and are ended at timeouts.drain.
        for source in list(pool.servers_by_source):
            pool.set_source(source, [])
        if pool.draining:
            self.gone.append(pool)

    # -- discovery -------------------------------------------------------------------------------
    def set_servers(self, backend: str, source: str, servers: Iterable[Server]) -> None:
        """The servers one source (``static``, ``swarm``) lists for a backend now."""
        pool = self._pools.get(backend)
        if pool is None:
            return
        pool.set_source(source, servers)
        self._notify([backend])

    def set_label_backends(
        self, backends: Mapping[str, Backend], routes: Mapping[str, Iterable[Route]], acme_hosts: Iterable[str] = ()
    ) -> None:
        """The dynamic backends and their routes by listener, as a whole: those not listed go.
        A name the config file defines is skipped: the file's backend wins. ``acme_hosts``: the
        hosts of services labelled ``edgeproxy.tls=true``."""
        changed: set[str] = set()
        reserved = self.configured | self._staged
        for name in [n for n in self.dynamic if n not in backends]:
            self.dynamic.discard(name)
            self._retire(name)
            changed.add(name)
        for name, be in backends.items():
            if name in reserved:
                continue
            pool = self._pools.get(name)
            if pool is None:
                self._pools[name] = BackendPool(be)
                changed.add(name)
            elif pool.config != be:
                pool.reconfigure(be)
                changed.add(name)
            self.dynamic.add(name)
        wanted = {listener: tuple(rs) for listener, rs in routes.items()}
        wanted = {listener: rs for listener, rs in wanted.items() if rs}
        routes_changed = wanted != self.routes
        self.routes = wanted
        hosts = tuple(sorted(set(acme_hosts)))
        hosts_changed = hosts != self.acme_hosts
        self.acme_hosts = hosts
        self._notify(changed, routes_changed, hosts_changed)

    # -- server states: health checks, the admin API, the supervisor -------------------------------
    def set_check_down(self, backend: str, server: Server, down: bool) -> None:
        """The active health check's verdict (``down=False`` also when nobody checks it any more)."""
        server.check_down = down
        if server.state is not ServerState.DRAIN:  # a draining server stays draining; it rests here later
            server.state = server.resting_state()
        self._notify([backend])

    def set_admin_drain(self, backend: str, server: Server, drain: bool) -> None:
        """An operator's drain (admin API): no new connections; ``drain=False`` lifts it."""
        server.admin_drain = drain
        server.state = ServerState.DRAIN if drain else server.resting_state()
        self._notify([backend])

    def set_states(self, backend: str, states: ServerStates) -> None:
        """States decided elsewhere (a worker is told its supervisor's), by server address."""
        pool = self._pools.get(backend)
        if pool is None:
            return
        for s in pool.servers:
            got = states.get(s.key)
            if got is not None:
                s.state, s.admin_drain, s.check_down = got
        self._notify([backend])

    def find_server(self, backend: str, name: str) -> Server | None:
        """A server of ``backend`` by its name or ``host:port``."""
        pool = self._pools.get(backend)
        if pool is None:
            return None
        return next((s for s in pool.servers if name in (s.name, f"{s.host}:{s.port}")), None)

    # -- drain -----------------------------------------------------------------------------------
    def late_servers(self, deadline: float) -> set[Server]:
        """Servers that left their pool before ``deadline`` (time.monotonic()) with connections
        still open; forgets those whose connections have all ended."""
        late: set[Server] = set()
        for pool in [*self._pools.values(), *self.gone]:
            for s, since in list(pool.draining.items()):
                if not s.active:
                    del pool.draining[s]
                elif since <= deadline:
                    late.add(s)
        self.gone = [p for p in self.gone if p.draining]
        return late
