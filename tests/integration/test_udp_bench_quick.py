"""``python -m benchmarks.udp_dns`` end to end, tiny: every relay answers every query and the
medians are printed. Nothing is asserted about speed (the machine is shared)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.helpers import ROOT


@pytest.mark.timeout(120)
def test_udp_benchmark_measures_steady_and_fresh_flows_for_each_relay() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.udp_dns", "--rounds", "1", "--pairs", "300", "--fresh", "100"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rounds = [line for line in out.stdout.splitlines() if line.startswith("round 1 ")]
    assert [line.split()[2] for line in rounds] == ["direct", "bare-uvloop", "edgeproxy"]
    assert all("(300/300)" in line for line in rounds)
    assert all("(100/100)" in line for line in rounds[1:])  # fresh flows: the relays only
    assert re.search(r"^edgeproxy +steady .* us/pair .* fresh .* us/query", out.stdout, re.M)
