"""IP_PKTINFO / IPV6_PKTINFO layouts (net/udp_pktinfo.py): byte literals, and totality over any
ancillary data a socket could hand back."""

from __future__ import annotations

import socket

from hypothesis import given, settings
from hypothesis import strategies as st

from edgeproxy.net import udp_pktinfo as pk

V4 = b"\x02\x00\x00\x00" + socket.inet_aton("127.0.0.9") + socket.inet_aton("127.0.0.9")  # ifindex 2


def test_ipv4_destination_and_the_reply_from_it() -> None:
    anc = [(socket.IPPROTO_IP, pk.IP_PKTINFO, V4)]
    info = pk.destination(anc)
    assert info == V4 and pk.local_ip(V4) == "127.0.0.9"
    # Reply: spec_dst set, ifindex and addr zero (routing still picks the way out).
    assert pk.reply_cmsg(V4) == [
        (socket.IPPROTO_IP, pk.IP_PKTINFO, b"\0" * 4 + socket.inet_aton("127.0.0.9") + b"\0" * 4)
    ]


def test_ipv6_keeps_the_interface_only_for_link_local() -> None:
    index = (7).to_bytes(4, "little")
    for addr, keeps in (("2001:db8::10", False), ("fe80::1", True), ("::1", False)):
        info = socket.inet_pton(socket.AF_INET6, addr) + index
        assert pk.destination([(socket.IPPROTO_IPV6, pk.IPV6_PKTINFO, info)]) == info
        assert pk.local_ip(info) == addr
        ((level, kind, data),) = pk.reply_cmsg(info)
        assert (level, kind, data[:16]) == (socket.IPPROTO_IPV6, pk.IPV6_PKTINFO, info[:16])
        assert data[16:] == (index if keeps else b"\0" * 4)


def test_other_or_short_ancillary_data_is_no_destination() -> None:
    assert pk.destination([]) is None
    assert pk.destination([(socket.IPPROTO_IP, pk.IP_PKTINFO, V4[:11])]) is None
    assert pk.destination([(socket.SOL_SOCKET, socket.SCM_RIGHTS, b"\0" * 12)]) is None
    assert pk.destination([(socket.SOL_SOCKET, socket.SCM_RIGHTS, b"x"), (0, pk.IP_PKTINFO, V4 + b"pad")]) == V4


def test_wildcards() -> None:
    assert pk.is_wildcard("0.0.0.0") and pk.is_wildcard("::")
    assert not pk.is_wildcard("127.0.0.1") and not pk.is_wildcard("::1")


LEVELS = st.sampled_from([socket.IPPROTO_IP, socket.IPPROTO_IPV6, socket.SOL_SOCKET, 0, 41, 255])
KINDS = st.sampled_from([pk.IP_PKTINFO, pk.IPV6_PKTINFO, pk.IPV6_RECVPKTINFO, 1, 0, 99])


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(LEVELS, KINDS, st.binary(max_size=40)), max_size=4))
def test_any_ancillary_data_gives_a_usable_destination_or_none(anc: list[tuple[int, int, bytes]]) -> None:
    info = pk.destination(anc)
    if info is None:
        return
    assert len(info) in (12, 20)
    family = socket.AF_INET6 if len(info) == 20 else socket.AF_INET
    socket.inet_pton(family, pk.local_ip(info))  # a valid address of the right family
    ((_, _, data),) = pk.reply_cmsg(info)
    assert len(data) == len(info)
