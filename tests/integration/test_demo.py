"""``edgeproxy demo`` as a user runs it: a subprocess, its table, a request by hand, Ctrl-C."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

from tests.helpers import ROOT, HttpClient, free_port_block


def free_base_port() -> int:
    """A base port whose demo ports (base..base+3, base+10, base+11) are free and reserved against
    the other test processes (tests run in parallel: a range only checked free was taken by
    another worker's test before the demo bound it)."""
    base = free_port_block((0, 1, 2, 3, 10, 11))
    assert base is not None, "no free port range for the demo"
    return base


def test_demo_shows_real_client_and_stops_on_ctrl_c() -> None:
    base = free_base_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeproxy", "demo", "--base-port", str(base)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        out = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            out.append(line)
            if "telnet://" in line:
                break
        text = "".join(out)
        assert "X-Forwarded-For: 6.6.6.6  <- forged!" in text, text
        assert "X-Forwarded-For: 127.0.0.7" in text
        assert "X-Real-IP: 127.0.0.7 (forged 6.6.6.6 dropped)" in text
        assert "peer 127.0.0.1, no PROXY header" in text
        assert "127.0.0.7:" in text and "via PROXY v2" in text
        assert f"http://127.0.0.1:{base}/" in text
        # The proxy keeps serving for the commands it printed.
        with HttpClient("127.0.0.1", base, source="127.0.0.9") as c:
            status, _, body = c.request("/", headers="X-Forwarded-For: 1.2.3.4\r\n")
        assert status == 200 and b"X-Forwarded-For: 127.0.0.9\n" in body
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_demo_says_clearly_when_a_port_is_busy() -> None:
    base = free_base_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", base + 10))
        busy.listen()
        proc = subprocess.run(
            [sys.executable, "-m", "edgeproxy", "demo", "--base-port", str(base)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=20,
        )
    assert proc.returncode == 1
    assert "busy" in proc.stderr and "--base-port" in proc.stderr
