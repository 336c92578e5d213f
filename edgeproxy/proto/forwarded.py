"""Forwarding headers (sans-IO): what the backend is told about the client (SPEC.md "Client
address semantics").

From a client **not** in ``forwarded.trusted`` every incoming ``X-Forwarded-For``, ``X-Real-IP``,
``Forwarded`` and ``X-Forwarded-Proto/-Host/-Port`` line is dropped, in any letter case and in
the underscore spellings (``X_Forwarded_For``, which CGI/WSGI-style servers read as the same
variable), and ours are appended. HAProxy and Envoy keep a client's own ``X-Forwarded-For`` by
default and Traefik leaves ``Forwarded`` alone; here a client cannot put anything in front of its
real address.

From a trusted peer (another proxy in front), its ``X-Forwarded-For`` lines are joined into one
and the client appended; ``X-Real-IP`` becomes the rightmost address of that list that is not
trusted; ``Forwarded`` gets ``for=<client>`` appended; its ``X-Forwarded-Proto/-Host/-Port`` are
kept (the first proxy knows the original scheme). The backend always gets exactly one
``X-Forwarded-For`` line.

For an untrusted client the appended block is the same on every request of the connection, so it
is built once per connection (``ClientForwarding``) and a request costs one concatenation. It is
the same for every connection of one client address to one port, so those share it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Final, Protocol

from edgeproxy.proto.http_request import (
    FORWARDED,
    FORWARDING_NAMES,
    XF_HOST,
    XF_PORT,
    XF_PROTO,
    XFF,
    RequestParser,
    spellings,
    without_lines,
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Forwarded(Protocol):
    """A listener's ``forwarded:`` settings as this module reads them (config.Forwarded is one)."""

    @property
    def trusted(self) -> tuple[IPNetwork, ...]: ...

    @property
    def headers(self) -> tuple[str, ...]: ...


_REAL_IP_NAMES: Final = frozenset(spellings(b"x-real-ip"))

# ClientForwarding objects kept for reuse, per policy: a client with many connections (a browser's
# six, a NAT, a load generator) shares one instead of ~140 bytes each (issue 15). Emptied when
# full: a connection keeps its own reference, so this bounds only what is kept for future ones.
_MAX_SHARED: Final = 256


class ForwardingPolicy:
    """One listener's ``forwarded:`` settings, ready for the per-connection work."""

    __slots__ = (
        "proto", "set_forwarded", "set_host", "set_port", "set_proto", "set_real_ip", "set_xff", "shared", "trusted"
    )  # fmt: skip

    def __init__(self, config: Forwarded, *, https: bool = False) -> None:
        self.trusted: tuple[IPNetwork, ...] = config.trusted
        self.proto = "https" if https else "http"  # the scheme the client used to reach us
        headers = set(config.headers)
        self.set_xff = "x-forwarded-for" in headers
        self.set_real_ip = "x-real-ip" in headers
        self.set_proto = "x-forwarded-proto" in headers
        self.set_host = "x-forwarded-host" in headers
        self.set_port = "x-forwarded-port" in headers
        self.set_forwarded = "forwarded" in headers
        self.shared: dict[tuple[str, int], ClientForwarding] = {}  # by (client address, port)

    def is_trusted(self, ip: IPAddress | None) -> bool:
        return ip is not None and any(ip in net for net in self.trusted)

    def for_client(self, client: tuple[str, int], dest: tuple[str, int]) -> ClientForwarding:
        """The rewrite for a connection from ``client`` to ``dest`` (shared: it never changes)."""
        key = (client[0], dest[1])
        shared = self.shared
        fwd = shared.get(key)
        if fwd is None:
            if len(shared) >= _MAX_SHARED:
                shared.clear()
            fwd = shared[key] = ClientForwarding(self, client[0].partition("%")[0], dest[1])
        return fwd


