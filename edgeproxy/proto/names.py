"""Which of several named things a TLS server name selects (sans-IO): certificates by the names
they hold, tcp ``sni`` routes by the names they list.

The rules are those of certificate name matching (RFC 6125 6.4; what HAProxy's ``crt`` list and
nginx's ``server_name`` with certificates do): names compare case-insensitively, an exact name
wins over a wildcard, and ``*.example.com`` matches exactly one label (``a.example.com``, not
``example.com`` nor ``a.b.example.com``). The caller supplies the default for no match.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

T = TypeVar("T")


class NameTable(Generic[T]):
    __slots__ = ("exact", "wildcard")

    def __init__(self, entries: Iterable[tuple[Iterable[str], T]]) -> None:
        """``entries``: (names, value) pairs in order of preference: a name listed twice keeps the
        first entry's value."""
        self.exact: dict[str, T] = {}
        self.wildcard: dict[str, T] = {}  # "example.com" for "*.example.com"
        for names, value in entries:
            for name in names:
                name = name.lower().rstrip(".")
                if name.startswith("*."):
                    self.wildcard.setdefault(name[2:], value)
                else:
                    self.exact.setdefault(name, value)

    def __bool__(self) -> bool:
        return bool(self.exact or self.wildcard)

    def lookup(self, name: str | None) -> T | None:
        """The value for ``name`` (a host name as a client sent it), or None when none matches."""
        if not name:
            return None
        name = name.lower().rstrip(".")
        found = self.exact.get(name)
        if found is not None:
            return found
        label, dot, parent = name.partition(".")
        if dot and label and self.wildcard:
            return self.wildcard.get(parent)
        return None
