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

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}  # d: acme renew_before, hsts


def parse_duration(text: str) -> float:
    """``250ms``, ``5s``, ``2m``, ``1h``, ``30d`` -> seconds.

    A bare number is refused rather than guessed: HAProxy reads it as milliseconds, nginx as
    seconds, so either guess surprises half of our users.
    """
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"invalid duration {text!r}: use a number and a unit, e.g. 250ms, 5s, 2m")
    return float(m.group(1)) * _UNIT_SECONDS[m.group(2)]


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


_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?$")


def parse_address(text: str, *, allow_hostname: bool = False, default_host: str | None = None) -> Address:
    """``host:port`` or ``[v6]:port``; ``:port`` / bare ``port`` use ``default_host`` if given."""
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or not text[end + 1 :].startswith(":"):
            raise ValueError(f"invalid address {text!r}: IPv6 is written [addr]:port, e.g. [::1]:80")
        host, port_text = text[1:end], text[end + 2 :]
        try:
            host = str(ipaddress.IPv6Address(host))
        except ValueError:
            raise ValueError(f"invalid address {text!r}: {host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            host, port_text = "", text
        if ":" in host:
            raise ValueError(f"invalid address {text!r}: write IPv6 in brackets, e.g. [::1]:80")
        if not host:
            if default_host is None:
                raise ValueError(f"invalid address {text!r}: expected host:port")
            host = default_host
        else:
            try:
                host = str(ipaddress.IPv4Address(host))
            except ValueError:
                if not allow_hostname or not _HOSTNAME.match(host):
                    raise ValueError(f"invalid address {text!r}: {host!r} is not an IP address") from None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"invalid address {text!r}: port must be 1-65535")
    return Address(host, int(port_text))


def parse_network(text: str) -> IPNetwork:
    """``10.0.0.0/8``, ``::1``, ``192.168.1.7`` (a host is a /32 or /128)."""
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as e:
        raise ValueError(f"invalid network {text!r}: {e}") from None


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
