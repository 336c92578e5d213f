"""YAML -> validated ``Config``, collecting every error with its YAML path and line.

We walk PyYAML's composed node tree rather than the constructed dicts because only nodes carry
line numbers, and because composing lets us see duplicate mapping keys, which PyYAML's
constructor silently collapses (a second ``web:`` backend would just replace the first).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import hashlib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeVar, cast

import yaml

from edgeproxy.config.model import (
    ACME_SWARM_STORAGE,
    FORWARDED_HEADERS,
    AcceptProxy,
    AcmeConfig,
    AdminConfig,
    Backend,
    Config,
    Forwarded,
    Health,
    Listener,
    ListenerTLS,
    LogConfig,
    Route,
    ServerConfig,
    SwarmConfig,
    SwarmRef,
    Timeouts,
    TLSFiles,
)
from edgeproxy.config.values import (
    Address,
    IPNetwork,
    is_loopback,
    parse_address,
    parse_duration,
    parse_network,
)

T = TypeVar("T")

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_FLOAT = "tag:yaml.org,2002:float"


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    file: str
    line: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(Exception):
    """Raised with every problem found in a file; ``str()`` lists one per line."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(map(str, issues)))


class _Invalid(Exception):
    """Internal: a value was reported as an error; the caller skips it."""


def _yaml_type(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return {
        _INT: "a number",
        _FLOAT: "a number",
        _BOOL: "true/false",
        _NULL: "empty (null)",
    }.get(node.tag, f"{node.value!r}" if isinstance(node, yaml.ScalarNode) else "?")


class _Reader:
    """Typed accessors over yaml nodes that record errors instead of raising them."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.issues: list[ConfigIssue] = []

    def error(self, node: yaml.Node | None, path: str, message: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 0
        self.issues.append(ConfigIssue(self.file, line, path, message))

    def fail(self, node: yaml.Node | None, path: str, message: str) -> _Invalid:
        self.error(node, path, message)
        return _Invalid()

    # -- structure ---------------------------------------------------------------------------
    def mapping(self, node: yaml.Node, path: str, allowed: tuple[str, ...]) -> dict[str, yaml.Node]:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, path, f"expected a mapping, got {_yaml_type(node)}")
        out: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            sub = f"{path}.{key}" if path else key
            if key in out:
                self.error(key_node, sub, "duplicate key (the earlier one would be ignored)")
                continue
            if key not in allowed:
                hint = difflib.get_close_matches(key, allowed, n=1)
                did = f" (did you mean '{hint[0]}'?)" if hint else f" (known: {', '.join(allowed)})"
                self.error(key_node, sub, f"unknown key '{key}'{did}")
                continue
            out[key] = value_node
        return out

    def items(self, node: yaml.Node, path: str) -> Iterator[tuple[str, yaml.Node, yaml.Node]]:
        """Entries of a mapping with free-form keys (backend names, node names)."""
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, path, f"expected a mapping, got {_yaml_type(node)}")
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in seen:
                self.error(key_node, f"{path}.{key}", "duplicate name (the earlier one would be ignored)")
                continue
            seen.add(key)
            yield key, key_node, value_node

    def seq(self, node: yaml.Node, path: str, *, scalar_ok: bool = False) -> list[yaml.Node]:
        if isinstance(node, yaml.SequenceNode):
            return list(node.value)
        if scalar_ok and isinstance(node, yaml.ScalarNode) and node.tag != _NULL:
            return [node]
        raise self.fail(node, path, f"expected a list, got {_yaml_type(node)}")

    def each(
        self, node: yaml.Node, path: str, parse: Callable[[yaml.Node, str], T], *, scalar_ok: bool = False
    ) -> list[T]:
        out: list[T] = []
        for i, item in enumerate(self.seq(node, path, scalar_ok=scalar_ok)):
            with contextlib.suppress(_Invalid):
                out.append(parse(item, f"{path}[{i}]"))
        return out

    # -- scalars -----------------------------------------------------------------------------
    def text(self, node: yaml.Node, path: str) -> str:
        if not isinstance(node, yaml.ScalarNode) or node.tag not in (_STR, _INT, _FLOAT):
            raise self.fail(node, path, f"expected a string, got {_yaml_type(node)}")
        value = str(node.value)
        if not value:
            raise self.fail(node, path, "must not be empty")
        return value

    def integer(self, node: yaml.Node, path: str, lo: int, hi: int | None = None) -> int:
        if not isinstance(node, yaml.ScalarNode) or node.tag != _INT:
            raise self.fail(node, path, f"expected a whole number, got {_yaml_type(node)}")
        value = int(str(node.value).replace("_", ""), 0)
        if value < lo or (hi is not None and value > hi):
            bound = f"{lo}-{hi}" if hi is not None else f">= {lo}"
            raise self.fail(node, path, f"{value} is out of range ({bound})")
        return value

    def boolean(self, node: yaml.Node, path: str) -> bool:
        if not isinstance(node, yaml.ScalarNode) or node.tag != _BOOL:
            raise self.fail(node, path, f"expected true or false, got {_yaml_type(node)}")
        return str(node.value).lower() in ("true", "yes", "on", "y")

    def choice(self, node: yaml.Node, path: str, choices: tuple[str, ...]) -> str:
        # YAML 1.1 reads a bare `off`/`no` as false; for send_proxy that means "none".
        is_false = isinstance(node, yaml.ScalarNode) and node.tag == _BOOL and not self.boolean(node, path)
        if is_false and "none" in choices:
            return "none"
        value = self.text(node, path)
        if value not in choices:
            raise self.fail(node, path, f"'{value}' is not one of: {', '.join(choices)}")
        return value

    def convert(self, node: yaml.Node, path: str, parse: Callable[[str], T]) -> T:
        value = self.text(node, path)
        try:
            return parse(value)
        except ValueError as e:
            raise self.fail(node, path, str(e)) from None

    def duration(self, node: yaml.Node, path: str) -> float:
        return self.convert(node, path, parse_duration)

    def network(self, node: yaml.Node, path: str) -> IPNetwork:
        return self.convert(node, path, parse_network)

    def optional(
        self, fields: dict[str, yaml.Node], key: str, path: str, parse: Callable[[yaml.Node, str], T], default: T
    ) -> T:
        node = fields.get(key)
        if node is None:
            return default
        try:
            return parse(node, f"{path}.{key}" if path else key)
        except _Invalid:
            return default


# ---------------------------------------------------------------------------------------------
_TOP_KEYS = ("admin", "workers", "log", "timeouts", "listeners", "backends", "swarm", "acme")
_LISTENER_KEYS = (
    "name",
    "bind",
    "mode",
    "backend",
    "routes",
    "accept_proxy",
    "forwarded",
    "max_connections",
    "max_datagram_size",
    "tls",
)
_BACKEND_KEYS = ("balance", "send_proxy", "retries", "health", "servers", "swarm")
_HEALTH_KEYS = ("type", "interval", "timeout", "rise", "fall", "path", "expect", "port")


class _Builder:
    def __init__(self, r: _Reader) -> None:
        self.r = r

    def timeouts(self, node: yaml.Node, path: str) -> Timeouts:
        f = self.r.mapping(node, path, ("connect", "client_idle", "server_idle", "http_request", "drain"))
        d = Timeouts()
        dur = self.r.duration
        return Timeouts(
            connect=self.r.optional(f, "connect", path, dur, d.connect),
            client_idle=self.r.optional(f, "client_idle", path, dur, d.client_idle),
            server_idle=self.r.optional(f, "server_idle", path, dur, d.server_idle),
            http_request=self.r.optional(f, "http_request", path, dur, d.http_request),
            drain=self.r.optional(f, "drain", path, dur, d.drain),
            client_idle_explicit="client_idle" in f,
        )

    def log(self, node: yaml.Node, path: str) -> LogConfig:
        f = self.r.mapping(node, path, ("level", "access", "format"))
        levels = ("debug", "info", "warning", "error")
        return LogConfig(
            level=self.r.optional(f, "level", path, lambda n, p: self.r.choice(n, p, levels), "info"),
            access=self.r.optional(f, "access", path, self.r.text, "stderr"),
            format=cast(
                Any, self.r.optional(f, "format", path, lambda n, p: self.r.choice(n, p, ("json", "text")), "json")
            ),
        )

    def admin(self, node: yaml.Node, path: str) -> AdminConfig:
        f = self.r.mapping(node, path, ("bind", "token"))
        if "bind" not in f:
            raise self.r.fail(node, path, "missing 'bind' (e.g. 127.0.0.1:9901)")
        bind = self.r.convert(f["bind"], f"{path}.bind", parse_address)
        token = self.r.optional(f, "token", path, self.r.text, None)
        if token is None and not is_loopback(bind.host):
            self.r.error(
                f["bind"],
                f"{path}.bind",
                f"{bind} is not a loopback address: set admin.token so /metrics and /status "
                "are not open to the network",
            )
        return AdminConfig(bind=bind, token=token)

    def workers(self, node: yaml.Node, path: str) -> int:
        if isinstance(node, yaml.ScalarNode) and node.value == "auto":
            return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return self.r.integer(node, path, 1, 256)

    def networks(self, node: yaml.Node, path: str) -> tuple[IPNetwork, ...]:
        return tuple(self.r.each(node, path, self.r.network, scalar_ok=True))

    def listener(self, node: yaml.Node, path: str) -> Listener:
        f = self.r.mapping(node, path, _LISTENER_KEYS)
        for key in ("name", "bind"):
            if key not in f:
                self.r.error(node, path, f"missing '{key}'")
        if "name" not in f or "bind" not in f:
            raise _Invalid()
        name = self.r.text(f["name"], f"{path}.name")
        mode = cast(
            Any, self.r.optional(f, "mode", path, lambda n, p: self.r.choice(n, p, ("tcp", "http", "udp")), "tcp")
        )
        bind = tuple(
            self.r.each(f["bind"], f"{path}.bind", lambda n, p: self.r.convert(n, p, parse_address), scalar_ok=True)
        )
        if isinstance(f["bind"], yaml.SequenceNode) and not f["bind"].value:
            self.r.error(f["bind"], f"{path}.bind", "needs at least one address")
        backend = self.r.optional(f, "backend", path, self.r.text, None)
        routes: tuple[Route, ...] = ()
        if "routes" in f:
            if mode != "http":
                self.r.error(f["routes"], f"{path}.routes", f"routes need mode: http (this listener is {mode})")
            routes = tuple(self.r.each(f["routes"], f"{path}.routes", self.route))
        if backend is None and not routes:
            self.r.error(node, path, "missing 'backend' (the default backend of this listener)")
        accept_proxy = None
        if "accept_proxy" in f:
            p = f"{path}.accept_proxy"
            if mode == "udp":
                self.r.error(f["accept_proxy"], p, "accept_proxy is not supported on udp listeners")
            try:
                af = self.r.mapping(f["accept_proxy"], p, ("trusted",))
                if "trusted" not in af:
                    self.r.error(f["accept_proxy"], p, "missing 'trusted' (networks that send a PROXY header)")
                else:
                    accept_proxy = AcceptProxy(trusted=self.networks(af["trusted"], f"{p}.trusted"))
            except _Invalid:
                pass
        forwarded = Forwarded()
        if "forwarded" in f:
            p = f"{path}.forwarded"
            if mode != "http":
                self.r.error(f["forwarded"], p, f"forwarded headers need mode: http (this listener is {mode})")
            try:
                ff = self.r.mapping(f["forwarded"], p, ("trusted", "headers"))
                no_networks: tuple[IPNetwork, ...] = ()
                trusted = self.r.optional(ff, "trusted", p, self.networks, no_networks)
                headers = self.r.optional(ff, "headers", p, self.forwarded_headers, forwarded.headers)
                forwarded = Forwarded(trusted=trusted, headers=headers)
            except _Invalid:
                pass
        return Listener(
            name=name,
            bind=bind,
            mode=mode,
            backend=backend,
            routes=routes,
            accept_proxy=accept_proxy,
            forwarded=forwarded,
            max_connections=self.r.optional(f, "max_connections", path, lambda n, p: self.r.integer(n, p, 1), 10000),
            max_datagram_size=self.r.optional(
                f, "max_datagram_size", path, lambda n, p: self.r.integer(n, p, 1, 65535), 65535
            ),
            tls=self.r.optional(f, "tls", path, lambda n, p: _listener_tls(self.r, n, p), None),
        )

    def forwarded_headers(self, node: yaml.Node, path: str) -> tuple[str, ...]:
        def one(n: yaml.Node, p: str) -> str:
            name = self.r.text(n, p).lower()
            if name not in FORWARDED_HEADERS:
                raise self.r.fail(n, p, f"'{name}' is not one of: {', '.join(FORWARDED_HEADERS)}")
            return name

        return tuple(self.r.each(node, path, one))

    def route(self, node: yaml.Node, path: str) -> Route:
        f = self.r.mapping(node, path, ("host", "path_prefix", "backend"))
        if "backend" not in f:
            raise self.r.fail(node, path, "missing 'backend'")
        backend = self.r.text(f["backend"], f"{path}.backend")
        host = self.r.optional(f, "host", path, self.r.text, None)
        prefix = self.r.optional(f, "path_prefix", path, self.r.text, None)
        if prefix is not None and not prefix.startswith("/"):
            self.r.error(f["path_prefix"], f"{path}.path_prefix", f"'{prefix}' must start with /")
        if host is None and prefix is None:
            self.r.error(node, path, "a route needs 'host', 'path_prefix' or both")
        return Route(backend=backend, host=host.lower() if host else None, path_prefix=prefix)

    def health(self, node: yaml.Node, path: str) -> Health:
        f = self.r.mapping(node, path, _HEALTH_KEYS)
        d = Health()
        r = self.r
        return Health(
            type=cast(
                Any, r.optional(f, "type", path, lambda n, p: r.choice(n, p, ("tcp", "http", "none")), str(d.type))
            ),
            interval=r.optional(f, "interval", path, r.duration, d.interval),
            timeout=r.optional(f, "timeout", path, r.duration, d.timeout),
            rise=r.optional(f, "rise", path, lambda n, p: r.integer(n, p, 1, 100), d.rise),
            fall=r.optional(f, "fall", path, lambda n, p: r.integer(n, p, 1, 100), d.fall),
            path=r.optional(f, "path", path, r.text, d.path),
            expect=r.optional(f, "expect", path, self.expect, d.expect),
            port=r.optional(f, "port", path, lambda n, p: r.integer(n, p, 1, 65535), None),
        )

    def expect(self, node: yaml.Node, path: str) -> tuple[int, int]:
        """``200``, ``"2xx"`` or ``"200-399"``."""
        text = self.r.text(node, path)
        try:
            if len(text) == 3 and text.endswith("xx") and text[0] in "12345":
                lo = int(text[0]) * 100
                return lo, lo + 99
            lo_s, _, hi_s = text.partition("-")
            lo, hi = int(lo_s), int(hi_s or lo_s)
            if 100 <= lo <= hi <= 599:
                return lo, hi
        except ValueError:
            pass
        raise self.r.fail(
            node, path, f"invalid expect {text!r}: use a status (200), a class (2xx) or a range (200-399)"
        )

    def server(self, node: yaml.Node, path: str) -> ServerConfig:
        def to_addr(n: yaml.Node, p: str) -> Address:
            return self.r.convert(n, p, lambda t: parse_address(t, allow_hostname=True))

        if isinstance(node, yaml.ScalarNode):
            return ServerConfig(address=to_addr(node, path))
        f = self.r.mapping(node, path, ("address", "weight", "backup"))
        if "address" not in f:
            raise self.r.fail(node, path, "missing 'address'")
        return ServerConfig(
            address=to_addr(f["address"], f"{path}.address"),
            weight=self.r.optional(f, "weight", path, lambda n, p: self.r.integer(n, p, 1, 256), 1),
            backup=self.r.optional(f, "backup", path, self.r.boolean, False),
        )

    def swarm_ref(self, node: yaml.Node, path: str) -> SwarmRef:
        f = self.r.mapping(node, path, ("service", "port"))
        if "service" not in f or "port" not in f:
            raise self.r.fail(node, path, "needs 'service' and 'port' (the service's target port)")
        return SwarmRef(
            service=self.r.text(f["service"], f"{path}.service"),
            port=self.r.integer(f["port"], f"{path}.port", 1, 65535),
        )

    def backend(self, name: str, node: yaml.Node, path: str) -> Backend:
        f = self.r.mapping(node, path, _BACKEND_KEYS)
        r = self.r
        return Backend(
            name=name,
            balance=cast(
                Any,
                r.optional(
                    f,
                    "balance",
                    path,
                    lambda n, p: r.choice(n, p, ("roundrobin", "leastconn", "source", "random")),
                    "roundrobin",
                ),
            ),
            send_proxy=cast(
                Any, r.optional(f, "send_proxy", path, lambda n, p: r.choice(n, p, ("none", "v1", "v2")), "none")
            ),
            retries=r.optional(f, "retries", path, lambda n, p: r.integer(n, p, 0, 100), 2),
            health=r.optional(f, "health", path, self.health, Health()),
            servers=tuple(r.optional(f, "servers", path, lambda n, p: r.each(n, p, self.server), [])),
            swarm=r.optional(f, "swarm", path, self.swarm_ref, None),
        )

    def swarm(self, node: yaml.Node, path: str) -> SwarmConfig:
        f = self.r.mapping(node, path, ("managers", "tls", "refresh", "timeout", "labels", "node_addresses"))
        r = self.r
        d = SwarmConfig()

        def manager(n: yaml.Node, p: str) -> str:
            url = r.text(n, p)
            if not (
                url.startswith("unix://")
                or url.startswith("tcp://")
                or url.startswith("http://")
                or url.startswith("https://")
            ):
                raise r.fail(n, p, f"'{url}' must start with unix://, tcp://, http:// or https://")
            return url

        def tls(n: yaml.Node, p: str) -> TLSFiles:
            tf = r.mapping(n, p, ("ca", "cert", "key"))
            missing = [k for k in ("ca", "cert", "key") if k not in tf]
            if missing:
                raise r.fail(n, p, f"missing {', '.join(missing)}")
            return TLSFiles(*(r.text(tf[k], f"{p}.{k}") for k in ("ca", "cert", "key")))

        def node_addresses(n: yaml.Node, p: str) -> MappingProxyType[str, str]:
            out: dict[str, str] = {}
            for key, _kn, vn in r.items(n, p):
                with contextlib.suppress(_Invalid):
                    out[key] = r.convert(vn, f"{p}.{key}", lambda t: parse_network(t).network_address.compressed)
            return MappingProxyType(out)

        managers = r.optional(f, "managers", path, lambda n, p: r.each(n, p, manager, scalar_ok=True), list(d.managers))
        if "managers" in f and isinstance(f["managers"], yaml.SequenceNode) and not f["managers"].value:
            r.error(f.get("managers", node), f"{path}.managers", "needs at least one manager")
        return SwarmConfig(
            managers=tuple(managers),
            tls=r.optional(f, "tls", path, tls, None),
            refresh=r.optional(f, "refresh", path, r.duration, d.refresh),
            timeout=r.optional(f, "timeout", path, r.duration, d.timeout),
            labels=r.optional(f, "labels", path, r.boolean, False),
            node_addresses=r.optional(f, "node_addresses", path, node_addresses, d.node_addresses),
        )


_ACME_KEYS = ("directory", "email", "storage", "ca", "renew_before", "encryption_key")
_HOST_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


def _listener_tls(r: _Reader, node: yaml.Node, path: str) -> ListenerTLS:
    """``listeners[].tls``: ``acme`` only until TLS termination (issue 13) adds its keys here."""
    f = r.mapping(node, path, ("acme",))
    none: list[str] = []
    names = r.optional(f, "acme", path, lambda n, p: r.each(n, p, _acme_name(r), scalar_ok=True), none)
    return ListenerTLS(acme=tuple(dict.fromkeys(names)))


def _acme_name(r: _Reader) -> Callable[[yaml.Node, str], str]:
    def parse(node: yaml.Node, path: str) -> str:
        name = r.text(node, path).lower().rstrip(".")
        if name.startswith("*."):
            raise r.fail(node, path, f"'{name}': a wildcard needs the DNS-01 challenge, which edgeproxy does not do")
        labels = name.split(".")
        if len(name) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
            raise r.fail(node, path, f"'{name}' is not a DNS name (letters, digits, '-', labels of 1-63)")
        if labels[-1].isdigit():
            raise r.fail(node, path, f"'{name}' is an IP address: ACME certificates here are for DNS names")
        return name

    return parse


def _acme(r: _Reader, node: yaml.Node, path: str) -> AcmeConfig:
    """The top-level ``acme:`` section."""
    f = r.mapping(node, path, _ACME_KEYS)
    d = AcmeConfig(directory="")
    if "directory" not in f:
        raise r.fail(node, path, "missing 'directory' (the ACME server's directory URL)")
    directory = r.text(f["directory"], f"{path}.directory")
    if not (directory.startswith("https://") or directory.startswith("http://")):
        r.error(f["directory"], f"{path}.directory", f"'{directory}' is not an http(s) URL")
    storage = r.optional(f, "storage", path, r.text, d.storage)
    if storage != ACME_SWARM_STORAGE and not os.path.isabs(storage):
        r.error(f.get("storage"), f"{path}.storage", f"'{storage}' must be an absolute directory path or 'swarm'")
    encryption_key = r.optional(f, "encryption_key", path, r.text, None)
    if storage == ACME_SWARM_STORAGE and encryption_key is None:
        r.error(
            f.get("storage"),
            f"{path}.storage",
            "storage: swarm needs 'encryption_key' (a file, e.g. the swarm secret /run/secrets/edgeproxy-acme-key: "
            "private keys are kept encrypted in the swarm)",
        )
    return AcmeConfig(
        directory=directory,
        email=r.optional(f, "email", path, r.text, None),
        storage=storage,
        ca=r.optional(f, "ca", path, r.text, None),
        renew_before=r.optional(f, "renew_before", path, r.duration, d.renew_before),
        encryption_key=encryption_key,
    )


def _binds_clash(a: Address, b: Address) -> bool:
    """Would binding both fail? IPv6 wildcards are bound IPV6_V6ONLY, so [::] and 0.0.0.0 coexist."""
    if a.port != b.port or a.family != b.family:
        return False
    return a.host == b.host or a.is_wildcard or b.is_wildcard


def load_config(path: str) -> Config:
    """Read and validate ``path``; raise ``ConfigError`` listing every problem."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as e:
        raise ConfigError([ConfigIssue(path, 0, "", f"cannot read: {e.strerror}")]) from None
    return parse_config(raw, path)


def parse_config(raw: bytes, path: str = "<config>") -> Config:
    r = _Reader(path)
    try:
        root = yaml.compose(raw.decode("utf-8"), Loader=yaml.SafeLoader)
    except UnicodeDecodeError as e:
        raise ConfigError([ConfigIssue(path, 0, "", f"not UTF-8 text: {e}")]) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 0
        raise ConfigError([ConfigIssue(path, line, "", f"YAML syntax error: {e.problem or e}")]) from None
    if root is None:
        raise ConfigError([ConfigIssue(path, 0, "", "the file is empty: it needs at least 'listeners' and 'backends'")])
    b = _Builder(r)
    try:
        top = r.mapping(root, "", _TOP_KEYS)
    except _Invalid:
        raise ConfigError(r.issues) from None

    backends: dict[str, Backend] = {}
    backend_lines: dict[str, yaml.Node] = {}
    if "backends" in top:
        with contextlib.suppress(_Invalid):
            for name, key_node, value_node in r.items(top["backends"], "backends"):
                try:
                    backends[name] = b.backend(name, value_node, f"backends.{name}")
                    backend_lines[name] = key_node
                except _Invalid:
                    backends[name] = Backend(name=name)  # keep the name known for reference checks
    listeners: list[Listener] = []
    listener_nodes: list[yaml.Node] = []
    if "listeners" not in top:
        r.error(root, "listeners", "missing: at least one listener is needed")
    else:
        try:
            for i, item in enumerate(r.seq(top["listeners"], "listeners")):
                try:
                    listeners.append(b.listener(item, f"listeners[{i}]"))
                    listener_nodes.append(item)
                except _Invalid:
                    pass
        except _Invalid:
            pass
    swarm = r.optional(top, "swarm", "", b.swarm, None)
    timeouts = r.optional(top, "timeouts", "", b.timeouts, Timeouts())
    log = r.optional(top, "log", "", b.log, LogConfig())
    admin = r.optional(top, "admin", "", b.admin, None)
    workers = r.optional(top, "workers", "", b.workers, 1)
    acme = r.optional(top, "acme", "", lambda n, p: _acme(r, n, p), None)
    if acme is not None and acme.in_swarm and swarm is None:
        need = "storage: swarm needs a top-level 'swarm:' section (which managers to ask)"
        r.error(top["acme"], "acme.storage", need)

    # -- cross-references ------------------------------------------------------------------
    known = ", ".join(backends) or "none defined"
    names: dict[str, int] = {}
    udp_backends: set[str] = set()
    for i, (lst, node) in enumerate(zip(listeners, listener_nodes, strict=True)):
        fields = {str(k.value): v for k, v in cast(yaml.MappingNode, node).value}
        if lst.name in names:
            r.error(
                fields["name"],
                f"listeners[{i}].name",
                f"duplicate listener name '{lst.name}' (also listeners[{names[lst.name]}])",
            )
        names.setdefault(lst.name, i)
        if lst.tls is not None and lst.tls.acme and acme is None and "acme" not in top:
            r.error(fields["tls"], f"listeners[{i}].tls.acme", "needs a top-level 'acme:' section (directory, email)")
        refs: list[tuple[str, yaml.Node, str]] = []
        if lst.backend is not None:
            refs.append((lst.backend, fields["backend"], f"listeners[{i}].backend"))
        routes_node = fields.get("routes")
        if isinstance(routes_node, yaml.SequenceNode):
            for j, (route, rnode) in enumerate(zip(lst.routes, routes_node.value, strict=False)):
                rfields = {str(k.value): v for k, v in cast(yaml.MappingNode, rnode).value}
                refs.append((route.backend, rfields["backend"], f"listeners[{i}].routes[{j}].backend"))
        labels_may_define = bool(swarm and swarm.labels)
        for ref, rnode, rpath in refs:
            if ref not in backends and not labels_may_define:
                hint = difflib.get_close_matches(ref, list(backends), n=1)
                did = f"; did you mean '{hint[0]}'?" if hint else ""
                r.error(rnode, rpath, f"no backend named '{ref}' (known: {known}){did}")
        if lst.mode == "udp":
            udp_backends.update(ref for ref, _n, _p in refs)
            for ref, rnode, rpath in refs:
                be = backends.get(ref)
                if be is not None and be.send_proxy == "v1":
                    r.error(
                        rnode, rpath, f"backend '{ref}' has send_proxy: v1, which has no datagram form; use v2 for udp"
                    )
    # Two listeners on one address (or one listener twice) would fail at bind time: say so now.
    seen_binds: list[tuple[Address, str, int]] = []
    for i, lst in enumerate(listeners):
        proto = "udp" if lst.mode == "udp" else "tcp"
        for addr in lst.bind:
            for other, oproto, oi in seen_binds:
                if oproto == proto and _binds_clash(addr, other):
                    node = {str(k.value): v for k, v in cast(yaml.MappingNode, listener_nodes[i]).value}["bind"]
                    r.error(
                        node,
                        f"listeners[{i}].bind",
                        f"{addr} clashes with {other} of listeners[{oi}] ({listeners[oi].name})",
                    )
                    break
            seen_binds.append((addr, proto, i))
    for name, be in backends.items():
        if be.swarm is not None and swarm is None:
            r.error(
                backend_lines.get(name),
                f"backends.{name}.swarm",
                "needs a top-level 'swarm:' section (which managers to ask)",
            )
        # A tcp check on a udp port always fails; default udp backends to no active check.
        if name in udp_backends and "health" not in _keys(top["backends"], name):
            backends[name] = _replace_health(be, Health(type="none"))
    if r.issues:
        raise ConfigError(sorted(r.issues, key=lambda i: i.line))
    return Config(
        path=path,
        digest=hashlib.sha256(raw).hexdigest(),
        listeners=tuple(listeners),
        backends=MappingProxyType(backends),
        timeouts=timeouts,
        log=log,
        admin=admin,
        workers=workers,
        swarm=swarm,
        acme=acme,
    )


def _keys(backends_node: yaml.Node, name: str) -> set[str]:
    for k, v in cast(yaml.MappingNode, backends_node).value:
        if k.value == name and isinstance(v, yaml.MappingNode):
            return {str(kk.value) for kk, _ in v.value}
    return set()


def _replace_health(be: Backend, health: Health) -> Backend:
    return dataclasses.replace(be, health=health)
