"""``python -m benchmarks.memory`` end to end, and what it guards: a plain HTTP config loads no
module it does not need (issue 15: cryptography alone was ~10 MiB of every process's RSS).

Nothing is asserted about sizes (they vary with the machine); only which modules the idle
process loaded, and that the per-connection part measured what it held.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import machine
from tests.helpers import ROOT

missing = machine.missing_tools()
pytestmark = pytest.mark.skipif(bool(missing), reason=machine.missing_message(missing))

# Only a config that uses them may load these: TLS certificates (cryptography), ACME, workers or
# user: (the supervisor, the privilege drop's ctypes), udp, a config error's "did you mean", the
# admin endpoint, swarm discovery; and no process loads hashlib's OpenSSL digests (_hashlib).
NOT_FOR_PLAIN_HTTP = (
    "cryptography",
    "edgeproxy.tls.pem",
    "edgeproxy.acme.keys",
    "edgeproxy.acme.manager",
    "edgeproxy.acme.storage",
    "edgeproxy.admin.server",
    "edgeproxy.discovery.swarm",
    "edgeproxy.discovery.docker_api",
    "hashlib",
    "_hashlib",
    "edgeproxy.runtime.supervisor",
    "edgeproxy.runtime.worker",
    "edgeproxy.runtime.privileges",
    "ctypes",
    "edgeproxy.net.udp",
    "difflib",
    "importlib.abc",
    "tempfile",
)


@pytest.mark.timeout(300)
def test_idle_plain_http_process_loads_no_tls_acme_or_supervisor_module(tmp_path: Path) -> None:
    out = tmp_path / "memory.json"
    res = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory", "--connections", "200", "--no-trace", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "idle keep-alive connections: RSS" in res.stdout
    fig = json.loads(out.read_text())
    imports = fig["imports"]
    loaded = set(imports["by_module"])
    assert "edgeproxy.net.http_relay" in loaded and imports["idle_rss_kib"] > 0
    assert sorted(m for m in loaded if m.split(".")[0] == "cryptography" or m in NOT_FOR_PLAIN_HTTP) == []
    held = fig["connections"]
    assert held["established"] == 200 and held["held_rss_kib"] >= held["base_rss_kib"]
    assert held["objects_per_conn"]["edgeproxy.net.http_relay.HttpConnection"][0] == pytest.approx(1.0, abs=0.05)
