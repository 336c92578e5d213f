"""One flow per client across workers: each UDP address is a SO_REUSEPORT group, one socket per
worker, and the kernel steers every datagram of a client to the same socket.

With ``workers: N`` every worker would otherwise read the one shared socket, and a client's
datagrams would land in whichever worker woke first, each starting its own flow (its own server
with ``roundrobin``). Here the supervisor binds N sockets to the address with SO_REUSEPORT (one
group), attaches a classic BPF program to the group that maps a datagram's source (address,
port) to 0..N-1, and hands socket i to worker i+1 (``UdpGroups.member``). Choices, and why:

- **Kernel steering, not the supervisor relaying datagrams**: relaying costs a receive and a send
  per client datagram in the supervisor (a third process in the path, on the same cores) and
  makes that one process the ceiling for the whole listener; steering costs the kernel a few
  BPF instructions. (Figures in the README's UDP section.)
- **The supervisor keeps every member open.** A group's mapping depends on its membership; if a
  member closed when its worker died, the kernel would move another member into its slot and
  other clients would change worker. Kept open, a dead worker's datagrams wait in its socket's
  receive buffer until the restarted worker (same id) adopts the same socket.
- **A program rather than the kernel's default hash** (which also hashes the 4-tuple, with a
  boot-time secret): the mapping depends only on the client's address and on N, so it is stable
  and can be computed offline ("which worker has this client"); and a socket that joins the
  group from elsewhere (a second edgeproxy started by mistake as the same user) lands at index N
  or above, which the program never returns: it receives nothing instead of silently taking a
  share of the clients. If the kernel refuses the program, the default hash still keeps one
  flow per client while the group is unchanged; that is logged.

The program (cBPF, ``SO_ATTACH_REUSEPORT_CBPF``) runs with the packet's data at the UDP payload;
the IP header is reached through ``SKF_NET_OFF``. IPv4: source address ^ source port (the UDP
header sits after the IP header's IHL words); IPv6: the four source address words and the port
(the UDP header right after the fixed 40-byte header; a datagram with extension headers hashes
other bytes of its own, the same for every datagram of the flow). Then a multiplicative hash
(Knuth's golden-ratio constant) and ``% N``.
"""

from __future__ import annotations

import ctypes
import socket
import struct
from collections.abc import Iterable

from edgeproxy.log import log
from edgeproxy.runtime.sockets import SocketKey, bind_socket

SO_ATTACH_REUSEPORT_CBPF: int = getattr(socket, "SO_ATTACH_REUSEPORT_CBPF", 51)  # Linux's value

# Classic BPF opcodes (linux/filter.h, linux/bpf_common.h).
_LD, _LDX, _ST, _ALU, _RET, _MISC = 0x00, 0x01, 0x02, 0x04, 0x06, 0x07
_W, _H, _B = 0x00, 0x08, 0x10
_ABS, _IND, _MEM, _MSH = 0x20, 0x40, 0x60, 0xA0
_MUL, _RSH, _XOR, _MOD = 0x20, 0x70, 0xA0, 0x90
_K, _X, _A = 0x00, 0x08, 0x10
_TAX = _MISC | 0x00
SKF_NET_OFF = -0x100000
GOLDEN = 0x9E3779B1

Insn = tuple[int, int, int, int]  # code, jt, jf, k


def _net(offset: int) -> int:
    return (SKF_NET_OFF + offset) & 0xFFFFFFFF


def _mix(n: int) -> list[Insn]:
    """A = (A * GOLDEN) >> 16 % n: the high bits of a multiplicative hash, into 0..n-1."""
    return [
        (_ALU | _MUL | _K, 0, 0, GOLDEN),
        (_ALU | _RSH | _K, 0, 0, 16),
        (_ALU | _MOD | _K, 0, 0, n),
        (_RET | _A, 0, 0, 0),
    ]


