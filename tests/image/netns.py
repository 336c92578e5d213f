"""Sockets that live in another network namespace, made from the test process itself.

A thread enters the namespace (setns applies to the calling thread only), creates the socket and
ends; the socket stays in that namespace for good, so the test uses it like any other: a client
with its own address on the lab bridge, not a loopback alias.
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def socket_in(netns: str, family: socket.AddressFamily = socket.AF_INET) -> socket.socket:
    """A TCP socket in the named namespace (``ip netns add`` name, /run/netns/NAME)."""
    made: list[socket.socket | OSError] = []

    def make() -> None:
        try:
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns {netns}: {os.strerror(err)}")
            finally:
                os.close(fd)
            made.append(socket.socket(family, socket.SOCK_STREAM))
        except OSError as e:
            made.append(e)

    thread = threading.Thread(target=make, name=f"netns-{netns}")
    thread.start()
    thread.join()
    result = made[0]
    if isinstance(result, OSError):
        raise result
    return result


def connect_from(netns: str, host: str, port: int, timeout: float = 10.0) -> socket.socket:
    s = socket_in(netns)
    s.settimeout(timeout)
    try:
        s.connect((host, port))
    except OSError:
        s.close()
        raise
    return s
