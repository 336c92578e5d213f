"""The benchmark harness's own measuring parts: CPU of a process tree, config generation, verdicts."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from benchmarks import procs
from benchmarks.proxies import Setup, edgeproxy_config, haproxy_config
from benchmarks.scenarios import Target, select
from benchmarks.tls_certs import certificate_file
from edgeproxy.config import load_config

BURN = "import time\nt=time.process_time()\nwhile time.process_time()-t<0.3: pass\n"


def test_cpu_seconds_counts_children_that_already_exited() -> None:
    # A parent that starts a CPU-burning child, reaps it, then sleeps: the child's 0.3 s are in the
    # parent's cutime, so the tree's CPU must include them although the child is gone.
    code = (
        f"import subprocess,sys,time\nsubprocess.run([sys.executable,'-c',{BURN!r}])\n"
        "print('reaped',flush=True)\ntime.sleep(30)"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "reaped"
        assert procs.tree(p.pid) == [p.pid]
        assert procs.cpu_seconds(p.pid) >= 0.28
        assert procs.rss_kib(p.pid) > 1000
    finally:
        p.kill()
        p.wait()


def test_cpu_seconds_sums_live_children() -> None:
    code = (
        f"import subprocess,sys,time\nc=subprocess.Popen([sys.executable,'-c',{BURN!r}+'time.sleep(30)'])\n"
        "time.sleep(30)"
    )
    p = subprocess.Popen([sys.executable, "-c", code])
    try:
        assert procs.wait_until(lambda: procs.cpu_seconds(p.pid) >= 0.28, timeout=20)
        assert len(procs.tree(p.pid)) == 2
    finally:
        for pid in reversed(procs.tree(p.pid)):  # the child, then the parent: both ours
            os.kill(pid, signal.SIGKILL)
        p.wait()


def test_edgeproxy_config_is_valid_for_every_mode(tmp_path: Path) -> None:
    d = tmp_path
    pem = str(certificate_file(tmp_path, "ecdsa"))
    for setup in (Setup("http", 8080), Setup("tcp", 8080, send_proxy=True, workers=2), Setup("http", 80, tls_pem=pem)):
        path = d / f"{setup.mode}.yaml"
        path.write_text(yaml.safe_dump(edgeproxy_config(setup, 9000)))
        cfg = load_config(str(path))
        assert cfg.workers == setup.workers
        assert cfg.log.access == "off"


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed")
def test_haproxy_config_passes_haproxy_check(tmp_path: Path) -> None:
    pem = str(certificate_file(tmp_path, "rsa"))
    for setup in (
        Setup("http", 8080, tls_pem=pem),
        Setup("http", 8080, workers=2),
        Setup("tcp", 8080, send_proxy=True),
    ):
        path = tmp_path / "h.cfg"
        text = haproxy_config(setup, 9000)
        path.write_text(text)
        assert f"nbthread {setup.workers}" in text
        p = subprocess.run(["haproxy", "-c", "-q", "-f", str(path)], capture_output=True, text=True, timeout=30)
        assert p.returncode == 0, p.stdout + p.stderr
    assert "send-proxy-v2" in text


def test_verdicts_and_selection() -> None:
    cpu = Target("cpu_ratio", 1.5, 1.0)
    assert [cpu.verdict(v) for v in (0.9, 1.2, 1.6, None)] == [
        "meets goal",
        "meets first bar",
        "misses first bar",
        "n/a",
    ]
    bulk = Target("throughput_ratio", 0.9, 1.2, lower_is_better=False)
    assert [bulk.verdict(v) for v in (1.3, 1.0, 0.5)] == ["meets goal", "meets first bar", "misses first bar"]
    assert [s.key for s in select(["4,1", "tcp-proxy-v2"])] == ["1", "3", "4"]
    with pytest.raises(ValueError, match="unknown scenario"):
        select(["99"])


def test_ratio_is_the_median_of_the_rounds_ratios_with_its_spread() -> None:
    from benchmarks.report import _ratio_cell, ratios, spreads

    def rounds(*cpu: float) -> list[dict[str, float]]:
        return [{"round": i + 1, "cpu_us_per_req": c, "req_per_s": 1000.0} for i, c in enumerate(cpu)]

    # Round 2 is a noisy one for edgeproxy alone; round 3 failed for HAProxy (no pair, no ratio).
    entry = {
        "kind": "wrk",
        "proxies": {
            "edgeproxy": {"rounds": rounds(12.0, 30.0, 11.0, 13.0)},
            "haproxy": {"rounds": [*rounds(10.0, 10.0), {"round": 3, "error": "x"}, *rounds(0, 0, 0, 10.0)[3:]]},
        },
    }
    assert ratios(entry)["CPU/request"] == 1.3  # median of 1.2, 3.0, 1.3
    assert spreads(entry)["CPU/request"] == (1.2, 3.0)
    assert ratios(entry)["p99 latency"] is None  # no such figure in these rounds
    entry |= {"ratios": ratios(entry), "spreads": spreads(entry)}
    assert _ratio_cell(entry, "CPU/request") == "1.30 (1.20-3.00)"
    assert _ratio_cell(entry, "throughput") == "1.00"  # the same in every round: no spread to show


def test_a_starved_run_is_measured_again_not_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run in which no request completed and none failed (every connection still in its TLS
    handshake at the end: --quick's 2 s on a machine at load 16) says nothing of the proxy: the
    round is run again. One that failed requests is a result (an error), as before."""
    from types import SimpleNamespace

    from benchmarks import runner
    from benchmarks.load import WrkResult
    from benchmarks.scenarios import SCENARIOS

    def result(requests: int, errors: int = 0) -> WrkResult:
        return WrkResult(requests, requests * 100, 2.0, {"connect": errors}, 1.0, 2.0, 3.0, 4.0)

    runs = [result(0), result(0), result(40)]
    monkeypatch.setattr(runner, "_wrk", lambda *a, **kw: (runs.pop(0), 0))
    sc = next(s for s in SCENARIOS if s.kind == "wrk")
    me = SimpleNamespace(name="proxy", pid=os.getpid(), proc=SimpleNamespace(alive=lambda: True))
    said: list[str] = []
    opts = runner.Options(2.0, 0.0, 1, None, 1000, 1.0, None, None, None, tmp_path, log=said.append)
    assert runner._measure(sc, me, opts, 0)["requests"] == 40  # type: ignore[arg-type]
    assert len(said) == 2 and all("starved" in s for s in said)
    runs[:] = [result(0, errors=5)]
    with pytest.raises(RuntimeError, match="no request completed"):
        runner._measure(sc, me, opts, 0)  # type: ignore[arg-type]
