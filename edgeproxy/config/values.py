"""Parsers for the scalar value types of the config file: durations, addresses, networks.

Each parser takes the raw text and returns the parsed value or raises ``ValueError`` with a
message meant for an operator (the loader adds the YAML path and line in front of it).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_DURATION = re.compile(r"[ \t]*([0-9]+(?:\.[0-9]+)?)[ \t]*(ms|s|m|h|d)[ \t]*")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# HAProxy's bound (2^31 - 1 ms, 24.8 days): longer timers overflow in some event loops, and a
# longer timeout is a typo (``5000h``) rather than a wish.
MAX_DURATION = 2147483.647
MIN_DURATION = 0.001  # below 1ms a timer is 0 on the event loop's clock
# Periods that are not timers (acme.renew_before, tls.hsts max-age) may be longer: up to ten years.
MAX_PERIOD = 10 * 365 * 86400.0


def parse_duration(text: str, maximum: float = MAX_DURATION) -> float:
    """``250ms``, ``5s``, ``2m``, ``1h``, ``30d`` -> seconds (0 to ``maximum``: ``MAX_DURATION`` for
    timers, ``MAX_PERIOD`` for the periods that are not).

    A bare number is refused rather than guessed: HAProxy reads it as milliseconds, nginx as
    seconds, so either guess surprises half of our users. ``1:30`` (YAML 1.1's base 60) is not
    a duration either.
    """
    m = _DURATION.fullmatch(text)
    if not m:
        raise ValueError(f"invalid duration {clip(text)}: use a number and a unit, e.g. 250ms, 5s, 2m")
    seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    if seconds > maximum:
        limit = "2147483647ms (24.8 days)" if maximum == MAX_DURATION else f"{maximum / 86400:.0f}d"
        raise ValueError(f"{clip(text)} is too long: at most {limit}")
    return seconds


def printable(text: str) -> str:
    """``text`` with every character that is not printable written as an escape (``\\x00``,
    ``\\ud800``), so that a message quoting a config value can always be printed and logged: a
    lone surrogate cannot even be encoded to UTF-8."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def clip(text: str, limit: int = 60) -> str:
    """``text`` quoted for a message: printable, and cut when long (a 1 MB value stays one line)."""
    shown = printable(text if len(text) <= limit else text[:limit])
    return f"'{shown}'" if len(text) <= limit else f"'{shown}...' ({len(text)} characters)"


@dataclass(frozen=True, slots=True)
class Address:
    """An IP literal (or hostname, for servers) and a port. IPv6 is kept without brackets."""

    host: str
    port: int

    @property
    def family(self) -> socket.AddressFamily:
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET

    @property
    def is_wildcard(self) -> bool:
        return self.host in ("0.0.0.0", "::")

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


_HOSTNAME = re.compile(r"(?=.{1,253}\Z)[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?")
_PORT = re.compile(r"[0-9]{1,5}")


def parse_address(text: str, *, allow_hostname: bool = False, default_host: str | None = None) -> Address:
    """``host:port`` or ``[v6]:port``; ``:port`` / bare ``port`` use ``default_host`` if given."""
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or not text[end + 1 :].startswith(":"):
            raise ValueError(f"invalid address {clip(text)}: IPv6 is written [addr]:port, e.g. [::1]:80")
        host, port_text = text[1:end], text[end + 2 :]
        try:
            host = str(ipaddress.IPv6Address(host))
        except ValueError:
            raise ValueError(f"invalid address {clip(text)}: {clip(host)} is not an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            host, port_text = "", text
        if ":" in host:
            raise ValueError(f"invalid address {clip(text)}: write IPv6 in brackets, e.g. [::1]:80")
        if not host:
            if default_host is None:
                raise ValueError(f"invalid address {clip(text)}: expected host:port")
            host = default_host
        elif not _is_dotted_quad(host):
            try:
                host = str(ipaddress.IPv4Address(host))
            except ValueError:
                # A name whose last label is all digits (256.0.0.1, 1) is a mistyped address,
                # not a host name (RFC 1123 2.1): DNS would only fail later, server by server.
                if not allow_hostname or not _HOSTNAME.fullmatch(host) or host.rpartition(".")[2].isdigit():
                    raise ValueError(f"invalid address {clip(text)}: {clip(host)} is not an IP address") from None
    # [0-9], not str.isdigit(): that is true for '²', which int() refuses.
    if not _PORT.fullmatch(port_text) or not 0 < int(port_text) < 65536:
        raise ValueError(f"invalid address {clip(text)}: port must be 1-65535")
    return Address(host, int(port_text))


def _is_dotted_quad(host: str) -> bool:
    """``host`` is an IPv4 address written canonically (``10.0.0.1``; not ``010.0.0.1``).

    inet_pton is ~10x faster than ipaddress for this, the common case of a large file's servers;
    it refuses what ipaddress refuses (leading zeros, short forms), so both agree on the result.
    """
    try:
        socket.inet_pton(socket.AF_INET, host)
    except (OSError, ValueError):
        return False
    return True


_DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def acme_name_error(name: str) -> str | None:
    """Why ``name`` (lower case, no final dot) cannot have an ACME certificate here, or None. Also
    what keeps a name from a service label a safe file name in the ACME storage."""
    if name.startswith("*."):
        return f"{clip(name)}: a wildcard needs the DNS-01 challenge, which edgeproxy does not do"
    labels = name.split(".")
    if len(name) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        return f"{clip(name)} is not a DNS name (letters, digits, '-', labels of 1-63)"
    if labels[-1].isdigit():
        return f"{clip(name)} is an IP address: ACME certificates here are for DNS names"
    return None


def parse_network(text: str) -> IPNetwork:
    """``10.0.0.0/8``, ``::1``, ``192.168.1.7`` (a host is a /32 or /128)."""
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as e:
        raise ValueError(f"invalid network {clip(text)}: {printable(str(e))[:200]}") from None


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
