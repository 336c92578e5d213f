"""Listening sockets, owned by the runtime so that a reload keeps every socket whose address
stays: a socket that is never closed cannot refuse a connection (SPEC.md "Reload")."""

from __future__ import annotations

import socket
from collections.abc import Iterable

from edgeproxy.config import Address, Config, Listener
from edgeproxy.staged import Staged

SocketKey = tuple[str, str, int]  # ("tcp" | "udp", host, port)
BACKLOG = 1024


def socket_key(listener: Listener, addr: Address) -> SocketKey:
    return ("udp" if listener.mode == "udp" else "tcp", addr.host, addr.port)


def socket_keys(config: Config) -> list[SocketKey]:
    """Every socket a configuration listens on."""
    return [socket_key(lst, a) for lst in config.listeners for a in lst.bind]


def bind_socket(key: SocketKey, *, reuseport: bool = False) -> socket.socket:
    """``reuseport``: a member of a UDP SO_REUSEPORT group (runtime/udp_steering.py)."""
    proto, host, port = key
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    sock = socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            # [::]:80 next to 0.0.0.0:80 must not claim the IPv4 side too (nginx's ipv6only=on).
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        if kind == socket.SOCK_STREAM:
            sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class SocketSet:
    """The open listening sockets by (proto, host, port).

    A worker's set is filled by ``adopt`` with sockets the supervisor bound and passed over
    (``can_bind=False``): a worker never binds, so all of them share one socket per address and
    its one accept queue; a worker that exits leaves the queue to the others.
    """

    def __init__(self, *, can_bind: bool = True, reuseport_udp: bool = False) -> None:
        self.sockets: dict[SocketKey, socket.socket] = {}
        self.can_bind = can_bind
        self.reuseport_udp = reuseport_udp  # the supervisor's: each UDP socket starts a group
        self.committed: set[SocketKey] = set()  # the sockets of the running configuration

    def adopt(self, key: SocketKey, sock: socket.socket) -> None:
        old = self.sockets.get(key)
        if old is not None and old is not sock:
            sock.close()  # already have it (sent again with a restart or a reload)
            return
        sock.setblocking(False)
        self.sockets[key] = sock

    def ensure(self, keys: Iterable[SocketKey]) -> list[SocketKey]:
        """Bind whatever is missing; on any failure close what this call bound and raise."""
        added: list[SocketKey] = []
        try:
            for key in keys:
                if key not in self.sockets:
                    if not self.can_bind:
                        raise OSError(0, "was not passed by the supervisor")
                    self.sockets[key] = bind_socket(key, reuseport=self.reuseport_udp and key[0] == "udp")
                    added.append(key)
        except OSError as e:
            for done in added:  # not `key`: that one names the address that failed
                self.sockets.pop(done).close()
            proto, host, port = key
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            raise OSError(e.errno, f"cannot bind {proto} {where}: {e.strerror}") from None
        return added

    def stage(self, keys: Iterable[SocketKey]) -> Staged:
        """A reload's sockets: bind what is missing now (OSError if one cannot be). ``commit``
        closes the sockets no longer listed; ``abort`` (or a failure here) closes every socket
        the running configuration does not use: those this bound, and in a worker those the
        supervisor passed for the reload that failed."""
        wanted = list(keys)
        try:
            self.ensure(wanted)
        except OSError:
            self.retain(self.committed)
            raise

        def commit() -> None:
            self.committed = set(wanted)
            self.retain(self.committed)

        return Staged(commit, lambda: self.retain(self.committed))

    def get(self, key: SocketKey) -> socket.socket:
        return self.sockets[key]

    def retain(self, keys: set[SocketKey]) -> None:
        """Close the sockets no longer listed."""
        for key in list(self.sockets):
            if key not in keys:
                self.sockets.pop(key).close()

    def close(self) -> None:
        self.retain(set())
