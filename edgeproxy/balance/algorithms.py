"""Balancing algorithms: which server gets the next connection/request.

Sans-IO and synchronous. `pick()` runs once per TCP connection or HTTP request, so everything that
depends only on the server set (weights, hash ring, weighted-draw tables) is computed in
`set_servers()`, and `pick()` does no list allocation: it walks precomputed tuples and reads a few
attributes of each server.

Every balancer splits its servers into two tiers, primaries then backups. A tier is consulted only
when the tier before it yields nothing, and within a tier the algorithm is the same. A server is
*eligible* when it is usable (UP and not held out by passive health) and not in `exclude`. Backups
are therefore used when no primary is eligible: all are down/drained/suspect, or the rest were
already tried by a retry (`exclude`), so that "the client sees no error while one is up" (SPEC).

The eligibility test `s.state is _UP and now >= s.suspect_until and s not in exclude` is written
out inline in every loop instead of calling `Server.usable()`: a Python method call costs more than
the test itself, and these loops are the hot path. It must stay identical to `Server.usable()`;
tests/unit/test_balance_props.py checks that.

Loops run over precomputed `(index, server, weight)` tuples rather than `enumerate(servers)`:
measured 3-server loop 217 ns against 366 ns, since enumerate builds an index tuple per item.

Not thread-safe: each worker process runs one event loop and owns its balancers.
"""

from __future__ import annotations

import zlib
from _blake2 import blake2b  # (what hashlib.blake2b is, without loading OpenSSL's _hashlib)
from abc import ABC, abstractmethod
from bisect import bisect_right
from collections.abc import Callable, Collection, Sequence
from math import gcd
from time import monotonic
from typing import TYPE_CHECKING, ClassVar, Final, Generic, TypeVar

from edgeproxy.balance.server import Server, ServerState

if TYPE_CHECKING:
    import random

__all__ = [
    "ALGORITHMS",
    "Balancer",
    "LeastConnBalancer",
    "RandomBalancer",
    "RoundRobinBalancer",
    "SourceHashBalancer",
    "make_balancer",
]

_UP: Final = ServerState.UP
_crc32: Final = zlib.crc32


class Balancer(ABC):
    """Chooses a server per connection/request from a set that discovery/reload may replace."""

    __slots__ = ("servers",)

    #: the name used in the config's `balance:` key
    algorithm: ClassVar[str]

    #: every server, primaries and backups, in the order given (duplicates removed)
    servers: tuple[Server, ...]

    def __init__(self, servers: Sequence[Server]) -> None:
        self.servers = ()
        self.set_servers(servers)

    def set_servers(self, servers: Sequence[Server]) -> None:
        """Replace the server set (discovery refresh, reload) and precompute for `pick()`.

        Weights are read here, so a changed `Server.weight` takes effect on the next call.
        """
        # dict.fromkeys drops a server listed twice (Server hashes by identity) but keeps order,
        # so the result does not depend on set iteration order.
        unique = tuple(dict.fromkeys(servers))
        primaries = tuple(s for s in unique if not s.backup)
        backups = tuple(s for s in unique if s.backup)
        self._rebuild(primaries, backups)
        self.servers = unique

    @abstractmethod
    def _rebuild(self, primaries: tuple[Server, ...], backups: tuple[Server, ...]) -> None:
        """Precompute the algorithm's per-tier structures."""

    @abstractmethod
    def pick(
        self,
        client_ip: str,
        exclude: Collection[Server] = (),
        *,
        now: float | None = None,
    ) -> Server | None:
        """An eligible server, primaries first, or None when there is none.

        `exclude` holds servers already tried for this connection (retries). `now` defaults to
        `time.monotonic()`; tests pass it to control passive-health holds.
        """


_Tier = TypeVar("_Tier")


