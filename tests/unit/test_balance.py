"""Unit tests for edgeproxy.balance: server state and the four algorithms (sans-IO)."""

from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence

import pytest

from edgeproxy.balance import (
    ALGORITHMS,
    Balancer,
    LeastConnBalancer,
    RandomBalancer,
    RoundRobinBalancer,
    Server,
    ServerState,
    SourceHashBalancer,
    make_balancer,
)

NOW = 1000.0  # a fixed monotonic "now" for tests that pass it explicitly


def servers(*weights: int, backup: bool = False, prefix: str = "10.0.0.") -> list[Server]:
    return [Server(f"{prefix}{i + 1}", 8080, w, backup=backup) for i, w in enumerate(weights)]


def picks(bal: Balancer, n: int, client_ip: str = "198.51.100.1") -> list[Server]:
    return [p for p in (bal.pick(client_ip, now=NOW) for _ in range(n)) if p is not None]


def random_ips(n: int, seed: int = 7) -> list[str]:
    rnd = random.Random(seed)
    return [".".join(str(rnd.randrange(256)) for _ in range(4)) for _ in range(n)]


# --------------------------------------------------------------------------- Server


def test_server_defaults_and_name() -> None:
    s = Server("192.168.10.100", 8080)
    assert (s.weight, s.backup, s.source, s.meta) == (1, False, "static", {})
    assert (s.state, s.active, s.total, s.failures, s.suspect_until) == (ServerState.UP, 0, 0, 0, 0)
    assert s.name == "192.168.10.100:8080"
    assert s.key == ("192.168.10.100", 8080)
    assert Server("::1", 80).name == "[::1]:80"
    assert Server("2001:db8::5", 443).name == "[2001:db8::5]:443"
    assert Server("web.internal", 80).name == "web.internal:80"


def test_server_meta_not_shared_and_kept() -> None:
    a, b = Server("a", 1), Server("b", 1)
    a.meta["task"] = "t1"
    assert b.meta == {}
    c = Server("c", 1, source="swarm", meta={"service": "web"})
    assert c.meta == {"service": "web"} and c.source == "swarm"


def test_server_identity_semantics() -> None:
    a, b = Server("10.0.0.1", 80), Server("10.0.0.1", 80)
    assert a != b and a.key == b.key
    assert len({a, b}) == 2


def test_server_rejects_zero_weight() -> None:
    with pytest.raises(ValueError):
        Server("10.0.0.1", 80, weight=0)


def test_server_state_is_str() -> None:
    assert isinstance(ServerState.DRAIN, str)
    assert json.dumps({"state": ServerState.DRAIN}) == '{"state": "drain"}'
    assert str(ServerState.DOWN) == "down"
    assert f"{ServerState.UP}" == "up"
    assert ServerState("up") is ServerState.UP


def test_acquire_release() -> None:
    s = Server("10.0.0.1", 80)
    s.acquire()
    s.acquire()
    s.release()
    assert (s.active, s.total) == (1, 2)
    s.release()
    s.release()  # unbalanced: clamped, never negative
    assert (s.active, s.total) == (0, 2)


@pytest.mark.parametrize("state", [ServerState.DOWN, ServerState.DRAIN])
def test_usable_requires_up(state: ServerState) -> None:
    s = Server("10.0.0.1", 80)
    assert s.usable(NOW)
    s.state = state
    assert not s.usable(NOW)


def test_mark_failed_holds_until_expiry() -> None:
    s = Server("10.0.0.1", 80)
    s.mark_failed(NOW, hold=5.0)
    assert s.failures == 1
    assert not s.usable(NOW)
    assert not s.usable(NOW + 4.999)
    assert s.usable(NOW + 5.0)
    # A later failure with a shorter hold does not readmit it early.
    s.mark_failed(NOW + 1.0, hold=1.0)
    assert s.failures == 2
    assert not s.usable(NOW + 2.5)
    assert s.usable(NOW + 5.0)


# --------------------------------------------------------------------------- common behaviour


def test_make_balancer_and_registry() -> None:
    ss = servers(1, 1)
    assert set(ALGORITHMS) == {"roundrobin", "leastconn", "source", "random"}
    expected: dict[str, type[Balancer]] = {
        "roundrobin": RoundRobinBalancer,
        "leastconn": LeastConnBalancer,
        "source": SourceHashBalancer,
        "random": RandomBalancer,
    }
    for name, cls in expected.items():
        bal = make_balancer(name, ss)
        assert type(bal) is cls and bal.algorithm == name
        assert bal.servers == tuple(ss)
    with pytest.raises(ValueError, match="unknown balance algorithm"):
        make_balancer("weighted-magic", ss)


