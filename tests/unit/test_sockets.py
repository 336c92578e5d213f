"""Listening sockets owned by the runtime (runtime/sockets.py)."""

from __future__ import annotations

import socket

import pytest

from edgeproxy.runtime.sockets import SocketSet


def test_a_bind_error_names_the_address_that_failed_and_releases_the_others() -> None:
    """The rollback loop reused `key`, so the message named the last address bound, not the one
    that failed (issue 10, defect 11)."""
    taken = socket.socket()
    taken.bind(("127.0.0.2", 0))
    taken.listen()
    busy = taken.getsockname()[1]
    sockets = SocketSet()
    try:
        with pytest.raises(OSError) as e:
            sockets.ensure([("tcp", "127.0.0.3", 0), ("udp", "127.0.0.3", 0), ("tcp", "127.0.0.2", busy)])
        assert e.value.strerror is not None and e.value.strerror.startswith(f"cannot bind tcp 127.0.0.2:{busy}: ")
        assert sockets.sockets == {}  # what this call bound was closed again
    finally:
        taken.close()
        sockets.close()
