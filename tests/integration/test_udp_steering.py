"""The SO_REUSEPORT groups of ``workers: N`` (runtime/udp_steering.py), on real loopback sockets:
the kernel runs our BPF program and delivers every datagram of a client to the member that
``steering_index`` names; a socket that joins the group from elsewhere receives nothing."""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections import Counter

import pytest

from edgeproxy.runtime.sockets import SocketKey, bind_socket
from edgeproxy.runtime.udp_steering import UdpGroups, steering_index, steering_program
from tests.integration.test_udp import needs_ipv6


def drain(sockets: list[socket.socket], expect: int) -> list[int]:
    """Which of ``sockets`` received the ``expect`` datagrams just sent, one entry per datagram
    (waits for them: on a busy machine loopback delivery may be deferred to ksoftirqd)."""
    hits: list[int] = []
    deadline = time.monotonic() + 5
    while len(hits) < expect and time.monotonic() < deadline:
        select.select(sockets, [], [], 0.1)
        for i, s in enumerate(sockets):
            with contextlib.suppress(BlockingIOError):
                while True:
                    s.recv(64)
                    hits.append(i)
    return sorted(hits)


def check_steering(
    key: SocketKey, members: list[socket.socket], rogue: socket.socket, sources: list[str]
) -> Counter[int]:
    family = members[0].family
    port = members[0].getsockname()[1]
    spread: Counter[int] = Counter()
    for src in sources:
        for _ in range(8):  # new source ports
            with socket.socket(family, socket.SOCK_DGRAM) as c:
                c.bind((src, 0))
                for _ in range(3):
                    c.sendto(b"x", (key[1], port))
                hits = drain([*members, rogue], 3)
                assert hits == [steering_index(family, len(members), src, c.getsockname()[1])] * 3
                spread[hits[0]] += 1
    return spread


@pytest.mark.parametrize(
    ("host", "sources"),
    [
        ("127.0.0.1", [f"127.0.0.{i}" for i in range(41, 61)]),
        pytest.param("::1", ["::1"], marks=needs_ipv6),
    ],
)
def test_each_client_lands_on_the_member_its_address_hashes_to_and_a_stranger_gets_nothing(
    host: str, sources: list[str]
) -> None:
    key: SocketKey = ("udp", host, 0)
    first = bind_socket(key, reuseport=True)
    key = ("udp", host, first.getsockname()[1])
    groups = UdpGroups()
    members = [groups.member(key, first, i, 3) for i in range(3)]
    assert members[0] is first and len({id(m) for m in members}) == 3
    rogue = bind_socket(key, reuseport=True)  # e.g. a second edgeproxy started as the same user
    for s in [*members, rogue]:
        s.setblocking(False)
    try:
        spread = check_steering(key, members, rogue, sources)
        if len(sources) > 1:
            assert set(spread) == {0, 1, 2}
        # workers: 3 -> 2: our copy of the last member closes, the program is re-attached for 2.
        groups.resize(2)
        assert len(groups.groups[key]) == 2
        check_steering(key, members[:2], rogue, sources)
    finally:
        groups.close()
        first.close()
        rogue.close()


def test_the_program_is_small_and_ends_by_returning_the_index() -> None:
    for family in (socket.AF_INET, socket.AF_INET6):
        prog = steering_program(family, 4)
        assert len(prog) < 20 and prog[-1] == (0x16, 0, 0, 0)  # ret A
        assert (0x94, 0, 0, 4) in prog  # A %= 4
    with pytest.raises(ValueError):
        steering_program(socket.AF_INET, 0)
