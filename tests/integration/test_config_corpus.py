"""Issue 10's bar for the config side: every file of the bad/odd corpus (tests/data/configs), sent
to a running proxy with ``workers: 2`` by SIGHUP one after another, leaves it serving. Bad files
fail the reload (logged with FILE:LINE: errors, counted), odd files are the same configuration.
A request after every HUP proves the proxy still serves; no traceback anywhere in its log."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import yaml

from tests.data.configs import make_corpus
from tests.helpers import Backend, EdgeProxy, echo_handler, edgeproxy, exchange, free_port, metric, scrape

CORPUS = Path(make_corpus.__file__).parent
FAILED = "reload failed: keeping the running configuration"
RELOADED = "configuration reloaded"


class LogTail:
    """The proxy's JSON log lines, read from where the last call stopped (the log only grows)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""
        self.records: list[dict[str, Any]] = []

    def poll(self) -> None:
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            data = self.partial + fh.read()
        self.offset += len(data) - len(self.partial)
        *lines, self.partial = data.split(b"\n")
        for line in lines:
            try:
                self.records.append(json.loads(line))
            except ValueError:
                self.records.append({"raw": line.decode(errors="replace")})

    def wait_reloads(self, n: int, proxy: EdgeProxy, timeout: float = 30.0) -> list[dict[str, Any]]:
        """The first ``n`` reload outcomes (failed or done), waiting for them to be logged."""
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            outcomes = [r for r in self.records if r.get("msg") in (FAILED, RELOADED)]
            if len(outcomes) >= n:
                return outcomes
            assert proxy.proc.poll() is None, f"edgeproxy exited:\n{proxy.log()[-5000:]}"
            assert time.monotonic() < deadline, f"no reload outcome #{n} in {timeout}s"
            time.sleep(0.01)


def test_every_bad_and_odd_file_sighuped_into_two_workers_keeps_the_old_config_serving() -> None:
    backend = Backend(echo_handler)
    port, admin = free_port(), free_port()
    places = {b"@LISTEN@": f"127.0.0.1:{port}", b"@SERVER@": backend.address, b"@ADMIN@": f"127.0.0.1:{admin}"}

    def fill(raw: bytes) -> bytes:
        for place, value in places.items():
            raw = raw.replace(place, value.encode())
        return raw

    bad = sorted((CORPUS / "bad").iterdir())
    odd = sorted((CORPUS / "odd").iterdir())
    # Odd files spread among the bad ones: a valid reload between failed ones changes nothing either.
    step = len(bad) // len(odd) + 1
    files = [f for i in range(len(odd)) for f in (*bad[i * step : (i + 1) * step], odd[i])] + bad[len(odd) * step :]
    assert sorted(files) == sorted(bad + odd)
    start = yaml.safe_load(fill((CORPUS / "odd" / "base.yaml").read_bytes()))
    assert start["workers"] == 2
    t0 = time.monotonic()
    with edgeproxy(start) as proxy:
        tail = LogTail(proxy.log_path)
        for n, path in enumerate(files, 1):
            tmp = proxy.config_path.with_suffix(".tmp")
            tmp.write_bytes(fill(path.read_bytes()))
            tmp.replace(proxy.config_path)
            proxy.send(signal.SIGHUP)
            outcome = tail.wait_reloads(n, proxy)[-1]
            if path.parent.name == "bad":
                assert outcome["msg"] == FAILED, (path.name, outcome)
                assert outcome["errors"] and all(
                    e.startswith(f"{proxy.config_path}:") and e.split(":")[1].isdigit() for e in outcome["errors"]
                ), (path.name, outcome["errors"])
            else:
                assert outcome["msg"] == RELOADED, (path.name, outcome)
            assert exchange(port) == b"hello", path.name  # still serving, through the same backend
        m = scrape(admin)
        assert metric(m, "edgeproxy_config_reloads_total", result="failure") == len(bad)
        assert metric(m, "edgeproxy_config_reloads_total", result="success") == len(odd)
        assert metric(m, "edgeproxy_workers") == 2
        assert len(backend.seen) == len(files)
        assert proxy.proc.poll() is None
    log = proxy.log()
    assert "Traceback" not in log and "worker died" not in log
    print(f"{len(bad)} bad + {len(odd)} odd files, one HUP and one request each: {time.monotonic() - t0:.1f} s")
    backend.close()
