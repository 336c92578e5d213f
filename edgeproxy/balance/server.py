"""One backend server: its address, weight, health/admin state and live counters.

A `Server` is deliberately a small mutable object compared by identity: the routing table, the
health checkers, the admin API and every open connection hold references to the *same* object, so
a state change made by a checker is seen by the next pick without any lookup. Discovery and reload
match servers across refreshes by `key` (host, port), not by object equality.

Sans-IO: nothing here reads the clock or touches a socket; callers pass `now`
(`time.monotonic()`) in.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["CheckResult", "Server", "ServerState"]


class ServerState(StrEnum):
    """Health/admin state, as shown by /status and `edgeproxy_server_up`.

    StrEnum is Python 3.11's spelling of `(str, Enum)`: members are str instances
    (`ServerState.UP == "up"`, JSON-serialisable as is) and str()/format() give the value.
    """

    UP = "up"
    DOWN = "down"  # failed active health checks
    DRAIN = "drain"  # admin or swarm: no new connections, open ones finish


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The last active health check of a server, as /status shows it."""

    ok: bool
    detail: str  # "connected", "HTTP 200", "connection refused", "timeout", ...
    time: float  # wall clock (time.time()) when it finished
    duration: float  # seconds


class Server:
    """A backend server.

    Counters (`active`, `total`, `failures`) are plain ints mutated in place: the proxy is one
    asyncio thread per worker process, so no locking is needed, and keeping them here (rather than
    in a metrics registry) makes leastconn and power-of-two-choices a couple of attribute loads.

    `weight` is read by the balancers when the server set is (re)built, so a changed weight takes
    effect at the next `Balancer.set_servers()`.
    """

    __slots__ = (
        "active",
        "admin_drain",
        "backup",
        "check_down",
        "failures",
        "host",
        "last_check",
        "meta",
        "name",
        "port",
        "source",
        "state",
        "suspect_until",
        "total",
        "weight",
    )

    host: str
    port: int
    weight: int
    backup: bool
    source: str
    name: str
    state: ServerState
    active: int
    total: int
    failures: int
    suspect_until: float
    meta: dict[str, str]
    admin_drain: bool
    check_down: bool
    last_check: CheckResult | None

    def __init__(
        self,
        host: str,
        port: int,
        weight: int = 1,
        backup: bool = False,
        source: str = "static",
        meta: dict[str, str] | None = None,
    ) -> None:
        if weight < 1:
            # A zero weight would make the weighted algorithms divide by or sample from nothing;
            # the config already bounds weight to 1..256, so this only catches programming errors.
            raise ValueError(f"server weight must be >= 1, got {weight}")
        self.host = host
        self.port = port
        self.weight = weight
        self.backup = backup
        self.source = source
        # IPv6 literals need brackets so the name parses back as host:port (SPEC: "[::1]:80").
        self.name = f"[{host}]:{port}" if ":" in host and not host.startswith("[") else (f"{host}:{port}")
        self.state = ServerState.UP
        self.active = 0
        self.total = 0
        self.failures = 0
        # 0.0 is before any monotonic reading, so a new server is usable at once.
        self.suspect_until = 0.0
        self.meta = {} if meta is None else meta
        # Why the state is what it is: an operator's drain (admin API) and the active health
        # check's verdict are kept apart from `state` so that lifting one restores the other.
        self.admin_drain = False
        self.check_down = False
        self.last_check: CheckResult | None = None

    @property
    def key(self) -> tuple[str, int]:
        """Identity across reloads and discovery refreshes."""
        return (self.host, self.port)

    def resting_state(self) -> ServerState:
        """The state this server should have while it is a member of its pool."""
        if self.admin_drain:
            return ServerState.DRAIN
        return ServerState.DOWN if self.check_down else ServerState.UP

    def usable(self, now: float) -> bool:
        """True when new connections may go here: UP and not held out by passive health.

        The balancers inline this test in their loops (a method call costs more than the test);
        keep the two in step.
        """
        return self.state is ServerState.UP and now >= self.suspect_until

    def acquire(self) -> None:
        """Count a connection/request sent to this server (call once it is picked)."""
        self.active += 1
        self.total += 1

    def release(self) -> None:
        """Count the end of a connection/request started with `acquire()`."""
        # Clamped at 0: an unbalanced release (e.g. a double release on an error path) must not
        # leave a negative count, which would make leastconn favour this server indefinitely.
        if self.active > 0:
            self.active -= 1

    def mark_failed(self, now: float, hold: float = 5.0) -> None:
        """Passive health: a connect to this server failed; keep it out for `hold` seconds.

        Never shortens an existing hold (a later, shorter hold must not readmit it early).
        """
        self.failures += 1
        until = now + hold
        if until > self.suspect_until:
            self.suspect_until = until

    def __repr__(self) -> str:
        flags = " backup" if self.backup else ""
        return f"<Server {self.name} w={self.weight}{flags} {self.state.value} active={self.active} src={self.source}>"
