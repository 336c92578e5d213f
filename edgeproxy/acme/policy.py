"""When to renew and when to try again (pure functions of the clock and a random source).

Renewal: ``renew_before`` the end of validity, but never more than a third of the lifetime (a
CA that issues 6-day certificates would otherwise be asked again at every check), minus a random
jitter of up to a tenth of that window so that many certificates issued together, or many edge
nodes, do not all renew in the same second. When the CA offers ACME Renewal Information (RFC
9773), the earlier of its suggested time and ours wins: a CA that revokes early moves its window
to the past, and we renew at once.

Retries: exponential back-off from ``base`` doubling to ``cap``, with +-10 % jitter; never sooner
than the CA's ``Retry-After`` (RFC 8555 section 6.6: a rate-limited client must wait that long).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

Random = Callable[[], float]
"""Uniform in [0, 1): ``random.random``, or a fixed value in tests."""


def renewal_time(
    not_before: float, not_after: float, renew_before: float, rand: Random, ari: float | None = None
) -> float:
    window = min(renew_before, max(0.0, not_after - not_before) / 3)
    ours = not_after - window - window * 0.1 * rand()
    return ours if ari is None else min(ours, ari)


@dataclass(frozen=True, slots=True)
class Backoff:
    base: float = 60.0
    cap: float = 6 * 3600.0
    jitter: float = 0.1

    def delay(self, failures: int, retry_after: float | None, rand: Random) -> float:
        """Seconds to wait after the ``failures``-th consecutive failure (1 = the first)."""
        exp = min(self.cap, self.base * 2.0 ** max(0, failures - 1))
        exp *= 1 + self.jitter * (2 * rand() - 1)
        return max(exp, retry_after or 0.0)