def test_servers_deduplicated_in_order() -> None:
    a, b = servers(1, 1)
    bal = make_balancer("roundrobin", [a, b, a])
    assert bal.servers == (a, b)


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_none_when_nothing_usable(algorithm: str) -> None:
    assert make_balancer(algorithm, []).pick("198.51.100.1", now=NOW) is None
    ss = servers(1, 2, 3)
    ss[0].state = ServerState.DOWN
    ss[1].state = ServerState.DRAIN
    ss[2].mark_failed(NOW, hold=5.0)
    bal = make_balancer(algorithm, ss)
    assert bal.pick("198.51.100.1", now=NOW) is None
    # The hold expires: the suspect server is back.
    assert bal.pick("198.51.100.1", now=NOW + 5.0) is ss[2]


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_exclude_honoured(algorithm: str) -> None:
    ss = servers(1, 2, 3)
    bal = make_balancer(algorithm, ss)
    for ip in random_ips(200):
        first = bal.pick(ip, now=NOW)
        assert first is not None
        second = bal.pick(ip, [first], now=NOW)
        assert second is not None and second is not first
        third = bal.pick(ip, {first, second}, now=NOW)
        assert third is not None and third not in (first, second)
        assert bal.pick(ip, ss, now=NOW) is None


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_mark_failed_keeps_server_out_until_hold_expires(algorithm: str) -> None:
    ss = servers(1, 1)
    bal = make_balancer(algorithm, ss)
    ss[0].mark_failed(NOW, hold=5.0)
    for ip in random_ips(100):
        assert bal.pick(ip, now=NOW + 1.0) is ss[1]
    got = {bal.pick(ip, now=NOW + 5.0) for ip in random_ips(100)}
    assert ss[0] in got


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_pick_defaults_to_monotonic_clock(algorithm: str) -> None:
    ss = servers(1, 1)
    bal = make_balancer(algorithm, ss)
    ss[0].mark_failed(time.monotonic(), hold=3600.0)
    assert all(bal.pick(ip) is ss[1] for ip in random_ips(50))


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
@pytest.mark.parametrize("how", ["down", "drain", "suspect", "excluded"])
def test_backups_only_when_no_primary_is_eligible(algorithm: str, how: str) -> None:
    primaries = servers(1, 2)
    backups = servers(1, 1, backup=True, prefix="10.9.9.")
    bal = make_balancer(algorithm, primaries + backups)
    ips = random_ips(300)

    # All primaries fine: never a backup.
    assert all(bal.pick(ip, now=NOW) in primaries for ip in ips)
    # One primary out: the other primary, still never a backup.
    primaries[0].state = ServerState.DOWN
    assert all(bal.pick(ip, now=NOW) is primaries[1] for ip in ips)
    primaries[0].state = ServerState.UP

    exclude: list[Server] = []
    for p in primaries:
        if how == "down":
            p.state = ServerState.DOWN
        elif how == "drain":
            p.state = ServerState.DRAIN
        elif how == "suspect":
            p.mark_failed(NOW, hold=5.0)
        else:
            exclude.append(p)
    got = [bal.pick(ip, exclude, now=NOW) for ip in ips]
    assert all(g in backups for g in got)
    # Backups among themselves use the algorithm: both get traffic.
    assert set(got) == set(backups)


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_backup_only_set_serves(algorithm: str) -> None:
    backups = servers(1, 1, backup=True)
    bal = make_balancer(algorithm, backups)
    assert bal.pick("198.51.100.1", now=NOW) in backups


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_set_servers_replaces_set(algorithm: str) -> None:
    old = servers(1, 1, 1)
    new = servers(1, 2, prefix="10.1.1.")
    bal = make_balancer(algorithm, old)
    bal.set_servers(new)
    assert bal.servers == tuple(new)
    got = {bal.pick(ip, now=NOW) for ip in random_ips(300)}
    assert got == set(new)
    bal.set_servers([])
    assert bal.pick("198.51.100.1", now=NOW) is None
    bal.set_servers(old[:1])
    assert bal.pick("198.51.100.1", now=NOW) is old[0]


