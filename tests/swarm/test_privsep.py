"""With ``user:``, only the supervisor can use the engine: discovery (in the supervisor, root)
reads the real dockerd through its unix socket (root:docker 0660) and through TLS with a client
key that is root's 0600, while each worker, asked itself (gdb makes it issue the call), gets
EACCES connecting to that socket and opening that key."""

from __future__ import annotations

import errno
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import process_probe
from tests.helpers import edgeproxy, free_port
from tests.privsep import NOBODY, need_privsep, python_for
from tests.swarm.conftest import Swarm, http_get, need_swarm

pytestmark = pytest.mark.swarm


@pytest.fixture
def keys(swarm: Swarm) -> Iterator[dict[str, str]]:
    """The swarm's TLS client files as an operator keeps them: in a directory anyone may enter,
    the certificates 0644, the key root's 0600."""
    need_swarm(gdb="gdb")
    need_privsep()
    d = Path(tempfile.mkdtemp(prefix="ep-tls-", dir="/tmp"))
    d.chmod(0o755)
    out = {}
    for name, src, mode in (("ca", "ca", 0o644), ("cert", "client_cert", 0o644), ("key", "client_key", 0o600)):
        out[name] = str(shutil.copy(swarm.tls[src], d / f"{name}.pem"))
        Path(out[name]).chmod(mode)
    try:
        yield out
    finally:
        shutil.rmtree(d)


def test_only_the_supervisor_reaches_the_engine(swarm: Swarm, keys: dict[str, str]) -> None:
    published, port = free_port(), free_port()
    swarm.service("ps-web", published)
    swarm.wait_task_answers(published)
    cfg = {
        "user": "nobody",
        "workers": 2,
        "timeouts": {"connect": "1s", "drain": "1s"},
        "listeners": [{"name": "web", "bind": f"127.0.0.1:{port}", "mode": "http", "backend": "web"}],
        "backends": {"web": {"swarm": {"service": "ps-web", "port": 80}, "health": {"type": "none"}}},
        "swarm": {
            "managers": [swarm.url, swarm.tls_url],
            "tls": keys,
            "refresh": "2s",
            "timeout": "2s",
            "node_addresses": {swarm.hostname: "127.0.0.1"},
        },
    }
    try:
        with edgeproxy(cfg, python=python_for()) as proxy:
            started = proxy.wait_log(lambda r: r.get("msg") == "edgeproxy started")
            proxy.wait_log(lambda r: r.get("msg") == "swarm: servers changed" and len(r["servers"]) == 1, timeout=30)
            body = http_get("127.0.0.1", port, "/cgi-bin/ip", source="127.0.0.41")
            assert b"200 OK" in body and b"xff=127.0.0.41" in body, body
            supervisor, workers = proxy.proc.pid, started["worker_pids"]
            assert len(workers) == 2
            for w in workers:
                assert process_probe.credentials(w) == process_probe.dropped(NOBODY, NOBODY)
            assert process_probe.connect_errno(workers[0], swarm.sock) == errno.EACCES
            assert process_probe.open_errno(workers[0], keys["key"]) == errno.EACCES
            assert process_probe.connect_errno(supervisor, swarm.sock) == 0
            assert process_probe.open_errno(supervisor, keys["key"]) == 0
    finally:
        swarm.docker("service", "rm", "ps-web", check=False)
