"""Which local address a datagram was sent to, and replying from it (IP_PKTINFO / IPV6_PKTINFO).

On a wildcard bind (``0.0.0.0:53``, ``[::]:53``) the kernel picks a reply's source address by
routing, which on a multi-homed host (or on loopback: 127.0.0.9 is answered from 127.0.0.1) is not
always the address the client wrote to, and resolvers drop such replies. With ``IP_PKTINFO`` /
``IPV6_RECVPKTINFO`` set, ``recvmsg`` returns the datagram's destination as ancillary data, and
the same structure given to ``sendmsg`` sets the reply's source (RFC 3542 for IPv6; ip(7) for
IPv4). asyncio's datagram transport exposes neither, so the listener reads its socket itself.

Only byte layouts live here (no I/O beyond setsockopt): ``struct in_pktinfo`` is
``{int ifindex; in_addr spec_dst; in_addr addr}`` (12 bytes), ``struct in6_pktinfo`` is
``{in6_addr addr; unsigned ifindex}`` (20 bytes), both in host byte order for the index.
"""

from __future__ import annotations

import socket

IP_PKTINFO: int = getattr(socket, "IP_PKTINFO", 8)  # Linux's value; Python 3.11 does not export it
IPV6_RECVPKTINFO: int = socket.IPV6_RECVPKTINFO
IPV6_PKTINFO: int = socket.IPV6_PKTINFO

Cmsg = tuple[int, int, bytes]
_V4_SIZE = 12
_V6_SIZE = 20
_NO_INDEX = b"\0\0\0\0"


def is_wildcard(host: str) -> bool:
    return host in ("0.0.0.0", "::")


def enable(sock: socket.socket) -> None:
    """Ask the kernel to report each datagram's destination address (a wildcard-bound socket)."""
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)


def ancillary_size(family: int) -> int:
    return socket.CMSG_SPACE(_V6_SIZE if family == socket.AF_INET6 else _V4_SIZE)


def destination(ancdata: list[Cmsg]) -> bytes | None:
    """The pktinfo payload of a received datagram (the flow key's local part), None without one."""
    for level, kind, data in ancdata:
        if (level, kind) == (socket.IPPROTO_IP, IP_PKTINFO) and len(data) >= _V4_SIZE:
            return data[:_V4_SIZE]
        if (level, kind) == (socket.IPPROTO_IPV6, IPV6_PKTINFO) and len(data) >= _V6_SIZE:
            return data[:_V6_SIZE]
    return None


def local_ip(info: bytes) -> str:
    """The address the client sent to (the datagram's IP destination), as text."""
    if len(info) == _V6_SIZE:
        return socket.inet_ntop(socket.AF_INET6, info[:16])
    return socket.inet_ntop(socket.AF_INET, info[8:12])


def reply_cmsg(info: bytes) -> list[Cmsg]:
    """Ancillary data that makes ``sendmsg`` send from the address ``info`` was received on.

    IPv4: ``ipi_spec_dst`` (the local address the kernel matched: the destination for unicast,
    the interface's address for a broadcast) with ``ifindex`` 0, so routing still chooses the
    way out (unbound does the same). IPv6: the destination, with the interface index kept only
    for a link-local address (fe80::/10), which means nothing without it.
    """
    if len(info) == _V6_SIZE:
        addr = info[:16]
        link_local = addr[0] == 0xFE and addr[1] & 0xC0 == 0x80
        return [(socket.IPPROTO_IPV6, IPV6_PKTINFO, addr + (info[16:20] if link_local else _NO_INDEX))]
    return [(socket.IPPROTO_IP, IP_PKTINFO, _NO_INDEX + info[4:8] + _NO_INDEX)]
