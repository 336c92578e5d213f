"""Property tests for edgeproxy.balance: pick() only ever returns an eligible server."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from edgeproxy.balance import ALGORITHMS, Balancer, RandomBalancer, Server, ServerState

NOW = 100.0

server_st = st.builds(
    Server,
    host=st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.3", "::1", "web"]),
    port=st.integers(1, 65535),
    weight=st.integers(1, 8),
    backup=st.booleans(),
)


@st.composite
def scenario(draw: st.DrawFn) -> tuple[Balancer, list[Server], list[Server], list[str]]:
    servers = draw(st.lists(server_st, min_size=0, max_size=10))
    for s in servers:
        s.state = draw(st.sampled_from(list(ServerState)))
        # Before, exactly at, or after NOW: `now >= suspect_until` is the boundary under test.
        s.suspect_until = draw(st.sampled_from([0.0, NOW - 1.0, NOW, NOW + 1.0]))
        s.active = draw(st.integers(0, 5))
    exclude = draw(st.lists(st.sampled_from(servers), max_size=len(servers))) if servers else []
    algorithm = draw(st.sampled_from(sorted(ALGORITHMS)))
    if algorithm == "random":
        bal: Balancer = RandomBalancer(servers, rng=random.Random(draw(st.integers(0, 2**32))))
    else:
        bal = ALGORITHMS[algorithm](servers)
    ips = draw(st.lists(st.one_of(st.ip_addresses().map(str), st.text(max_size=20)), min_size=1, max_size=5))
    return bal, servers, exclude, ips


@settings(max_examples=400, deadline=None)
@given(scenario())
def test_pick_only_returns_eligible(
    case: tuple[Balancer, list[Server], list[Server], list[str]],
) -> None:
    bal, servers, exclude, ips = case
    eligible = [s for s in servers if s.usable(NOW) and s not in exclude]
    eligible_primaries = [s for s in eligible if not s.backup]
    for ip in ips:
        for _ in range(3):
            got = bal.pick(ip, exclude, now=NOW)
            if not eligible:
                assert got is None
                continue
            assert got is not None
            assert got in servers
            assert got.usable(NOW)
            assert got not in exclude
            if eligible_primaries:
                assert not got.backup
            got.acquire()  # vary the load between picks


@settings(max_examples=100, deadline=None)
@given(scenario(), st.data())
def test_set_servers_then_pick_only_returns_eligible(
    case: tuple[Balancer, list[Server], list[Server], list[str]], data: st.DataObject
) -> None:
    bal, servers, _, ips = case
    subset = data.draw(st.lists(st.sampled_from(servers), max_size=len(servers))) if servers else []
    bal.set_servers(subset)
    for ip in ips:
        got = bal.pick(ip, now=NOW)
        if any(s.usable(NOW) for s in subset):
            assert got is not None and got in subset and got.usable(NOW)
        else:
            assert got is None