class _TieredBalancer(Balancer, Generic[_Tier]):
    """Runs the algorithm on the primary tier, then on the backup tier if that yields nothing."""

    __slots__ = ("_tiers",)

    def __init__(self, servers: Sequence[Server]) -> None:
        # Empty before the first build so _build_tier() can always look at the previous tiers.
        self._tiers: tuple[_Tier, ...] = ()
        super().__init__(servers)

    def _rebuild(self, primaries: tuple[Server, ...], backups: tuple[Server, ...]) -> None:
        # An empty tier is dropped: with no primaries at all, the backups simply serve.
        self._tiers = tuple(self._build_tier(tier) for tier in (primaries, backups) if tier)

    @abstractmethod
    def _build_tier(self, servers: tuple[Server, ...]) -> _Tier:
        """Precompute one tier; `self._tiers` still holds the previous tiers at this point."""

    @abstractmethod
    def _pick_tier(self, tier: _Tier, client_ip: str, exclude: Collection[Server], now: float) -> Server | None:
        """An eligible server of this tier, or None."""

    def pick(
        self,
        client_ip: str,
        exclude: Collection[Server] = (),
        *,
        now: float | None = None,
    ) -> Server | None:
        if now is None:
            now = monotonic()
        for tier in self._tiers:
            server = self._pick_tier(tier, client_ip, exclude, now)
            if server is not None:
                return server
        return None


# --------------------------------------------------------------------------- round robin


class _WRRTier:
    """Smooth weighted round robin state for one tier."""

    __slots__ = ("current", "entries", "layout", "servers")

    current: list[int]

    def __init__(self, servers: tuple[Server, ...], previous: Sequence[_WRRTier]) -> None:
        self.servers = servers
        self.entries = tuple((i, s, s.weight) for i, s in enumerate(servers))
        self.layout = tuple((s.key, s.weight) for s in servers)
        # A discovery refresh that returns the same servers and weights (the common case, every
        # `swarm.refresh`) continues the sequence where it was. Any change starts a fresh cycle
        # from zeros: the algorithm's sum(current) == 0 invariant, which gives the exact per-cycle
        # proportions, would not survive carrying values over a changed set.
        for old in previous:
            if old.layout == self.layout:
                self.current = list(old.current)
                break
        else:
            self.current = [0] * len(servers)


class RoundRobinBalancer(_TieredBalancer[_WRRTier]):
    """nginx's smooth weighted round robin (ngx_http_upstream_get_peer) over eligible servers.

    Each eligible server's `current` grows by its weight, the largest is picked and lowered by the
    sum of eligible weights. Every cycle of sum(weights) picks gives each server exactly its
    weight, and the heavy server is spread out, not sent a burst: weights 5,1,1 give
    a a b a c a a, not a a a a a b c.
    """

    __slots__ = ()
    algorithm = "roundrobin"

    def _build_tier(self, servers: tuple[Server, ...]) -> _WRRTier:
        return _WRRTier(servers, self._tiers)

    def _pick_tier(self, tier: _WRRTier, client_ip: str, exclude: Collection[Server], now: float) -> Server | None:
        current = tier.current
        best = -1
        best_current = 0
        total = 0
        for i, s, w in tier.entries:
            if s.state is _UP and now >= s.suspect_until and s not in exclude:
                c = current[i] + w
                current[i] = c
                total += w
                if best < 0 or c > best_current:
                    best = i
                    best_current = c
        if best < 0:
            return None
        current[best] = best_current - total
        return tier.servers[best]


# --------------------------------------------------------------------------- least connections


class LeastConnBalancer(_TieredBalancer[_WRRTier]):
    """Lowest `active / weight`; ties go round robin (weighted, like nginx's least_conn).

    Scores are compared by cross-multiplication (a.active * b.weight < b.active * a.weight): exact
    integer arithmetic, and no float division per server.
    """

    __slots__ = ()
    algorithm = "leastconn"

    def _build_tier(self, servers: tuple[Server, ...]) -> _WRRTier:
        return _WRRTier(servers, self._tiers)

    def _pick_tier(self, tier: _WRRTier, client_ip: str, exclude: Collection[Server], now: float) -> Server | None:
        entries = tier.entries
        best = -1
        best_active = 0
        best_weight = 1
        ties = 0
        for i, s, w in entries:
            if s.state is _UP and now >= s.suspect_until and s not in exclude:
                a = s.active
                if best < 0 or a * best_weight < best_active * w:
                    best = i
                    best_active = a
                    best_weight = w
                    ties = 1
                elif a * best_weight == best_active * w:
                    ties += 1
        if ties <= 1:
            # Nothing eligible (best == -1) or a single least-loaded server: the usual case under
            # load, and it costs one pass.
            return tier.servers[best] if best >= 0 else None

        # Several servers share the lowest score (typically all at 0 with short HTTP requests):
        # smooth WRR among just those, so the first server in the list is not always the one
        # chosen and weights still count when the load is equal.
        current = tier.current
        best = -1
        best_current = 0
        total = 0
        for i, s, w in entries:
            if (
                s.state is _UP
                and now >= s.suspect_until
                and s not in exclude
                and s.active * best_weight == best_active * w
            ):
                c = current[i] + w
                current[i] = c
                total += w
                if best < 0 or c > best_current:
                    best = i
                    best_current = c
        current[best] = best_current - total
        return tier.servers[best]


