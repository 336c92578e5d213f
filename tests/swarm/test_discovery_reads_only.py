"""Discovery only reads the Engine API: every request it sends a real dockerd is a GET.

The process that holds the Docker socket holds root on the node (``POST /containers/create``
with a bind mount of /): what it sends must be only what discovery needs. A recording proxy
sits in front of the real engine's socket and notes every request head that goes through, while
edgeproxy discovers a service by name and another by labels, follows a scale and a label change
through /events, and ``edgeproxy swarm status`` reports.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ROOT, edgeproxy, free_port
from tests.swarm.conftest import Swarm

pytestmark = pytest.mark.swarm


class RecordingSocket:
    """A unix socket relaying byte for byte to ``target``, noting the request line of each head."""

    def __init__(self, target: str, path: str) -> None:
        self.target = target
        self.path = path
        self.requests: list[str] = []
        self._server = socket.socket(socket.AF_UNIX)
        self._server.bind(path)
        self._server.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        with client, socket.socket(socket.AF_UNIX) as engine:
            engine.connect(self.target)
            threading.Thread(target=self._pump, args=(engine, client), daemon=True).start()
            pending, body_left = b"", 0
            while data := client.recv(65536):
                engine.sendall(data)
                pending += data
                while True:  # heads in this direction; bodies (there should be none) skipped
                    if body_left:
                        skip = min(body_left, len(pending))
                        pending, body_left = pending[skip:], body_left - skip
                    head, sep, rest = pending.partition(b"\r\n\r\n")
                    if not sep or body_left:
                        break
                    self.requests.append(head.split(b"\r\n", 1)[0].decode("latin-1"))
                    length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                    if re.search(rb"(?im)^transfer-encoding:", head):
                        self.requests.append("(a chunked body: not followed further)")
                        return
                    pending, body_left = rest, int(length.group(1)) if length else 0

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._server.close()


@pytest.fixture
def recorder(swarm: Swarm) -> Iterator[RecordingSocket]:
    rec = RecordingSocket(swarm.sock, str(swarm.dir / f"rec-{free_port()}.sock"))
    try:
        yield rec
    finally:
        rec.close()
        Path(rec.path).unlink(missing_ok=True)


def test_discovery_sends_the_engine_get_requests_only(swarm: Swarm, recorder: RecordingSocket, tmp_path: Path) -> None:
    published, labelled, port = free_port(), free_port(), free_port()
    swarm.service("ro-named", published)
    swarm.service("ro-label", labelled, labels={"edgeproxy.enable": "true", "edgeproxy.port": "80"})
    cfg = {
        "timeouts": {"connect": "1s", "drain": "1s"},
        "listeners": [{"name": "front", "bind": f"127.0.0.1:{port}", "mode": "http", "backend": "named"}],
        "backends": {"named": {"swarm": {"service": "ro-named", "port": 80}, "health": {"type": "none"}}},
        "swarm": {
            "managers": [f"unix://{recorder.path}"],
            "refresh": "1s",
            "timeout": "2s",
            "labels": True,
            "node_addresses": {swarm.hostname: "127.0.0.1"},
        },
    }
    try:
        with edgeproxy(cfg) as proxy:

            def servers(backend: str, n: int) -> None:
                proxy.wait_log(
                    lambda r: (
                        r.get("msg") == "swarm: servers changed"
                        and r.get("backend") == backend
                        and len(r["servers"]) == n
                    ),
                    timeout=60,
                )

            servers("named", 1)
            servers("ro-label", 1)
            swarm.docker("service", "scale", "--detach", "ro-named=0")  # an event, then re-lists
            servers("named", 0)
            swarm.docker("service", "update", "--detach", "--label-rm", "edgeproxy.enable", "ro-label")
            proxy.wait_log(
                lambda r: r.get("msg") == "swarm: label backend removed" and r.get("backend") == "ro-label", timeout=30
            )
            time.sleep(2)  # a few more refreshes
        (tmp_path / "edgeproxy.yaml").write_text(json.dumps(cfg))
        status = subprocess.run(
            [sys.executable, "-m", "edgeproxy", "swarm", "status", "-c", str(tmp_path / "edgeproxy.yaml"), "--json"],
            cwd=ROOT, capture_output=True, timeout=60, check=False,
        )  # fmt: skip
        assert status.returncode == 0, status.stderr
    finally:
        for name in ("ro-named", "ro-label"):
            swarm.docker("service", "rm", name, check=False)

    methods = {line.split(" ", 1)[0] for line in recorder.requests}
    paths = sorted({re.sub(r"^/v[\d.]+", "/vN", line.split(" ")[1].split("?")[0]) for line in recorder.requests})
    print(f"\n{len(recorder.requests)} requests through the socket: {methods}, {paths}")
    assert len(recorder.requests) > 10
    assert methods == {"GET"}, [r for r in recorder.requests if not r.startswith("GET ")]
    assert set(paths) <= {"/version", "/vN/version", "/vN/services", "/vN/tasks", "/vN/nodes", "/vN/events", "/vN/info"}