def test_balance_does_not_import_net_or_asyncio() -> None:
    code = (
        "import sys, edgeproxy.balance\n"
        "bad = [m for m in sys.modules if m.startswith('edgeproxy.net') or m == 'asyncio']\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- roundrobin


def longest_run(seq: Sequence[object]) -> int:
    best = run = 1
    for prev, cur in itertools.pairwise(seq):
        run = run + 1 if cur is prev else 1
        best = max(best, run)
    return best


def test_roundrobin_exact_weighted_proportions() -> None:
    ss = servers(1, 2, 3)
    bal = make_balancer("roundrobin", ss)
    seq = picks(bal, 600)
    # Exact per cycle of sum(weights) = 6, not just on average.
    for start in range(0, 600, 6):
        c = Counter(seq[start : start + 6])
        assert [c[s] for s in ss] == [1, 2, 3]
    # Interleaved: the weight-3 server never gets a burst of 3.
    assert longest_run(seq) <= 2


def test_roundrobin_smooth_sequence_matches_nginx() -> None:
    # The example from nginx's smooth WRR commit: weights 5,1,1 -> a a b a c a a.
    a, b, c = servers(5, 1, 1)
    bal = make_balancer("roundrobin", [a, b, c])
    assert picks(bal, 14) == [a, a, b, a, c, a, a] * 2


def test_roundrobin_equal_weights_cycles() -> None:
    ss = servers(1, 1, 1)
    bal = make_balancer("roundrobin", ss)
    assert picks(bal, 9) == ss * 3


def test_roundrobin_skips_unusable_keeping_proportions() -> None:
    ss = servers(1, 2, 3)
    ss[2].state = ServerState.DRAIN
    bal = make_balancer("roundrobin", ss)
    c = Counter(picks(bal, 300))
    assert [c[s] for s in ss] == [100, 200, 0]


def test_roundrobin_refresh_with_same_set_continues_sequence() -> None:
    ss = servers(1, 2, 3)
    reference = picks(make_balancer("roundrobin", ss), 60)
    bal = make_balancer("roundrobin", ss)
    seq: list[Server] = []
    for _ in range(20):
        seq += picks(bal, 3)
        bal.set_servers(ss)  # discovery refresh returning the same servers
    assert seq == reference


def test_roundrobin_refresh_with_new_objects_same_layout() -> None:
    ss = servers(1, 2, 3)
    bal = make_balancer("roundrobin", ss)
    picks(bal, 4)
    fresh = servers(1, 2, 3)  # same addresses, new Server objects (e.g. after a reload)
    bal.set_servers(fresh)
    seq = picks(bal, 60)
    assert set(seq) == set(fresh)
    c = Counter(seq)
    assert [c[s] for s in fresh] == [10, 20, 30]


def test_roundrobin_changed_set_exact_proportions() -> None:
    ss = servers(1, 2, 3)
    bal = make_balancer("roundrobin", ss)
    picks(bal, 5)
    new = [*ss[:2], Server("10.0.0.9", 8080, 4)]
    bal.set_servers(new)
    c = Counter(picks(bal, 70))
    assert [c[s] for s in new] == [10, 20, 40]


# --------------------------------------------------------------------------- leastconn


def test_leastconn_follows_active_counts() -> None:
    a, b, c = servers(1, 1, 1)
    bal = make_balancer("leastconn", [a, b, c])
    a.active, b.active, c.active = 3, 1, 2
    assert bal.pick("x", now=NOW) is b
    b.active = 5
    assert bal.pick("x", now=NOW) is c
    c.active = 9
    assert bal.pick("x", now=NOW) is a


def test_leastconn_uses_weight() -> None:
    a, b = servers(4, 1)
    bal = make_balancer("leastconn", [a, b])
    a.active, b.active = 4, 2  # 1.0 vs 2.0 per unit of weight
    assert bal.pick("x", now=NOW) is a
    a.active = 12  # 3.0 vs 2.0
    assert bal.pick("x", now=NOW) is b


def test_leastconn_ties_go_round_robin() -> None:
    ss = servers(1, 1, 1)
    bal = make_balancer("leastconn", ss)
    # All idle (short requests that finish before the next pick): not always the first server.
    assert picks(bal, 6) == ss * 2


def test_leastconn_ties_respect_weights() -> None:
    ss = servers(1, 2, 3)
    bal = make_balancer("leastconn", ss)
    c = Counter(picks(bal, 60))
    assert [c[s] for s in ss] == [10, 20, 30]


def test_leastconn_converges_to_weighted_load() -> None:
    ss = servers(1, 2, 3)
    bal = make_balancer("leastconn", ss)
    for _ in range(60):
        s = bal.pick("x", now=NOW)
        assert s is not None
        s.acquire()  # long-lived connections, never released
    assert [s.active for s in ss] == [10, 20, 30]
    # Releasing load on one server sends the next connections there.
    for _ in range(5):
        ss[2].release()
    for _ in range(5):
        s = bal.pick("x", now=NOW)
        assert s is ss[2]
        s.acquire()


# --------------------------------------------------------------------------- source


def test_source_sticky() -> None:
    ss = servers(1, 1, 1, 1)
    bal = make_balancer("source", ss)
    other = make_balancer("source", list(reversed(servers(1, 1, 1, 1))))
    for ip in random_ips(500):
        first = bal.pick(ip, now=NOW)
        assert first is not None
        assert all(bal.pick(ip, now=NOW) is first for _ in range(3))
        # Another balancer (another worker) over the same addresses, listed in another order,
        # agrees: the ring depends on addresses only.
        twin = other.pick(ip, now=NOW)
        assert twin is not None and twin.key == first.key


def test_source_stable_across_processes() -> None:
    # Python's hash() is randomised per process; the ring must not be.
    code = (
        "from edgeproxy.balance import Server, make_balancer\n"
        "b = make_balancer('source', [Server(f'10.0.0.{i}', 80) for i in range(1, 6)])\n"
        "print(','.join(b.pick(f'203.0.113.{i}').name for i in range(40)))\n"
    )
    outs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        run = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env)
        outs.add(run.stdout.strip())
    local = make_balancer("source", [Server(f"10.0.0.{i}", 80) for i in range(1, 6)])
    mine = ",".join(p.name for i in range(40) if (p := local.pick(f"203.0.113.{i}")) is not None)
    assert outs == {mine}


