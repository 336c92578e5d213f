"""The validated configuration: frozen objects built once by the loader and swapped whole.

Running code never sees a half-applied config (ARCHITECTURE.md): a reload builds a new
``Config`` and replaces the old one in one assignment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from edgeproxy.config.user import User
from edgeproxy.config.values import Address, IPNetwork, printable

Mode = Literal["tcp", "http", "udp"]
SendProxy = Literal["none", "v1", "v2"]
BalanceName = Literal["roundrobin", "leastconn", "source", "random"]

FORWARDED_HEADERS = (
    "x-forwarded-for",
    "x-real-ip",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "forwarded",
)
DEFAULT_FORWARDED_HEADERS = ("x-forwarded-for", "x-real-ip", "x-forwarded-proto")
# http: the protocols a request may switch to with Upgrade (lower case). h2c is never relayed:
# its HTTP/2 requests would reach the server without our forwarding headers.
DEFAULT_UPGRADES: tuple[str, ...] = ("websocket",)
NEVER_UPGRADES = ("h2c", "h2")

# UDP flows are cheaper to re-create and clients rarely close them, so they expire sooner
# (SPEC.md: "client_idle, 30 s by default for udp").
UDP_DEFAULT_IDLE = 30.0


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 5.0
    client_idle: float = 60.0
    server_idle: float = 60.0
    http_request: float = 10.0
    drain: float = 30.0
    client_idle_explicit: bool = False

    def client_idle_for(self, mode: Mode) -> float:
        if mode == "udp" and not self.client_idle_explicit:
            return UDP_DEFAULT_IDLE
        return self.client_idle


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = "info"
    access: str = "stderr"  # stderr | stdout | off | a file path
    format: Literal["json", "text"] = "json"


@dataclass(frozen=True, slots=True)
class AdminConfig:
    bind: Address
    token: str | None = None


@dataclass(frozen=True, slots=True)
class AcceptProxy:
    trusted: tuple[IPNetwork, ...]


@dataclass(frozen=True, slots=True)
class Forwarded:
    trusted: tuple[IPNetwork, ...] = ()
    headers: tuple[str, ...] = DEFAULT_FORWARDED_HEADERS


@dataclass(frozen=True, slots=True)
class Route:
    """http: by ``host`` and ``path_prefix``; tcp: by ``sni``, the TLS server name the client
    asks for (read from its ClientHello, without terminating)."""

    backend: str
    host: str | None = None  # lower-case, no port
    path_prefix: str | None = None
    sni: str | None = None  # lower-case; "*.example.com" matches one label


@dataclass(frozen=True, slots=True)
class CertificateFiles:
    """One ``listeners[].tls.certificates`` entry: PEM files, read by the control plane (tls/)."""

    cert: str  # the certificate, then its chain
    key: str | None = None  # None: the private key is in the ``cert`` file (HAProxy's ``crt`` files)
    where: str = field(default="", compare=False)  # its YAML path, for errors found reading the files
    line: int = field(default=0, compare=False)


TLS_VERSIONS = ("1.2", "1.3")
HTTP_ALPN: tuple[str, ...] = ("http/1.1",)  # what an http listener offers (h2 is not negotiated yet)


@dataclass(frozen=True, slots=True)
class ListenerTLS:
    """``listeners[].tls``: terminate TLS on this listener (SPEC.md, "TLS")."""

    acme: tuple[str, ...] = ()  # names whose certificates are obtained and renewed by ACME
    certificates: tuple[CertificateFiles, ...] = ()  # SNI picks by the names in them; the first is the default
    min_version: str = "1.2"  # one of TLS_VERSIONS
    alpn: tuple[str, ...] = HTTP_ALPN  # offered in this order (http: HTTP_ALPN; tcp: none by default)
    hsts: float | None = None  # http: Strict-Transport-Security max-age (seconds) added to responses


@dataclass(frozen=True, slots=True)
class Listener:
    name: str
    bind: tuple[Address, ...]
    mode: Mode
    backend: str | None
    routes: tuple[Route, ...] = ()
    accept_proxy: AcceptProxy | None = None
    forwarded: Forwarded = field(default_factory=Forwarded)
    max_connections: int = 10000
    max_datagram_size: int = 65535  # udp: larger datagrams are dropped and counted
    upgrades: tuple[str, ...] = DEFAULT_UPGRADES  # http: protocols a request may switch to (101)
    tls: ListenerTLS | None = None
    redirect_https: int | None = None  # http without tls: 308 to https://host[:this port]/... (None: off)


@dataclass(frozen=True, slots=True)
class Health:
    type: Literal["tcp", "http", "none"] = "tcp"
    interval: float = 2.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 3
    path: str = "/"
    expect: tuple[int, int] = (200, 399)  # inclusive status range
    port: int | None = None  # check this port instead of the server's (e.g. tcp check of a udp server)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    address: Address
    weight: int = 1
    backup: bool = False


@dataclass(frozen=True, slots=True)
class SwarmRef:
    service: str
    port: int  # the service's target port; its host-mode published port is discovered


@dataclass(frozen=True, slots=True)
class BackendTLS:
    """``backends.X.tls``: connections to the servers are TLS (re-encrypt)."""

    verify: bool = True  # the server's certificate chain and name are checked
    ca: str | None = None  # the file of trusted CA certificates; None: the system's
    ca_pem: bytes = field(default=b"", repr=False)  # its certificates, read when the file is loaded
    sni: str | None = None  # the name sent and checked; None: the server's host when it is a name


@dataclass(frozen=True, slots=True)
class Backend:
    name: str
    balance: BalanceName = "roundrobin"
    send_proxy: SendProxy = "none"
    retries: int = 2
    health: Health = field(default_factory=Health)
    servers: tuple[ServerConfig, ...] = ()
    swarm: SwarmRef | None = None
    tls: BackendTLS | None = None


@dataclass(frozen=True, slots=True)
class TLSFiles:
    ca: str
    cert: str
    key: str


@dataclass(frozen=True, slots=True)
class SwarmConfig:
    managers: tuple[str, ...] = ("unix:///var/run/docker.sock",)
    tls: TLSFiles | None = None
    refresh: float = 10.0
    timeout: float = 3.0  # per API call: a leaderless manager blocks 20 s (TESTBED.md)
    labels: bool = False
    node_addresses: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


ACME_SWARM_STORAGE = "swarm"


@dataclass(frozen=True, slots=True)
class AcmeConfig:
    """The top-level ``acme:`` section (SPEC.md, "TLS"): one account per directory and email."""

    directory: str
    email: str | None = None
    storage: str = "/var/lib/edgeproxy/acme"  # a directory, or "swarm" (Docker configs via the managers)
    ca: str | None = None  # trust for the directory itself (a private ACME server); None: the system's
    renew_before: float = 30 * 86400.0
    encryption_key: str | None = None  # storage swarm: file with the key that encrypts private keys

    @property
    def in_swarm(self) -> bool:
        return self.storage == ACME_SWARM_STORAGE


@dataclass(frozen=True, slots=True)
class Config:
    path: str
    digest: str  # sha256 of the file, shown in /status
    listeners: tuple[Listener, ...]
    backends: Mapping[str, Backend]
    timeouts: Timeouts = field(default_factory=Timeouts)
    log: LogConfig = field(default_factory=LogConfig)
    admin: AdminConfig | None = None
    workers: int = 1
    user: User | None = None  # the data plane's, when started as root (runtime/privileges.py)
    swarm: SwarmConfig | None = None
    acme: AcmeConfig | None = None

    def files(self) -> dict[str, bytes]:
        """The contents of the files this config names that the data plane needs (a backend's
        ``tls.ca``), by path, as the loader read them: what the supervisor sends a worker, which
        does not open files itself (ARCHITECTURE.md)."""
        return {b.tls.ca: b.tls.ca_pem for b in self.backends.values() if b.tls is not None and b.tls.ca is not None}

    def acme_names(self) -> tuple[str, ...]:
        """Every ``tls.acme`` name of every listener, first listed first, each once."""
        names = (n for lst in self.listeners if lst.tls is not None for n in lst.tls.acme)
        return tuple(dict.fromkeys(names))

    def summary(self) -> str:
        """The one line ``edgeproxy check`` prints for a valid file."""
        listeners = ", ".join(f"{lst.name} ({lst.mode} {' '.join(map(str, lst.bind))})" for lst in self.listeners)
        static = sum(len(b.servers) for b in self.backends.values())
        swarm = sum(1 for b in self.backends.values() if b.swarm)
        parts = [
            f"{len(self.listeners)} listener(s): {listeners}",
            f"{len(self.backends)} backend(s), {static} static server(s)",
        ]
        if self.swarm:
            parts.append(f"swarm: {swarm} backend(s) from services" + (", labels on" if self.swarm.labels else ""))
        parts.append(f"workers: {self.workers}")
        if self.user is not None:
            parts.append(f"user: {self.user}")
        # printable(): the path comes from the command line, where a lone surrogate (a file name
        # that is not UTF-8) would make print() raise.
        return printable(f"{self.path}: configuration OK; " + "; ".join(parts))
