"""Server state and balancing algorithms (sans-IO: no sockets, no asyncio, never imports `net`)."""

from edgeproxy.balance.algorithms import (
    ALGORITHMS,
    Balancer,
    LeastConnBalancer,
    RandomBalancer,
    RoundRobinBalancer,
    SourceHashBalancer,
    make_balancer,
)
from edgeproxy.balance.server import CheckResult, Server, ServerState

__all__ = [
    "ALGORITHMS",
    "Balancer",
    "CheckResult",
    "LeastConnBalancer",
    "RandomBalancer",
    "RoundRobinBalancer",
    "Server",
    "ServerState",
    "SourceHashBalancer",
    "make_balancer",
]