# --------------------------------------------------------------------------- source (hash ring)

#: Virtual points per unit of weight (ketama uses 160). Each server's share of the ring then
#: deviates by roughly 1/sqrt(160) ~ 8% from its weight share: measured 2291..2701 clients of
#: 10,000 on four equal servers.
RING_POINTS_PER_WEIGHT: Final = 160

#: Bound on ring size (unless the total weight alone exceeds it: every server keeps at least one
#: point per unit of weight), so that a large, heavily weighted backend does not make a rebuild
#: (hash + sort) stall the event loop or the ring eat memory. Above it, every server gets fewer
#: points per unit of weight. Points are generated as a stable prefix per server (see
#: `_server_points`), so lowering the count only removes points, and only the clients of the
#: removed points move.
RING_MAX_POINTS: Final = 1 << 16


# name -> that server's points so far. Discovery refreshes rebuild rings of mostly unchanged
# servers, and a ring whose points-per-weight drops (RING_MAX_POINTS) needs a shorter prefix of the
# same points; both are then served without hashing. Cleared when full rather than LRU-evicted:
# 4096 distinct server names is far beyond a normal deployment, so this only bounds memory.
_POINT_CACHE: Final[dict[str, tuple[int, ...]]] = {}
_POINT_CACHE_MAX: Final = 4096


def _server_points(name: str, count: int) -> tuple[int, ...]:
    """At least `count` 32-bit ring points for a server (use the first `count`).

    Stable across processes and restarts: blake2b rather than Python's hash(), which is randomised
    per process, and every worker (and the next process after a restart) must map a client to the
    same server. A server's points depend on its name only, not on the other servers in the set,
    which is what makes the ring consistent: adding a server only takes arcs from the others, it
    never moves clients between two old servers.
    """
    points = _POINT_CACHE.get(name)
    if points is not None and len(points) >= count:
        return points
    generated: list[int] = []
    block = 0
    while len(generated) < count:
        # One 32-byte digest yields eight 32-bit points: an eighth of the hashing.
        digest = blake2b(f"{name}#{block}".encode(), digest_size=32).digest()
        generated.extend(int.from_bytes(digest[j : j + 4], "big") for j in range(0, 32, 4))
        block += 1
    points = tuple(generated)
    if len(_POINT_CACHE) >= _POINT_CACHE_MAX:
        _POINT_CACHE.clear()
    _POINT_CACHE[name] = points
    return points


def _client_hash(client_ip: str) -> int:
    """32-bit hash of a client address, in the same space as the ring points.

    zlib.crc32: about 0.16 us against about 1 us for blake2b on the test machine, and measured as
    even over random, sequential IPv4 and sequential IPv6 addresses (within the ring's own
    ~8% spread). Stable across processes, unlike hash().
    """
    return _crc32(client_ip.encode())