class ClientForwarding:
    """The rewrite for one client connection (its address and the port it connected to)."""

    __slots__ = ("client", "fixed_end", "policy", "port", "trusted")

    def __init__(self, policy: ForwardingPolicy, client_ip: str, dest_port: int) -> None:
        self.policy = policy
        self.client = client_ip
        self.port = dest_port
        self.trusted = bool(policy.trusted) and policy.is_trusted(parse_ip(client_ip))
        lines = []
        if policy.set_xff:
            lines.append(f"X-Forwarded-For: {client_ip}\r\n")
        if policy.set_real_ip:
            lines.append(f"X-Real-IP: {client_ip}\r\n")
        if policy.set_proto:
            lines.append(f"X-Forwarded-Proto: {policy.proto}\r\n")
        if policy.set_port:
            lines.append(f"X-Forwarded-Port: {dest_port}\r\n")
        if policy.set_forwarded:
            lines.append(f"Forwarded: {forwarded_element(client_ip, policy.proto)}\r\n")
        # What an untrusted client's every request gets (X-Forwarded-Host varies per request),
        # with the blank line that ends the head: one copy per connection, not two.
        self.fixed_end = "".join(lines).encode("ascii") + b"\r\n"

    def rewrite(self, head: bytes, req: RequestParser) -> bytes:
        """The head to send upstream: ``head`` with forwarding and hop-by-hop lines replaced."""
        if self.trusted:
            return self._rewrite_trusted(head, req)
        drop = req.drop
        forwarding = req.forwarding
        if not forwarding and not drop and not self.policy.set_host:
            return head[:-2] + self.fixed_end  # the common case: nothing to remove, one concatenation
        added = self.fixed_end[:-2]
        if self.policy.set_host and req.host is not None:
            added += b"X-Forwarded-Host: " + req.host + b"\r\n"
        if drop:
            added += req.restated
        if not forwarding and not drop:
            return head[:-2] + added + b"\r\n"
        names = set(drop)
        names.update(lname for _, lname, _ in forwarding)
        return without_lines(head, names) + added + b"\r\n"

    def _rewrite_trusted(self, head: bytes, req: RequestParser) -> bytes:
        policy = self.policy
        client = self.client
        xff: list[bytes] = []
        fwd: list[bytes] = []
        present: set[int] = set()
        names = set(req.drop)
        for code, lname, value in req.forwarding:
            if b"_" in lname or lname in _REAL_IP_NAMES:
                names.add(lname)  # no proxy sends these: always dropped, X-Real-IP is ours
                continue
            present.add(code)
            if code == XFF:
                names.add(lname)
                xff.extend(v for v in (p.strip(b" \t") for p in value.split(b",")) if v)
            elif code == FORWARDED and policy.set_forwarded:
                names.add(lname)
                fwd.extend(v for v in (p.strip(b" \t") for p in value.split(b",")) if v)
        added: list[bytes] = []
        entries = [e.decode("latin-1") for e in xff]
        if policy.set_xff:
            added.append(b"X-Forwarded-For: " + ", ".join([*entries, client]).encode("latin-1") + b"\r\n")
        elif xff:
            added.append(b"X-Forwarded-For: " + b", ".join(xff) + b"\r\n")
        if policy.set_real_ip:
            added.append(b"X-Real-IP: " + real_ip([*entries, client], policy).encode("latin-1") + b"\r\n")
        if policy.set_proto and XF_PROTO not in present:
            added.append(b"X-Forwarded-Proto: " + policy.proto.encode("ascii") + b"\r\n")
        if policy.set_host and XF_HOST not in present and req.host is not None:
            added.append(b"X-Forwarded-Host: " + req.host + b"\r\n")
        if policy.set_port and XF_PORT not in present:
            added.append(b"X-Forwarded-Port: %d\r\n" % self.port)
        if policy.set_forwarded:
            ours = forwarded_element(client, policy.proto).encode("ascii")
            added.append(b"Forwarded: " + b", ".join([*fwd, ours]) + b"\r\n")
        if req.drop:
            added.append(req.restated)
        base = without_lines(head, names) if names else head[:-2]
        return base + b"".join(added) + b"\r\n"


def forwarded_element(ip: str, proto: str = "http") -> str:
    """RFC 7239 ``for=`` with ``proto``; an IPv6 address is bracketed and quoted."""
    node = f'"[{ip}]"' if ":" in ip else ip
    return f"for={node};proto={proto}"


def parse_ip(text: str) -> IPAddress | None:
    """An address from an X-Forwarded-For entry: bare, ``v4:port``, ``[v6]`` or ``[v6]:port``."""
    text = text.strip().strip('"')
    try:
        return ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        pass
    if text.startswith("["):
        inner = text[1 : text.find("]")]
    elif text.count(":") == 1:
        inner = text.partition(":")[0]
    else:
        return None
    try:
        return ipaddress.ip_address(inner.partition("%")[0])
    except ValueError:
        return None


def real_ip(chain: Sequence[str], policy: ForwardingPolicy) -> str:
    """The rightmost address of ``chain`` that is not a trusted proxy.

    Walking from the right (the peer we trust) leftwards, each trusted hop vouches for the entry
    before it. An entry that is not an address ends the walk: the last address we could vouch
    for is the answer (nginx's realip does the same), so garbage cannot become X-Real-IP.
    """
    best = chain[-1]
    for entry in reversed(chain):
        ip = parse_ip(entry)
        if ip is None:
            break
        best = str(ip)
        if not policy.is_trusted(ip):
            break
    return best


__all__ = ["FORWARDING_NAMES", "ClientForwarding", "ForwardingPolicy", "forwarded_element", "parse_ip", "real_ip"]
