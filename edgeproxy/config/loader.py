"""YAML -> validated ``Config``, collecting every error with its YAML path and line.

The loader is total: any bytes at all give a ``Config`` or a ``ConfigError`` whose every line is
``FILE:LINE: path: message`` (fuzzed: fuzz/harness_config.py, tests/unit/test_config_total.py).

We walk a tree of nodes that carry their line (config/yamltree.py) rather than constructed dicts,
because only nodes know where they were written, because it shows duplicate keys that a dict would
silently collapse (a second ``web:`` backend would replace the first), and because a plain scalar
is still the text that was written: each field decides what it means, by rules the README states
(``off`` is a word, ``017`` and ``1:30`` are refused as numbers), not by YAML 1.1's guesses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeVar, cast

from edgeproxy.config.files import FileReader, ca_certificates, read_from_disk
from edgeproxy.config.model import (
    ACME_SWARM_STORAGE,
    DEFAULT_UPGRADES,
    FORWARDED_HEADERS,
    HTTP_ALPN,
    NEVER_UPGRADES,
    TLS_VERSIONS,
    AcceptProxy,
    AcmeConfig,
    AdminConfig,
    Backend,
    BackendTLS,
    CertificateFiles,
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
from edgeproxy.config.user import parse_user
from edgeproxy.config.values import (
    MAX_DURATION,
    MAX_PERIOD,
    MIN_DURATION,
    Address,
    IPNetwork,
    acme_name_error,
    clip,
    is_loopback,
    parse_address,
    parse_duration,
    parse_network,
    printable,
)
from edgeproxy.config.yamltree import MAX_BYTES, Map, Node, Scalar, Seq, YamlError, read_tree

T = TypeVar("T")

MAX_ISSUES = 100  # shown; a file of 10^5 errors still gives a readable report (and a bounded log line)
# YAML 1.1 reads these words as booleans. Boolean fields take them (any letter case); elsewhere a
# plain word is the text written, except that a "false" word means "none"/"off" where that is a value.
TRUE_WORDS = ("true", "yes", "on")
FALSE_WORDS = ("false", "no", "off")
_NULL_WORDS = ("", "~", "null", "Null", "NULL")
_DECIMAL = re.compile(r"[-+]?[0-9]+(?:_[0-9]+)*")
_SEXAGESIMAL = re.compile(r"[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+")
_OCTAL = re.compile(r"[-+]?0[0-7_]+")
_EXPECT = re.compile(r"([1-5])xx|([0-9]{3})(?:-([0-9]{3}))?")


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    file: str
    line: int
    path: str
    message: str
    internal: bool = False  # a bug of ours caught by parse_config's last resort (fuzzing looks for these)

    def __str__(self) -> str:
        where = f"{printable(self.file)}:{max(self.line, 1)}"
        text = f"{self.path}: {self.message}" if self.path else self.message
        return f"{where}: {printable(text)}"


class ConfigError(Exception):
    """Raised with every problem found in a file; ``str()`` lists one per line."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(map(str, issues)))


class _Invalid(Exception):
    """Internal: a value was reported as an error; the caller skips it."""


def _is_null(node: Node) -> bool:
    return isinstance(node, Scalar) and (node.kind == "null" or (node.kind == "plain" and node.value in _NULL_WORDS))


def _describe(node: Node) -> str:
    if isinstance(node, Map):
        return "a mapping"
    if isinstance(node, Seq):
        return "a list"
    if _is_null(node):
        return "empty (null)"
    tag = f"!!{node.kind} " if node.kind not in ("plain", "str") else ""
    return tag + clip(node.value)


def _unprintable(text: str) -> str:
    """What the first character that does not print is, for a message."""
    import unicodedata  # (here: only a config error needs it, ~0.1 MiB of every process's RSS)

    ch = next(c for c in text if not c.isprintable())
    kinds = {"Cs": "a lone surrogate", "Cc": "a control character", "Zl": "a line break", "Zp": "a line break"}
    what = "a line break" if ch in "\r\n" else kinds.get(unicodedata.category(ch), "an invisible character")
    return f"U+{ord(ch):04X} ({what})"


def _is_word(node: Node, words: tuple[str, ...]) -> bool:
    return isinstance(node, Scalar) and node.kind in ("plain", "bool") and node.value.lower() in words