class _Ring:
    """A consistent-hash ring for one tier: sorted point hashes and the server index of each."""

    __slots__ = ("hashes", "layout", "owners", "servers")

    hashes: list[int]  # sorted point hashes
    owners: list[int]  # owners[i]: index into `servers` of the server owning hashes[i]

    def __init__(self, servers: tuple[Server, ...], previous: Sequence[_Ring]) -> None:
        self.servers = servers
        self.layout = tuple((s.name, s.weight) for s in servers)
        for old in previous:
            if old.layout == self.layout:
                # Same names, weights and order (a discovery refresh with nothing new): the
                # points are identical, only the Server objects may be new. Skip the sort.
                self.hashes = old.hashes
                self.owners = old.owners
                return
        total_weight = sum(s.weight for s in servers)
        per_weight = max(1, min(RING_POINTS_PER_WEIGHT, RING_MAX_POINTS // total_weight))
        # Each point is packed into one int, hash << shift | rank, so the sort compares plain ints
        # (measured about 4x faster than sorting (hash, name, index) tuples on a 64k-point ring).
        # The rank is the server's position in name order: two servers' points that collide are
        # then ordered by name, and the ring does not depend on the order discovery listed the
        # servers in.
        by_name = sorted(range(len(servers)), key=lambda k: servers[k].name)
        shift = max(1, (len(servers) - 1).bit_length())
        mask = (1 << shift) - 1
        packed: list[int] = []
        for rank, k in enumerate(by_name):
            s = servers[k]
            points = _server_points(s.name, per_weight * s.weight)
            packed.extend(h << shift | rank for h in points[: per_weight * s.weight])
        packed.sort()
        self.hashes = [p >> shift for p in packed]
        self.owners = [by_name[p & mask] for p in packed]


class SourceHashBalancer(_TieredBalancer[_Ring]):
    """Consistent hashing of the client address: a client keeps its server while the set holds.

    A client maps to the first ring point clockwise of its hash. If that server is not eligible
    the walk continues clockwise to the next distinct eligible server, so only the clients of an
    unavailable server move, and they move back when it returns. Nothing is cached per client.
    """

    __slots__ = ()
    algorithm = "source"

    def _build_tier(self, servers: tuple[Server, ...]) -> _Ring:
        return _Ring(servers, self._tiers)

    def _pick_tier(self, tier: _Ring, client_ip: str, exclude: Collection[Server], now: float) -> Server | None:
        hashes = tier.hashes
        i = bisect_right(hashes, _client_hash(client_ip))
        if i == len(hashes):
            i = 0  # past the last point: wrap to the first
        servers = tier.servers
        s = servers[tier.owners[i]]
        if s.state is _UP and now >= s.suspect_until and s not in exclude:
            return s
        return self._walk(tier, i, exclude, now)

    @staticmethod
    def _walk(tier: _Ring, start: int, exclude: Collection[Server], now: float) -> Server | None:
        """Slow path: the hashed server is not eligible; find the next eligible one clockwise."""
        servers = tier.servers
        # Check first that the walk will end: with nothing eligible it would go round forever,
        # and a full lap costs the ring size rather than the server count.
        for s in servers:
            if s.state is _UP and now >= s.suspect_until and s not in exclude:
                break
        else:
            return None
        owners = tier.owners
        n = len(owners)
        rejected = owners[start]
        j = start
        while True:
            j += 1
            if j == n:
                j = 0
            k = owners[j]
            # Consecutive points often share an owner; do not re-test one just rejected.
            if k == rejected:
                continue
            s = servers[k]
            if s.state is _UP and now >= s.suspect_until and s not in exclude:
                return s
            rejected = k


# --------------------------------------------------------------------------- random (P2C)


#: Upper bound on the weighted-draw table of one tier (8 bytes a slot). Only a tier of more than
#: 256 servers with mixed weights can exceed it; its weights are then scaled to fit, which
#: changes draw proportions by well under 1%.
RANDOM_MAX_SLOTS = 1 << 16


class _P2CTier:
    """A table for O(1) weighted draws in one tier: server i appears weight_i times (after
    dividing all weights by their gcd).

    `slots[int(random() * len(slots))]` measured 160 ns against 320 ns for bisecting cumulative
    weights, and a pick makes at least two draws. `int(random() * n)` is how random.choices itself
    draws unweighted: random() < 1, so the index stays below n.
    """

    __slots__ = ("entries", "servers", "slots", "total", "weights")

    def __init__(self, servers: tuple[Server, ...]) -> None:
        self.servers = servers
        self.weights = tuple(s.weight for s in servers)
        self.entries = tuple((i, s, s.weight) for i, s in enumerate(servers))
        g = gcd(*self.weights)
        units = [w // g for w in self.weights]
        total = sum(units)
        if total > RANDOM_MAX_SLOTS:
            # Floor, and leave room for the servers that floor to 0 but keep one slot anyway.
            budget = max(RANDOM_MAX_SLOTS - len(units), len(units))
            units = [max(1, u * budget // total) for u in units]
        self.slots = tuple(i for i, u in enumerate(units) for _ in range(u))
        self.total = len(self.slots)


# Weighted draws per candidate before falling back to an exact scan. With most servers eligible
# a draw almost always succeeds first time; the cap bounds the cost when most are not.
_DRAWS = (None,) * 4


class RandomBalancer(_TieredBalancer[_P2CTier]):
    """Power of two choices: two distinct weighted-random eligible servers, the less loaded wins.

    Load is `active / weight`; a tie keeps the first draw (which is itself random). Picking the
    better of two random servers avoids the herd behaviour of always-least-loaded across many
    independent pickers (each worker process has its own balancer and its own counts), while
    staying close to leastconn's balance.
    """

    __slots__ = ("_random",)
    algorithm = "random"

    def __init__(self, servers: Sequence[Server], *, rng: random.Random | None = None) -> None:
        # Default: the module-level generator, because the random module reseeds it in a forked
        # child. A private Random() created before the workers fork would give every worker the
        # same sequence, and they would all pick the same pairs at the same moments.
        # (Imported here: the random module is ~0.3 MiB of RSS that a process without a random
        # backend does without, issue 15.)
        import random

        self._random: Callable[[], float] = random.random if rng is None else rng.random
        super().__init__(servers)

    def _build_tier(self, servers: tuple[Server, ...]) -> _P2CTier:
        return _P2CTier(servers)

    def _pick_tier(self, tier: _P2CTier, client_ip: str, exclude: Collection[Server], now: float) -> Server | None:
        servers = tier.servers
        if len(servers) == 1:
            s = servers[0]
            if s.state is _UP and now >= s.suspect_until and s not in exclude:
                return s
            return None

        rand = self._random
        slots = tier.slots
        total = tier.total

        # Rejection sampling: a draw that lands on an ineligible server is simply redrawn, which
        # leaves the accepted draw weighted over the eligible servers only.
        ia = -1
        for _ in _DRAWS:
            i = slots[int(rand() * total)]
            s = servers[i]
            if s.state is _UP and now >= s.suspect_until and s not in exclude:
                ia = i
                break
        else:
            ia = self._scan(tier, exclude, now, -1)
            if ia < 0:
                return None
        ib = -1
        for _ in _DRAWS:
            i = slots[int(rand() * total)]
            s = servers[i]
            if i != ia and s.state is _UP and now >= s.suspect_until and s not in exclude:
                ib = i
                break
        else:
            ib = self._scan(tier, exclude, now, ia)
            if ib < 0:
                return servers[ia]  # the only eligible server

        a = servers[ia]
        b = servers[ib]
        weights = tier.weights
        if b.active * weights[ia] < a.active * weights[ib]:
            return b
        return a

    def _scan(self, tier: _P2CTier, exclude: Collection[Server], now: float, skip: int) -> int:
        """Exact weighted draw over eligible servers other than index `skip`; -1 if none.

        The fallback when rejection sampling keeps missing (most servers ineligible). Two passes
        over the tier and no allocation.
        """
        entries = tier.entries
        total = 0
        for i, s, w in entries:
            if i != skip and s.state is _UP and now >= s.suspect_until and s not in exclude:
                total += w
        if total == 0:
            return -1
        r = self._random() * total
        chosen = -1
        for i, s, w in entries:
            if i != skip and s.state is _UP and now >= s.suspect_until and s not in exclude:
                chosen = i
                r -= w
                if r < 0:
                    break
        # If float rounding let r stay >= 0 to the end, `chosen` is the last eligible server.
        return chosen


# --------------------------------------------------------------------------- registry

ALGORITHMS: dict[str, type[Balancer]] = {
    RoundRobinBalancer.algorithm: RoundRobinBalancer,
    LeastConnBalancer.algorithm: LeastConnBalancer,
    SourceHashBalancer.algorithm: SourceHashBalancer,
    RandomBalancer.algorithm: RandomBalancer,
}


def make_balancer(algorithm: str, servers: Sequence[Server]) -> Balancer:
    """A balancer for the config's `balance:` value."""
    try:
        cls = ALGORITHMS[algorithm]
    except KeyError:
        known = ", ".join(ALGORITHMS)
        raise ValueError(f"unknown balance algorithm {algorithm!r} (known: {known})") from None
    return cls(servers)
