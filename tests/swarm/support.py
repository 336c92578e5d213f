"""edgeproxy-side helpers for the swarm tests."""

from __future__ import annotations

import pytest

from tests.helpers import EdgeProxy
from tests.swarm.engine import http_get


def start_proxy(cfg: dict[str, object]) -> EdgeProxy:
    """``edgeproxy run``; skips when the config needs a mode this build does not have yet (http)."""
    try:
        return EdgeProxy(cfg)  # type: ignore[arg-type]
    except RuntimeError as e:
        if "is not available in this build" in str(e):
            pytest.skip(f"needs http mode: {str(e).splitlines()[-1][:200]}")
        raise


def servers_logged(proxy: EdgeProxy, backend: str) -> list[list[str]]:
    """Every "swarm: servers" line for a backend, oldest first."""
    return [r["servers"] for r in proxy.log_lines() if r.get("msg") == "swarm: servers" and r["backend"] == backend]


def served(port: int, source: str = "127.0.0.31") -> bool:
    """Did a request through edgeproxy get the task's CGI answer?"""
    try:
        status, body = http_get(port, source=source, timeout=3)
    except OSError:
        return False
    return status == 200 and body.startswith("remote=")
