"""Which backend an HTTP request goes to (sans-IO).

Precedence, most specific first (issue #3: "host, then longest path_prefix"):

1. routes whose ``host`` equals the request's host (lower case, port and trailing dot removed),
2. routes whose ``host`` is a wildcard ``*.example.com`` matching it (one or more labels),
3. routes without ``host``,

and within each group the longest ``path_prefix`` that the path starts with wins (no prefix is
the empty prefix). Equal prefixes: the config's ``routes`` come before ``extra`` routes (those
that swarm labels add at run time), then the order written. No match: the listener's ``backend``.

Matching is on the raw request target's path, as received (no percent-decoding, no dot-segment
removal), and ``path_prefix`` is a plain prefix like HAProxy's ``path_beg`` and nginx's
``location /prefix``: ``/api`` also matches ``/apix``; write ``/api/`` to mean the directory.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol


class Route(Protocol):
    """A route as this module reads it (config.Route is one): sans-IO code takes plain values."""

    @property
    def backend(self) -> str: ...

    @property
    def host(self) -> str | None: ...

    @property
    def path_prefix(self) -> str | None: ...


_Entries = tuple[tuple[bytes, str], ...]  # (path prefix, backend), longest prefix first


class RouteTable:
    __slots__ = ("any_host", "default", "exact", "wildcard")

    def __init__(self, routes: Iterable[Route], default: str | None) -> None:
        self.default = default
        exact: dict[bytes, list[tuple[bytes, str]]] = {}
        wildcard: dict[bytes, list[tuple[bytes, str]]] = {}
        any_host: list[tuple[bytes, str]] = []
        for route in routes:
            entry = ((route.path_prefix or "").encode("latin-1"), route.backend)
            if route.host is None:
                any_host.append(entry)
            elif route.host.startswith("*."):
                wildcard.setdefault(normalize_host(route.host[2:].encode("latin-1")), []).append(entry)
            else:
                exact.setdefault(normalize_host(route.host.encode("latin-1")), []).append(entry)
        self.exact = {h: _longest_first(e) for h, e in exact.items()}
        self.wildcard = {h: _longest_first(e) for h, e in wildcard.items()}
        self.any_host = _longest_first(any_host)

    def backend_for(self, host: bytes | None, path: bytes) -> str | None:
        if host is not None and (self.exact or self.wildcard):
            name = normalize_host(host)
            entries = self.exact.get(name)
            if entries is not None:
                found = _match(entries, path)
                if found is not None:
                    return found
            if self.wildcard:
                parent = name.partition(b".")[2]
                while parent:
                    entries = self.wildcard.get(parent)
                    if entries is not None:
                        found = _match(entries, path)
                        if found is not None:
                            return found
                    parent = parent.partition(b".")[2]
        found = _match(self.any_host, path)
        return self.default if found is None else found


def normalize_host(host: bytes) -> bytes:
    """``Example.COM:8080`` -> ``example.com``; ``[::1]:80`` -> ``[::1]``; ``a.b.`` -> ``a.b``."""
    host = host.lower()
    if host.startswith(b"["):
        return host[: host.find(b"]") + 1]
    name, colon, port = host.rpartition(b":")
    if colon and port.isdigit():
        host = name
    return host.rstrip(b".")


def _longest_first(entries: list[tuple[bytes, str]]) -> _Entries:
    # sorted() is stable: equal lengths keep the order given (config routes first).
    return tuple(sorted(entries, key=lambda e: -len(e[0])))


def _match(entries: _Entries, path: bytes) -> str | None:
    for prefix, backend in entries:
        if path.startswith(prefix):
            return backend
    return None