def steering_program(family: int, n: int) -> list[Insn]:
    """The cBPF program returning the group index (0..n-1) for a datagram's source."""
    if n < 1:
        raise ValueError("a group has at least one socket")
    if family == socket.AF_INET6:
        prog: list[Insn] = [(_LD | _H | _ABS, 0, 0, _net(40))]  # A = source port
        for word in range(4):  # A ^= each 32-bit word of the source address
            prog += [(_TAX, 0, 0, 0), (_LD | _W | _ABS, 0, 0, _net(8 + 4 * word)), (_ALU | _XOR | _X, 0, 0, 0)]
        return prog + _mix(n)
    return [
        (_LDX | _B | _MSH, 0, 0, _net(0)),  # X = 4 * IHL: where the UDP header starts
        (_LD | _H | _IND, 0, 0, _net(0)),  # A = source port (first half-word of the UDP header)
        (_TAX, 0, 0, 0),
        (_LD | _W | _ABS, 0, 0, _net(12)),  # A = source address
        (_ALU | _XOR | _X, 0, 0, 0),
        *_mix(n),
    ]


def steering_index(family: int, n: int, host: str, port: int) -> int:
    """What ``steering_program`` returns for a datagram from (host, port) without IP options or
    IPv6 extension headers: which member of an n-group gets that client (tests, operators)."""
    if family == socket.AF_INET6:
        a = port
        for (word,) in struct.iter_unpack("!I", socket.inet_pton(socket.AF_INET6, host)):
            a ^= word
    else:
        a = struct.unpack("!I", socket.inet_pton(socket.AF_INET, host))[0] ^ port
    return ((a * GOLDEN & 0xFFFFFFFF) >> 16) % n


def attach_steering(sock: socket.socket, n: int) -> None:
    """Attach (or replace) the group's program through one member; OSError if the kernel refuses."""
    prog = steering_program(sock.family, n)
    filters = (ctypes.c_ubyte * (8 * len(prog)))(*b"".join(struct.pack("=HBBI", *insn) for insn in prog))
    fprog = struct.pack("@HP", len(prog), ctypes.addressof(filters))  # struct sock_fprog, native layout
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)


class UdpGroups:
    """The supervisor's SO_REUSEPORT groups by UDP socket key. Member 0 is the socket its
    ``SocketSet`` bound (with ``reuseport_udp``); the others are bound here, as many as workers."""

    def __init__(self) -> None:
        self.groups: dict[SocketKey, list[socket.socket]] = {}

    def member(self, key: SocketKey, first: socket.socket, index: int, size: int) -> socket.socket:
        """Socket ``index`` (worker id - 1) of the group at ``key``, for ``size`` workers.

        If another member cannot be bound, the worker gets ``first``, shared as TCP sockets are:
        it serves, without the one-worker-per-client steering (logged)."""
        group = self.groups.get(key)
        try:
            if group is None or group[0] is not first:  # new, or the address was re-bound by a reload
                self._close(key)
                group = self.groups[key] = [first]
                self._fit(key, group, max(size, index + 1), size)
            elif len(group) <= index:
                self._fit(key, group, index + 1, size)
        except OSError as exc:
            log.error(
                "udp: cannot bind a socket per worker; workers share one (no per-client steering)",
                address=_where(key),
                error=exc.strerror or str(exc),
            )
            return first
        return group[index]

    def resize(self, size: int) -> None:
        """``workers`` changed: one member per worker, re-programmed for ``size``."""
        for key, group in self.groups.items():
            try:
                self._fit(key, group, size, size)
            except OSError as exc:
                log.error("udp: cannot bind a socket per worker", address=_where(key), error=exc.strerror or str(exc))

    def _fit(self, key: SocketKey, group: list[socket.socket], count: int, size: int) -> None:
        """``count`` members, the program for ``size``. Extra members close from the end: the
        kernel fills a closed member's slot with its last one, so the others stay where they are
        (our copy only: a stopping worker keeps its own until it exits, and the program, which
        never returns an index >= ``size``, sends it nothing new)."""
        while len(group) > max(count, 1):
            group.pop().close()
        while len(group) < count:
            group.append(bind_socket(key, reuseport=True))
        try:
            attach_steering(group[0], size)
        except OSError as exc:
            log.warning(
                "udp: cannot attach the steering program; the kernel's own hash steers clients",
                address=_where(key),
                error=exc.strerror or str(exc),
            )

    def retain(self, keys: Iterable[SocketKey]) -> None:
        """Close the extra members of groups whose address is no longer listened on."""
        keep = set(keys)
        for key in list(self.groups):
            if key not in keep:
                self._close(key)

    def _close(self, key: SocketKey) -> None:
        group = self.groups.pop(key, [])
        for sock in group[1:]:  # member 0 belongs to the SocketSet
            sock.close()

    def close(self) -> None:
        self.retain(())


def _where(key: SocketKey) -> str:
    _, host, port = key
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
