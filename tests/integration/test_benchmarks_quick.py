"""``python -m benchmarks --quick`` end to end: it must produce the table, the JSON and the chart.

Nothing is asserted about speed (the machine is shared); only that every scenario was measured
for both proxies, that edgeproxy failed no request, and that the outputs are there and well formed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import machine
from benchmarks.scenarios import SCENARIOS
from tests.helpers import ROOT

missing = machine.missing_tools()
pytestmark = pytest.mark.skipif(bool(missing), reason=machine.missing_message(missing))


@pytest.mark.timeout(300)
def test_quick_run_produces_table_json_and_chart(tmp_path: Path) -> None:
    p = subprocess.Popen(
        [sys.executable, "-m", "benchmarks", "--quick", "--output", str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        table, err = p.communicate(timeout=280)
    except subprocess.TimeoutExpired:
        p.terminate()  # SIGTERM: the harness stops nginx and the proxies it started
        table, err = p.communicate(timeout=60)
    assert p.returncode == 0, err[-3000:]
    assert "| # | scenario | proxy | req/s |" in table
    assert "Ratios edgeproxy / HAProxy" in table
    for sc in SCENARIOS:
        assert f"| {sc.key} | {sc.name} | edgeproxy |" in table
        assert f"| {sc.key} | {sc.name} | haproxy |" in table

    [result_file] = tmp_path.glob("*.json")
    result = json.loads(result_file.read_text())
    assert result["machine"]["cpus_online"] >= 1 and result["machine"]["haproxy"].startswith("HAProxy")
    assert [s["key"] for s in result["scenarios"]] == [s.key for s in SCENARIOS]
    # Every mode and option the scenarios need is in this build: nothing may be skipped, and
    # edgeproxy must not fail a request, not even while it reloads every second (scenario 7).
    for s in result["scenarios"]:
        for name in ("edgeproxy", "haproxy"):
            outcome = s["proxies"][name]
            assert outcome["status"] == "ok", (s["key"], name, outcome)
            median = outcome["median"]
            if s["kind"] == "idle":
                assert median["established"] > 0 and median["held_rss_mib"] > 0
            else:
                assert median["requests"] > 0 and median["cpu_us_per_req"] > 0 and median["peak_rss_mib"] > 0
        assert sum(r["errors"] for r in s["proxies"]["edgeproxy"]["rounds"]) == 0, s
        assert s["ratios"]["CPU/request"] is not None
    assert result_file.with_suffix(".md").read_text() == table.rstrip("\n") + "\n"
    assert result_file.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_tools_are_named_with_the_apt_line() -> None:
    msg = machine.missing_message(["haproxy", "wrk"])
    assert msg.startswith("missing: haproxy, wrk; install with: apt-get install -y haproxy wrk")
    assert "apt-get install -y haproxy wrk nginx-light" in msg