def test_source_spread_is_roughly_even_and_weighted() -> None:
    ips = random_ips(10_000)
    ss = servers(1, 1, 1, 1)
    bal = make_balancer("source", ss)
    c = Counter(bal.pick(ip, now=NOW) for ip in ips)
    assert all(0.17 < c[s] / len(ips) < 0.33 for s in ss)
    heavy = servers(1, 3)
    c = Counter(make_balancer("source", heavy).pick(ip, now=NOW) for ip in ips)
    assert 0.65 < c[heavy[1]] / len(ips) < 0.85


def test_source_adding_a_server_moves_about_its_share() -> None:
    ips = random_ips(10_000)
    old = servers(1, 1, 1, 1)
    bal = make_balancer("source", old)
    before = {ip: bal.pick(ip, now=NOW) for ip in ips}
    added = Server("10.0.0.5", 8080)
    bal.set_servers([*old, added])
    after = {ip: bal.pick(ip, now=NOW) for ip in ips}
    moved = [ip for ip in ips if after[ip] is not before[ip]]
    assert 0.12 < len(moved) / len(ips) < 0.30
    # Consistency: a client that moves only moves to the new server.
    assert all(after[ip] is added for ip in moved)


def test_source_removing_a_server_moves_only_its_clients() -> None:
    ips = random_ips(5_000)
    ss = servers(1, 1, 1, 1, 1)
    bal = make_balancer("source", ss)
    before = {ip: bal.pick(ip, now=NOW) for ip in ips}
    bal.set_servers(ss[:2] + ss[3:])
    after = {ip: bal.pick(ip, now=NOW) for ip in ips}
    for ip in ips:
        if before[ip] is not ss[2]:
            assert after[ip] is before[ip]
        else:
            assert after[ip] is not ss[2]


def test_source_unusable_server_walks_ring_and_comes_back() -> None:
    ips = random_ips(3_000)
    ss = servers(1, 1, 1, 1)
    bal = make_balancer("source", ss)
    before = {ip: bal.pick(ip, now=NOW) for ip in ips}
    ss[1].state = ServerState.DOWN
    during = {ip: bal.pick(ip, now=NOW) for ip in ips}
    for ip in ips:
        if before[ip] is ss[1]:
            assert during[ip] is not None and during[ip] is not ss[1]
        else:
            assert during[ip] is before[ip]  # nobody else is disturbed
    # The displaced clients are spread over the others, not all dumped on one neighbour.
    displaced = Counter(during[ip] for ip in ips if before[ip] is ss[1])
    assert len(displaced) >= 2
    ss[1].state = ServerState.UP
    assert {ip: bal.pick(ip, now=NOW) for ip in ips} == before


