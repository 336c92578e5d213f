"""Backend pools: each backend's live server set (pool.py), the registry that owns them all and
tells who asks what changed (registry.py), and its wire format to the workers (wire.py)."""

from edgeproxy.pools.pool import BackendPool, ServerKey
from edgeproxy.pools.registry import Change, PoolRegistry

__all__ = ["BackendPool", "Change", "PoolRegistry", "ServerKey"]