class _Reader:
    """Typed accessors over nodes that record errors instead of raising them."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.issues: list[ConfigIssue] = []
        self.more = 0  # errors beyond MAX_ISSUES, counted only

    @property
    def full(self) -> bool:
        return len(self.issues) >= MAX_ISSUES

    def error(self, node: Node | int | None, path: str, message: str) -> None:
        if self.full:
            self.more += 1
            return
        line = node if isinstance(node, int) else node.line if node is not None else 1
        self.issues.append(ConfigIssue(self.file, line, path, message))

    def fail(self, node: Node | None, path: str, message: str) -> _Invalid:
        self.error(node, path, message)
        return _Invalid()

    def hint(self, word: str, choices: list[str] | tuple[str, ...]) -> str | None:
        """The closest name, for "did you mean" (skipped once the report is full: it is not free)."""
        if self.full or len(word) > 200:
            return None
        import difflib  # only for an unknown word (a config error)

        found = difflib.get_close_matches(word, choices, n=1)
        return found[0] if found else None

    # -- structure ---------------------------------------------------------------------------
    def key(self, node: Node, path: str) -> str:
        """A mapping key: a name, taken as written (``on:`` is the name 'on', not true)."""
        if not isinstance(node, Scalar):
            raise self.fail(node, path, f"a key must be a name, got {_describe(node)}")
        if not node.value.isprintable():
            raise self.fail(node, path, f"the key {clip(node.value)} contains {_unprintable(node.value)}")
        return node.value

    def mapping(self, node: Node, path: str, allowed: tuple[str, ...]) -> dict[str, Node]:
        out: dict[str, Node] = {}
        for key, key_node, value_node in self.items(node, path, what="key"):
            sub = f"{path}.{key}" if path else key
            if key not in allowed:
                hint = self.hint(key, allowed)
                did = f" (did you mean '{hint}'?)" if hint else f" (known: {', '.join(allowed)})"
                if key == "<<":
                    did = ": YAML merge keys are not supported, write the keys out (anchors work)"
                self.error(key_node, sub, f"unknown key {clip(key)}{did}")
                continue
            out[key] = value_node
        return out

    def items(self, node: Node, path: str, *, what: str = "name") -> Iterator[tuple[str, Node, Node]]:
        """Entries of a mapping; a repeated key is an error (the earlier one would be ignored)."""
        if not isinstance(node, Map):
            raise self.fail(node, path, f"expected a mapping, got {_describe(node)}")
        seen: set[str] = set()
        for key_node, value_node in node.pairs:
            try:
                key = self.key(key_node, path)
            except _Invalid:
                continue
            if key in seen:
                sub = f"{path}.{key}" if path else key
                self.error(key_node, sub, f"duplicate {what} (the earlier one would be ignored)")
                continue
            seen.add(key)
            yield key, key_node, value_node

    def seq(self, node: Node, path: str, *, scalar_ok: bool = False) -> list[Node]:
        if isinstance(node, Seq):
            return node.items
        if scalar_ok and isinstance(node, Scalar) and not _is_null(node):
            return [node]
        raise self.fail(node, path, f"expected a list, got {_describe(node)}")

    def each(self, node: Node, path: str, parse: Callable[[Node, str], T], *, scalar_ok: bool = False) -> list[T]:
        out: list[T] = []
        for i, item in enumerate(self.seq(node, path, scalar_ok=scalar_ok)):
            with contextlib.suppress(_Invalid):
                out.append(parse(item, f"{path}[{i}]"))
        return out

    # -- scalars -----------------------------------------------------------------------------
    def text(self, node: Node, path: str) -> str:
        """A string as written: ``0123`` stays '0123', ``no`` stays 'no' (the field decides)."""
        if not isinstance(node, Scalar) or node.kind not in ("plain", "str") or _is_null(node):
            raise self.fail(node, path, f"expected a string, got {_describe(node)}")
        value = node.value
        if not value:
            raise self.fail(node, path, "must not be empty")
        if not value.isprintable():
            raise self.fail(node, path, f"{clip(value)} contains {_unprintable(value)}: not allowed in a value")
        return value

    def integer(self, node: Node, path: str, lo: int, hi: int) -> int:
        bound = f"{lo}-{hi}"
        if not isinstance(node, Scalar) or node.kind not in ("plain", "int") or _is_null(node):
            hint = " (without quotes)" if isinstance(node, Scalar) and node.kind == "str" else ""
            raise self.fail(node, path, f"expected a whole number{hint}, got {_describe(node)}")
        text = node.value
        if _SEXAGESIMAL.fullmatch(text):
            raise self.fail(
                node, path, f"{clip(text)} is not a whole number (YAML 1.1 reads it in base 60): write the number meant"
            )
        if not _DECIMAL.fullmatch(text):
            raise self.fail(node, path, f"expected a whole number, in decimal, got {_describe(node)}")
        digits = text.lstrip("+-").replace("_", "")
        if len(digits) > 1 and digits[0] == "0":
            octal = " (YAML 1.1 reads it as octal)" if _OCTAL.fullmatch(text) else ""
            raise self.fail(node, path, f"{clip(text)}: a leading 0 is refused{octal}: write {int(digits)}")
        if len(digits) > 18:
            raise self.fail(node, path, f"{clip(text)} is out of range ({bound})")
        value = int(text.replace("_", ""))
        if not lo <= value <= hi:
            raise self.fail(node, path, f"{value} is out of range ({bound})")
        return value

    def boolean(self, node: Node, path: str) -> bool:
        if _is_word(node, TRUE_WORDS):
            return True
        if _is_word(node, FALSE_WORDS):
            return False
        raise self.fail(node, path, f"expected true or false, got {_describe(node)}")

    def choice(self, node: Node, path: str, choices: tuple[str, ...]) -> str:
        # `send_proxy: off` (YAML 1.1's false) means "none" where "none" is a choice.
        if "none" in choices and _is_word(node, FALSE_WORDS):
            return "none"
        value = self.text(node, path)
        if value not in choices:
            raise self.fail(node, path, f"{clip(value)} is not one of: {', '.join(choices)}")
        return value

    def convert(self, node: Node, path: str, parse: Callable[[str], T]) -> T:
        value = self.text(node, path)
        try:
            return parse(value)
        except ValueError as e:
            raise self.fail(node, path, str(e)) from None

    def duration(self, node: Node, path: str, *, zero_ok: bool = False, period: bool = False) -> float:
        """A timer (at most ``MAX_DURATION``), or with ``period`` a longer span such as a renewal
        margin (at most ``MAX_PERIOD``)."""
        seconds = self.convert(node, path, lambda t: parse_duration(t, MAX_PERIOD if period else MAX_DURATION))
        if seconds < MIN_DURATION and not (zero_ok and seconds == 0):
            raise self.fail(node, path, f"{clip(self.text(node, path))} is too short: at least 1ms")
        return seconds

    def network(self, node: Node, path: str) -> IPNetwork:
        return self.convert(node, path, parse_network)

    def optional(self, fields: dict[str, Node], key: str, path: str, parse: Callable[[Node, str], T], default: T) -> T:
        node = fields.get(key)
        if node is None:
            return default
        try:
            return parse(node, f"{path}.{key}" if path else key)
        except _Invalid:
            return default


# ---------------------------------------------------------------------------------------------
_TOP_KEYS = ("admin", "workers", "user", "log", "timeouts", "listeners", "backends", "swarm", "acme")
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
    "upgrades",
    "tls",
    "redirect_https",
)
_TLS_KEYS = ("certificates", "acme", "min_version", "alpn", "hsts")
_REDIRECT_AUTO = 0  # redirect_https: true, until the TLS port is known (all_listeners)
_ACME_KEYS = ("directory", "email", "storage", "ca", "renew_before", "encryption_key")
_BACKEND_KEYS = ("balance", "send_proxy", "retries", "health", "servers", "swarm", "tls")
_BACKEND_TLS_KEYS = ("verify", "ca", "sni")
# A TLS server name (SNI): DNS labels; "_" too, as the ClientHello reader (proto/tls_hello.py)
# takes it and some internal names carry it.
_SNI_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_HEALTH_KEYS = ("type", "interval", "timeout", "rise", "fall", "path", "expect", "port")


class _Binds:
    """Listening addresses seen so far, to refuse two that cannot both be bound (O(1) a lookup:
    a generated file may have thousands)."""

    def __init__(self) -> None:
        self.by_port: dict[tuple[str, int, int], dict[str, tuple[Address, str]]] = {}

    def clash(self, proto: str, addr: Address) -> tuple[Address, str] | None:
        """IPv6 wildcards are bound IPV6_V6ONLY (runtime/sockets.py), so [::] and 0.0.0.0 coexist."""
        hosts = self.by_port.get((proto, addr.family, addr.port))
        if not hosts:
            return None
        if addr.is_wildcard:
            return next(iter(hosts.values()))
        return hosts.get(addr.host) or hosts.get("::" if ":" in addr.host else "0.0.0.0")

    def add(self, proto: str, addr: Address, owner: str) -> None:
        self.by_port.setdefault((proto, addr.family, addr.port), {}).setdefault(addr.host, (addr, owner))


class _Builder:
    def __init__(self, r: _Reader, read_file: FileReader) -> None:
        self.r = r
        self.read_file = read_file  # files the config names (config/files.py)
        self.backends: dict[str, Backend] = {}
        self.health_set: set[str] = set()  # backends with an explicit health section
        self.swarm: SwarmConfig | None = None
        self.swarm_present = False  # even if invalid: no second error on each backend's swarm
        self.listener_names: dict[str, int] = {}
        self.udp_backends: set[str] = set()
        self.binds = _Binds()
        self.acme_users: list[tuple[Node, str]] = []  # listeners' tls.acme: they need an acme: section

    def timeouts(self, node: Node, path: str) -> Timeouts:
        f = self.r.mapping(node, path, ("connect", "client_idle", "server_idle", "http_request", "drain"))
        d = Timeouts()
        dur = self.r.duration
        return Timeouts(
            connect=self.r.optional(f, "connect", path, dur, d.connect),
            client_idle=self.r.optional(f, "client_idle", path, dur, d.client_idle),
            server_idle=self.r.optional(f, "server_idle", path, dur, d.server_idle),
            http_request=self.r.optional(f, "http_request", path, dur, d.http_request),
            # 0s is meaningful here: stop at once, cutting what is open.
            drain=self.r.optional(f, "drain", path, lambda n, p: dur(n, p, zero_ok=True), d.drain),
            client_idle_explicit="client_idle" in f,
        )

    def log(self, node: Node, path: str) -> LogConfig:
        f = self.r.mapping(node, path, ("level", "access", "format"))
        levels = ("debug", "info", "warning", "error")
        return LogConfig(
            level=self.r.optional(f, "level", path, lambda n, p: self.r.choice(n, p, levels), "info"),
            access=self.r.optional(f, "access", path, self.access, "stderr"),
            format=cast(
                Any, self.r.optional(f, "format", path, lambda n, p: self.r.choice(n, p, ("json", "text")), "json")
            ),
        )

    def access(self, node: Node, path: str) -> str:
        # The README documents `access: off`; YAML 1.1 would read it as false.
        if _is_word(node, FALSE_WORDS):
            return "off"
        if _is_word(node, TRUE_WORDS):
            raise self.r.fail(node, path, f"{_describe(node)} is not a log target: stderr, stdout, off or a file path")
        return self.r.text(node, path)

    def admin(self, node: Node, path: str) -> AdminConfig:
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
        other = self.binds.clash("tcp", bind)
        if other is not None:
            self.r.error(f["bind"], f"{path}.bind", f"{bind} clashes with {other[0]} of {other[1]}")
        return AdminConfig(bind=bind, token=token)

    def workers(self, node: Node, path: str) -> int:
        if isinstance(node, Scalar) and node.kind in ("plain", "str") and node.value == "auto":
            return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return self.r.integer(node, path, 1, 256)

    def networks(self, node: Node, path: str) -> tuple[IPNetwork, ...]:
        return tuple(self.r.each(node, path, self.r.network, scalar_ok=True))

    def reference(self, node: Node, path: str, *, udp: bool) -> str:
        """A backend name, checked against the backends (parsed before the listeners)."""
        ref = self.r.text(node, path)
        be = self.backends.get(ref)
        if be is None and not (self.swarm and self.swarm.labels):  # label backends appear at run time
            names = list(self.backends)
            known = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "") if names else "none defined"
            hint = self.r.hint(ref, names)
            did = f"; did you mean '{hint}'?" if hint else ""
            self.r.error(node, path, f"no backend named {clip(ref)} (known: {known}){did}")
        if udp:
            self.udp_backends.add(ref)
            if be is not None and be.send_proxy == "v1":
                self.r.error(
                    node, path, f"backend {clip(ref)} has send_proxy: v1, which has no datagram form; use v2 for udp"
                )
            if be is not None and be.tls is not None:
                self.r.error(node, path, f"backend {clip(ref)} has tls, which udp does not speak")
        return ref

    def listener(self, node: Node, index: int) -> Listener:
        path = f"listeners[{index}]"
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
        udp = mode == "udp"
        if name in self.listener_names:
            other = self.listener_names[name]
            self.r.error(f["name"], f"{path}.name", f"duplicate listener name {clip(name)} (also listeners[{other}])")
        self.listener_names.setdefault(name, index)
        bind = tuple(
            self.r.each(f["bind"], f"{path}.bind", lambda n, p: self.r.convert(n, p, parse_address), scalar_ok=True)
        )
        if isinstance(f["bind"], Seq) and not f["bind"].items:
            self.r.error(f["bind"], f"{path}.bind", "needs at least one address")
        # Two listeners on one address (or one listener twice) would fail at bind time: say so now.
        proto = "udp" if udp else "tcp"
        for addr in bind:
            other_bind = self.binds.clash(proto, addr)
            if other_bind is not None:
                self.r.error(f["bind"], f"{path}.bind", f"{addr} clashes with {other_bind[0]} of {other_bind[1]}")
            self.binds.add(proto, addr, f"listeners[{index}] ({printable(name)})")
        backend = self.r.optional(f, "backend", path, lambda n, p: self.reference(n, p, udp=udp), None)
        routes: tuple[Route, ...] = ()
        if "routes" in f:
            if udp:
                self.r.error(f["routes"], f"{path}.routes", "routes need mode: http or tcp (this listener is udp)")
            else:
                routes = tuple(self.r.each(f["routes"], f"{path}.routes", lambda n, p: self.route(n, p, mode=mode)))
        if backend is None and not routes and "backend" not in f:
            self.r.error(node, path, "missing 'backend' (the default backend of this listener)")
        accept_proxy = None
        if "accept_proxy" in f:
            p = f"{path}.accept_proxy"
            if udp:
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
        upgrades: tuple[str, ...] = DEFAULT_UPGRADES
        if "upgrades" in f:
            if mode != "http":
                self.r.error(f["upgrades"], f"{path}.upgrades", f"upgrades need mode: http (this listener is {mode})")
            upgrades = tuple(self.r.each(f["upgrades"], f"{path}.upgrades", self.upgrade_protocol))
        tls = self.r.optional(f, "tls", path, lambda n, p: self.listener_tls(n, p, mode), None)
        redirect = self.r.optional(f, "redirect_https", path, lambda n, p: self.redirect_https(n, p, mode, tls), None)
        return Listener(
            name=name,
            bind=bind,
            mode=mode,
            backend=backend,
            routes=routes,
            accept_proxy=accept_proxy,
            forwarded=forwarded,
            max_connections=self.r.optional(
                f, "max_connections", path, lambda n, p: self.r.integer(n, p, 1, 10_000_000), 10000
            ),
            max_datagram_size=self.r.optional(
                f, "max_datagram_size", path, lambda n, p: self.r.integer(n, p, 1, 65535), 65535
            ),
            upgrades=upgrades,
            tls=tls,
            redirect_https=redirect,
        )

    def listener_tls(self, node: Node, path: str, mode: str) -> ListenerTLS:
        """``listeners[].tls``: terminate TLS (http and tcp listeners). The certificate files are
        read and checked later, by tls/files.py (``edgeproxy check``, start, reload)."""
        r = self.r
        if mode == "udp":
            raise r.fail(node, path, "tls is not supported on udp listeners (DTLS is not done)")
        f = r.mapping(node, path, _TLS_KEYS)
        none: list[str] = []
        names = r.optional(f, "acme", path, lambda n, p: r.each(n, p, self.acme_name, scalar_ok=True), none)
        if names:
            self.acme_users.append((f["acme"], f"{path}.acme"))
        files: list[CertificateFiles] = r.optional(
            f, "certificates", path, lambda n, p: r.each(n, p, self.certificate_files), []
        )
        if "certificates" in f and isinstance(f["certificates"], Seq) and not f["certificates"].items:
            r.error(f["certificates"], f"{path}.certificates", "needs at least one {cert, key} entry")
        elif "certificates" not in f and "acme" not in f:
            r.error(node, path, "needs 'certificates' (PEM files) or 'acme' (names to obtain certificates for)")
        min_version = r.optional(f, "min_version", path, lambda n, p: r.choice(n, p, TLS_VERSIONS), "1.2")
        default_alpn = HTTP_ALPN if mode == "http" else ()
        alpn = tuple(r.optional(f, "alpn", path, lambda n, p: self.alpn_ids(n, p, mode), list(default_alpn)))
        hsts = None
        if "hsts" in f:
            if mode != "http":
                r.error(f["hsts"], f"{path}.hsts", f"hsts needs mode: http (this listener is {mode})")
            hsts = r.optional(f, "hsts", path, lambda n, p: r.duration(n, p, period=True), None)
        return ListenerTLS(
            acme=tuple(dict.fromkeys(names)),
            certificates=tuple(files),
            min_version=min_version,
            alpn=alpn,
            hsts=hsts,
        )

    def certificate_files(self, node: Node, path: str) -> CertificateFiles:
        """``{cert: FILE, key: FILE}``, or ``{cert: FILE}`` / ``FILE`` with the key in that file."""
        r = self.r
        if isinstance(node, Scalar):
            return CertificateFiles(cert=r.text(node, path), where=path, line=node.line)
        f = r.mapping(node, path, ("cert", "key"))
        if "cert" not in f:
            raise r.fail(node, path, "missing 'cert' (a PEM file: the certificate, then its chain)")
        cert = r.text(f["cert"], f"{path}.cert")
        key = r.optional(f, "key", path, r.text, None)
        return CertificateFiles(cert=cert, key=key, where=path, line=node.line)

    def alpn_ids(self, node: Node, path: str, mode: str) -> list[str]:
        def one(n: Node, p: str) -> str:
            proto = self.r.text(n, p)
            if len(proto.encode("utf-8", "replace")) > 255 or not proto.isascii():
                raise self.r.fail(n, p, f"{clip(proto)} is not an ALPN protocol id (ASCII, at most 255 bytes)")
            if mode == "http" and proto != "http/1.1":
                why = "h2 is not negotiated yet" if proto == "h2" else "an http listener speaks HTTP/1.1"
                raise self.r.fail(n, p, f"{clip(proto)}: only http/1.1 is offered on an http listener ({why})")
            return proto

        ids = self.r.each(node, path, one, scalar_ok=True)
        return list(dict.fromkeys(ids))

    def redirect_https(self, node: Node, path: str, mode: str, tls: ListenerTLS | None) -> int | None:
        """``true``: to the first TLS http listener's port (443 without one); a port number: to
        that port; ``false``: off."""
        r = self.r
        if mode != "http":
            raise r.fail(node, path, f"redirect_https needs mode: http (this listener is {mode})")
        if _is_word(node, TRUE_WORDS):
            port: int | None = _REDIRECT_AUTO
        elif _is_word(node, FALSE_WORDS):
            port = None
        else:
            port = r.integer(node, path, 1, 65535)
        if port is not None and tls is not None:
            raise r.fail(node, path, "this listener terminates TLS already: redirect_https is for a plain http one")
        return port

    def acme_name(self, node: Node, path: str) -> str:
        name = self.r.text(node, path).lower().rstrip(".")
        error = acme_name_error(name)
        if error is not None:
            raise self.r.fail(node, path, error)
        return name

    def acme(self, node: Node, path: str) -> AcmeConfig:
        """The top-level ``acme:`` section."""
        r = self.r
        f = r.mapping(node, path, _ACME_KEYS)
        d = AcmeConfig(directory="")
        if "directory" not in f:
            raise r.fail(node, path, "missing 'directory' (the ACME server's directory URL)")
        directory = r.text(f["directory"], f"{path}.directory")
        if not (directory.startswith("https://") or directory.startswith("http://")):
            r.error(f["directory"], f"{path}.directory", f"{clip(directory)} is not an http(s) URL")
        storage = r.optional(f, "storage", path, r.text, d.storage)
        if storage != ACME_SWARM_STORAGE and not os.path.isabs(storage):
            r.error(
                f.get("storage"), f"{path}.storage", f"{clip(storage)} must be an absolute directory path or 'swarm'"
            )
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
            renew_before=r.optional(
                f, "renew_before", path, lambda n, p: r.duration(n, p, period=True), d.renew_before
            ),
            encryption_key=encryption_key,
        )

    # RFC 9110 5.6.2 token characters: an Upgrade protocol name is one.
    _TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"

    def upgrade_protocol(self, node: Node, path: str) -> str:
        name = self.r.text(node, path).lower()
        if not name or not name.isascii() or name.strip(self._TOKEN_CHARS):
            raise self.r.fail(node, path, f"{clip(name)} is not a protocol name (an HTTP token, e.g. websocket)")
        if name in NEVER_UPGRADES:
            raise self.r.fail(node, path, f"{clip(name)} is never relayed: its requests would bypass X-Forwarded-For")
        return name

    def forwarded_headers(self, node: Node, path: str) -> tuple[str, ...]:
        def one(n: Node, p: str) -> str:
            name = self.r.text(n, p).lower()
            if name not in FORWARDED_HEADERS:
                raise self.r.fail(n, p, f"{clip(name)} is not one of: {', '.join(FORWARDED_HEADERS)}")
            return name

        return tuple(self.r.each(node, path, one))

    def route(self, node: Node, path: str, *, mode: str) -> Route:
        """http: ``host`` and/or ``path_prefix``; tcp: ``sni`` (the mode decides, as SPEC.md)."""
        f = self.r.mapping(node, path, ("host", "path_prefix", "sni", "backend"))
        if "backend" not in f:
            raise self.r.fail(node, path, "missing 'backend'")
        backend = self.reference(f["backend"], f"{path}.backend", udp=False)
        if mode == "tcp":
            wrong = [key for key in ("host", "path_prefix") if key in f]
            for key in wrong:
                self.r.error(f[key], f"{path}.{key}", "a tcp route matches the TLS server name: use 'sni'")
            if "sni" not in f:
                if not wrong:
                    self.r.error(node, path, "a tcp route needs 'sni' (the TLS server name, e.g. db.example.com)")
                raise _Invalid()
            return Route(backend=backend, sni=self.server_name(f["sni"], f"{path}.sni", wildcard=True))
        if "sni" in f:
            raise self.r.fail(f["sni"], f"{path}.sni", "sni routes need mode: tcp (an http route has host/path_prefix)")
        host = self.r.optional(f, "host", path, self.r.text, None)
        prefix = self.r.optional(f, "path_prefix", path, self.r.text, None)
        if prefix is not None and not prefix.startswith("/"):
            self.r.error(f["path_prefix"], f"{path}.path_prefix", f"{clip(prefix)} must start with /")
        if host is None and prefix is None:
            self.r.error(node, path, "a route needs 'host', 'path_prefix' or both")
        return Route(backend=backend, host=host.lower() if host else None, path_prefix=prefix)

    def health(self, node: Node, path: str) -> Health:
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

    def expect(self, node: Node, path: str) -> tuple[int, int]:
        """``200``, ``"2xx"`` or ``"200-399"``."""
        text = self.r.text(node, path)
        m = _EXPECT.fullmatch(text)
        if m is not None:
            if m.group(1):
                lo = int(m.group(1)) * 100
                return lo, lo + 99
            lo, hi = int(m.group(2)), int(m.group(3) or m.group(2))
            if 100 <= lo <= hi <= 599:
                return lo, hi
        raise self.r.fail(
            node, path, f"invalid expect {clip(text)}: use a status (200), a class (2xx) or a range (200-399)"
        )

    def server(self, node: Node, path: str) -> ServerConfig:
        def to_addr(n: Node, p: str) -> Address:
            return self.r.convert(n, p, lambda t: parse_address(t, allow_hostname=True))

        if isinstance(node, Scalar):
            return ServerConfig(address=to_addr(node, path))
        f = self.r.mapping(node, path, ("address", "weight", "backup"))
        if "address" not in f:
            raise self.r.fail(node, path, "missing 'address'")
        return ServerConfig(
            address=to_addr(f["address"], f"{path}.address"),
            weight=self.r.optional(f, "weight", path, lambda n, p: self.r.integer(n, p, 1, 256), 1),
            backup=self.r.optional(f, "backup", path, self.r.boolean, False),
        )

    def swarm_ref(self, node: Node, path: str) -> SwarmRef:
        f = self.r.mapping(node, path, ("service", "port"))
        if "service" not in f or "port" not in f:
            raise self.r.fail(node, path, "needs 'service' and 'port' (the service's target port)")
        if not self.swarm_present:
            self.r.error(node, path, "needs a top-level 'swarm:' section (which managers to ask)")
        return SwarmRef(
            service=self.r.text(f["service"], f"{path}.service"),
            port=self.r.integer(f["port"], f"{path}.port", 1, 65535),
        )

    def backend(self, name: str, node: Node, path: str) -> Backend:
        f = self.r.mapping(node, path, _BACKEND_KEYS)
        if "health" in f:
            self.health_set.add(name)
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
            tls=r.optional(f, "tls", path, self.backend_tls, None),
        )

    def backend_tls(self, node: Node, path: str) -> BackendTLS | None:
        """``backends.X.tls``: ``{}`` or ``true`` is TLS with the defaults, ``off`` none."""
        r = self.r
        if _is_word(node, TRUE_WORDS):
            return BackendTLS()
        if _is_word(node, FALSE_WORDS):
            return None
        f = r.mapping(node, path, _BACKEND_TLS_KEYS)
        ca = r.optional(f, "ca", path, r.text, None)
        ca_pem = b""
        if ca is not None:
            try:
                ca_pem = ca_certificates(self.read_file, ca)
            except ValueError as e:
                r.error(f["ca"], f"{path}.ca", str(e))
        return BackendTLS(
            verify=r.optional(f, "verify", path, r.boolean, True),
            ca=ca,
            ca_pem=ca_pem,
            sni=r.optional(f, "sni", path, lambda n, p: self.server_name(n, p, wildcard=False), None),
        )

    def server_name(self, node: Node, path: str, *, wildcard: bool) -> str:
        """A TLS server name: a DNS name, lower-cased; ``*.example.com`` (one label) if ``wildcard``."""
        name = self.r.text(node, path).lower().rstrip(".")
        base = name[2:] if wildcard and name.startswith("*.") else name
        labels = base.split(".")
        if not base or len(base) > 253 or not all(_SNI_LABEL.fullmatch(label) for label in labels):
            form = " or *.example.com" if wildcard else ""
            raise self.r.fail(node, path, f"{clip(name)} is not a DNS name (e.g. example.com{form})")
        if labels[-1].isdigit():
            raise self.r.fail(node, path, f"{clip(name)} is an IP address: a TLS server name (SNI) is a DNS name")
        return name

    def all_backends(self, node: Node, path: str) -> None:
        for name, _key_node, value_node in self.r.items(node, path):
            try:
                self.backends[name] = self.backend(name, value_node, f"{path}.{name}")
            except _Invalid:
                self.backends[name] = Backend(name=name)  # keep the name known for reference checks

    def all_listeners(self, node: Node, path: str) -> list[Listener]:
        listeners = []
        for i, item in enumerate(self.r.seq(node, path)):
            with contextlib.suppress(_Invalid):
                listeners.append(self.listener(item, i))
        if isinstance(node, Seq) and not node.items:
            self.r.error(node, path, "needs at least one listener")
        # redirect_https: true goes to the first TLS http listener's port (443 without one).
        tls_port = next((lst.bind[0].port for lst in listeners if lst.mode == "http" and lst.tls and lst.bind), 443)
        return [
            dataclasses.replace(lst, redirect_https=tls_port) if lst.redirect_https == _REDIRECT_AUTO else lst
            for lst in listeners
        ]

    def swarm_section(self, node: Node, path: str) -> SwarmConfig:
        f = self.r.mapping(node, path, ("managers", "tls", "refresh", "timeout", "labels", "node_addresses"))
        r = self.r
        d = SwarmConfig()

        def manager(n: Node, p: str) -> str:
            url = r.text(n, p)
            if not url.startswith(("unix://", "tcp://", "http://", "https://")):
                raise r.fail(n, p, f"{clip(url)} must start with unix://, tcp://, http:// or https://")
            return url

        def tls(n: Node, p: str) -> TLSFiles:
            tf = r.mapping(n, p, ("ca", "cert", "key"))
            missing = [k for k in ("ca", "cert", "key") if k not in tf]
            if missing:
                raise r.fail(n, p, f"missing {', '.join(missing)}")
            return TLSFiles(*(r.text(tf[k], f"{p}.{k}") for k in ("ca", "cert", "key")))

        def node_addresses(n: Node, p: str) -> MappingProxyType[str, str]:
            out: dict[str, str] = {}
            for key, _kn, vn in r.items(n, p):
                with contextlib.suppress(_Invalid):
                    out[key] = r.convert(vn, f"{p}.{key}", lambda t: parse_network(t).network_address.compressed)
            return MappingProxyType(out)

        managers = r.optional(f, "managers", path, lambda n, p: r.each(n, p, manager, scalar_ok=True), list(d.managers))
        if "managers" in f and isinstance(f["managers"], Seq) and not f["managers"].items:
            r.error(f["managers"], f"{path}.managers", "needs at least one manager")
        return SwarmConfig(
            managers=tuple(managers),
            tls=r.optional(f, "tls", path, tls, None),
            refresh=r.optional(f, "refresh", path, r.duration, d.refresh),
            timeout=r.optional(f, "timeout", path, r.duration, d.timeout),
            labels=r.optional(f, "labels", path, r.boolean, False),
            node_addresses=r.optional(f, "node_addresses", path, node_addresses, d.node_addresses),
        )


def load_config(path: str) -> Config:
    """Read and validate ``path``; raise ``ConfigError`` listing every problem."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_BYTES + 1)  # not all of /dev/zero: read_tree refuses more than MAX_BYTES
    except OSError as e:
        raise ConfigError([ConfigIssue(path, 1, "", f"cannot read: {e.strerror or e}")]) from None
    return parse_config(raw, path)