def test_source_exclude_walks_to_next_distinct_server() -> None:
    ss = servers(1, 1, 1)
    bal = make_balancer("source", ss)
    for ip in random_ips(200):
        first = bal.pick(ip, now=NOW)
        assert first is not None
        second = bal.pick(ip, (first,), now=NOW)
        assert second is not None and second is not first
        # Deterministic: the retry target for a client is stable too.
        assert bal.pick(ip, (first,), now=NOW) is second


def test_source_refresh_with_new_objects_same_layout() -> None:
    ips = random_ips(500)
    bal = make_balancer("source", servers(1, 2, 1))
    before = {ip: bal.pick(ip, now=NOW) for ip in ips}
    fresh = servers(1, 2, 1)
    bal.set_servers(fresh)
    for ip in ips:
        got, old = bal.pick(ip, now=NOW), before[ip]
        assert got in fresh and old is not None and got is not None and got.key == old.key


def test_source_large_weights_are_bounded() -> None:
    big = [Server(f"10.2.0.{i}", 80, 256) for i in range(1, 11)]
    bal = make_balancer("source", big)
    assert isinstance(bal, SourceHashBalancer)
    assert len(bal._tiers[0].hashes) <= 1 << 16
    assert {bal.pick(ip, now=NOW) for ip in random_ips(2_000)} == set(big)


# --------------------------------------------------------------------------- random (P2C)


def test_random_never_picks_the_most_loaded() -> None:
    ss = servers(1, 1, 1)
    bal = RandomBalancer(ss, rng=random.Random(1))
    ss[0].active, ss[1].active, ss[2].active = 1, 9, 2
    got = Counter(picks(bal, 2_000))
    # Every drawn pair contains at least one server less loaded than ss[1].
    assert got[ss[1]] == 0
    # ss[0] wins every pair it is in (2 of 3 pairs); ss[2] wins only against ss[1].
    assert 0.55 < got[ss[0]] / 2_000 < 0.78


def test_random_two_servers_is_least_loaded() -> None:
    a, b = servers(1, 1)
    bal = RandomBalancer([a, b], rng=random.Random(2))
    a.active = 3
    assert all(p is b for p in picks(bal, 200))


def test_random_weighted_when_idle() -> None:
    a, b = servers(1, 3)
    bal = RandomBalancer([a, b], rng=random.Random(3))
    got = Counter(picks(bal, 20_000))
    # Equal (zero) load: the first draw wins, so picks follow the weights.
    assert 0.22 < got[a] / 20_000 < 0.28


def test_random_uses_weight_in_load() -> None:
    a, b = servers(4, 1)
    bal = RandomBalancer([a, b], rng=random.Random(4))
    a.active, b.active = 3, 1  # 0.75 vs 1.0 per unit of weight
    assert all(p is a for p in picks(bal, 100))


def test_random_mostly_ineligible_falls_back_exactly() -> None:
    many = [Server(f"10.3.0.{i}", 80) for i in range(1, 51)]
    for s in many:
        s.state = ServerState.DOWN
    many[17].state = ServerState.UP
    bal = RandomBalancer(many, rng=random.Random(5))
    assert all(p is many[17] for p in picks(bal, 200))
    many[33].state = ServerState.UP
    many[33].active = 1
    # Two eligible: both always drawn, so the idle one always wins.
    assert all(p is many[17] for p in picks(bal, 200))
    many[17].active = 2
    assert all(p is many[33] for p in picks(bal, 200))


def test_random_default_rng_is_module_random() -> None:
    # Workers fork after balancers may exist; the module generator is reseeded in the child.
    ss = servers(1, 1)
    bal = make_balancer("random", ss)
    assert {bal.pick("x", now=NOW) for _ in range(200)} == set(ss)


def test_random_draw_table_is_reduced_and_bounded() -> None:
    a, b = servers(100, 300)
    bal = RandomBalancer([a, b], rng=random.Random(6))
    assert bal._tiers[0].total == 4  # weights divided by their gcd
    got = Counter(picks(bal, 20_000))
    assert 0.22 < got[a] / 20_000 < 0.28
    huge = [Server(f"10.4.{i // 256}.{i % 256}", 80, 256 if i % 2 else 1) for i in range(600)]
    tier = RandomBalancer(huge)._tiers[0]
    assert tier.total <= 1 << 16
    assert set(tier.slots) == set(range(600))  # every server keeps at least one slot