def parse_config(
    raw: bytes, path: str = "<config>", *, libyaml: bool | None = None, read_file: FileReader = read_from_disk
) -> Config:
    """Validate a whole file: a ``Config``, or ``ConfigError`` with every problem and its line.

    ``libyaml`` forces (True) or avoids (False) PyYAML's C parser; by default it is used when
    present. The result is the same either way (tests/unit/test_config_total.py).
    ``read_file`` reads the files the config names (a backend's ``tls.ca``; config/files.py).
    """
    try:
        return _parse(raw, path, libyaml, read_file)
    except ConfigError:
        raise
    except Exception as e:  # the last resort of a total function; fuzzing makes sure it is never reached
        issue = ConfigIssue(
            path, 1, "", f"internal error while reading this file (a bug in edgeproxy): {e!r}"[:500], internal=True
        )
        raise ConfigError([issue]) from None


def _parse(raw: bytes, path: str, libyaml: bool | None, read_file: FileReader) -> Config:
    r = _Reader(path)
    try:
        tree = read_tree(raw, libyaml=libyaml)
    except YamlError as e:
        raise ConfigError([ConfigIssue(path, e.problem.line, "", e.problem.message)]) from None
    for problem in tree.problems:
        r.error(problem.line, "", problem.message)
    root = tree.root
    if root is None or _is_null(root):
        r.error(1, "", "the file is empty: it needs at least 'listeners' and 'backends'")
        raise ConfigError(r.issues)
    b = _Builder(r, read_file)
    try:
        top = r.mapping(root, "", _TOP_KEYS)
    except _Invalid:
        raise ConfigError(r.issues) from None

    # In this order: whether swarm labels may define backends, then the backends, so that a
    # listener's references are checked where they are written.
    b.swarm_present = "swarm" in top
    b.swarm = r.optional(top, "swarm", "", b.swarm_section, None)
    if "backends" in top:
        with contextlib.suppress(_Invalid):
            b.all_backends(top["backends"], "backends")
    listeners: list[Listener] = []
    if "listeners" not in top:
        r.error(root, "listeners", "missing: at least one listener is needed")
    else:
        listeners = r.optional(top, "listeners", "", b.all_listeners, [])
    timeouts = r.optional(top, "timeouts", "", b.timeouts, Timeouts())
    log = r.optional(top, "log", "", b.log, LogConfig())
    admin = r.optional(top, "admin", "", b.admin, None)
    workers = r.optional(top, "workers", "", b.workers, 1)
    user = r.optional(top, "user", "", lambda n, p: r.convert(n, p, parse_user), None)
    acme = r.optional(top, "acme", "", b.acme, None)
    if acme is not None and acme.in_swarm and "swarm" not in top:
        need = "storage: swarm needs a top-level 'swarm:' section (which managers to ask)"
        r.error(top["acme"], "acme.storage", need)
    if "acme" not in top:
        for node, where in b.acme_users:
            r.error(node, where, "needs a top-level 'acme:' section (directory, email)")

    backends = b.backends
    for name in b.udp_backends - b.health_set:
        # A tcp check on a udp port always fails; default udp backends to no active check.
        if name in backends:
            backends[name] = dataclasses.replace(backends[name], health=Health(type="none"))
    if r.issues:
        issues = sorted(r.issues, key=lambda i: i.line)
        if r.more:
            issues.append(ConfigIssue(path, issues[-1].line, "", f"and {r.more} more errors not shown"))
        raise ConfigError(issues)
    return Config(
        path=path,
        digest=sha256_hex(raw),
        listeners=tuple(listeners),
        backends=MappingProxyType(backends),
        timeouts=timeouts,
        log=log,
        admin=admin,
        workers=workers,
        user=user,
        swarm=b.swarm,
        acme=acme,
    )


def sha256_hex(data: bytes) -> str:
    """SHA-256 of ``data`` (the config's digest: /status, /metrics), from CPython's own
    implementation where it has one: ``hashlib`` initialises OpenSSL's digests (``_hashlib``),
    ~0.6 MiB of RSS in every process, for one digest per load (issue 15). The same digest."""
    for name in ("_sha2", "_sha256"):  # CPython 3.12+, 3.11
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        return str(module.sha256(data).hexdigest())
    import hashlib

    return hashlib.sha256(data).hexdigest()
